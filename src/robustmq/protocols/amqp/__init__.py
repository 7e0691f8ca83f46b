"""AMQP 0-9-1 in RabbitMQ's dialect: generated codec, sans-IO framing, server, plugin."""

from robustmq.protocols.amqp import _spec as spec
from robustmq.protocols.amqp._connection import SERVER_CAPABILITIES, AMQPServerProtocol
from robustmq.protocols.amqp._exceptions import AMQPError, ChannelError, ConnectionError
from robustmq.protocols.amqp._factory import AMQPProtocolPlugin, AMQPServerFactory, amqpPlugin
from robustmq.protocols.amqp._frames import (
    PROTOCOL_HEADER,
    BodyFrame,
    FrameError,
    FrameParser,
    HeaderFrame,
    Heartbeat,
    MethodFrame,
    ProtocolHeader,
    encodeContent,
    encodeMethod,
)
from robustmq.protocols.amqp._server import AMQPServer

__all__ = [
    "PROTOCOL_HEADER",
    "SERVER_CAPABILITIES",
    "AMQPError",
    "AMQPProtocolPlugin",
    "AMQPServer",
    "AMQPServerFactory",
    "AMQPServerProtocol",
    "BodyFrame",
    "ChannelError",
    "ConnectionError",
    "FrameError",
    "FrameParser",
    "HeaderFrame",
    "Heartbeat",
    "MethodFrame",
    "ProtocolHeader",
    "amqpPlugin",
    "encodeContent",
    "encodeMethod",
    "spec",
]
