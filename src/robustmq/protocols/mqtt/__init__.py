"""MQTT 3.1 and 3.1.1: sans-IO codec, server protocol and factory."""

from robustmq.protocols.mqtt._codec import (
    MQTTParser,
    encode,
    encodeAck,
    encodeConnack,
    encodeConnect,
    encodePublish,
    encodeRemainingLength,
    encodeSuback,
    encodeSubscribe,
    encodeUnsubscribe,
)
from robustmq.protocols.mqtt._exceptions import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolViolation,
)
from robustmq.protocols.mqtt._factory import MQTTProtocolPlugin, MQTTServerFactory, mqttPlugin
from robustmq.protocols.mqtt._protocol import MQTTServerProtocol

__all__ = [
    "MQTTError",
    "MQTTParser",
    "MQTTProtocolPlugin",
    "MQTTServerFactory",
    "MQTTServerProtocol",
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolViolation",
    "encode",
    "encodeAck",
    "encodeConnack",
    "encodeConnect",
    "encodePublish",
    "encodeRemainingLength",
    "encodeSuback",
    "encodeSubscribe",
    "encodeUnsubscribe",
    "mqttPlugin",
]
