"""The Kafka wire protocol: schema-generated codec, handlers, group and transaction coordinators."""

from robustmq.protocols.kafka._codec import (
    SUPPORTED,
    FrameTooLarge,
    KafkaParser,
    Request,
    decodeRequest,
    decodeResponse,
    encodeRequest,
    encodeResponse,
)
from robustmq.protocols.kafka._factory import KafkaProtocolPlugin, KafkaServerFactory, kafkaPlugin
from robustmq.protocols.kafka._protocol import KafkaServerProtocol
from robustmq.protocols.kafka._schema import DecodeError, Schema, loadSchemas, messageSchema

__all__ = [
    "SUPPORTED",
    "DecodeError",
    "FrameTooLarge",
    "KafkaParser",
    "KafkaProtocolPlugin",
    "KafkaServerFactory",
    "KafkaServerProtocol",
    "Request",
    "Schema",
    "decodeRequest",
    "decodeResponse",
    "encodeRequest",
    "encodeResponse",
    "kafkaPlugin",
    "loadSchemas",
    "messageSchema",
]
