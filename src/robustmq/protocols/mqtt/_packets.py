"""MQTT control packets as small value objects (what the codec yields and takes)."""

from __future__ import annotations

from typing import Any

# Packet types (MQTT 3.1.1 section 2.2.1).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    CONNECT: "connect",
    CONNACK: "connack",
    PUBLISH: "publish",
    PUBACK: "puback",
    PUBREC: "pubrec",
    PUBREL: "pubrel",
    PUBCOMP: "pubcomp",
    SUBSCRIBE: "subscribe",
    SUBACK: "suback",
    UNSUBSCRIBE: "unsubscribe",
    UNSUBACK: "unsuback",
    PINGREQ: "pingreq",
    PINGRESP: "pingresp",
    DISCONNECT: "disconnect",
    AUTH: "auth",
}

# Protocol levels.
MQTT31 = 3
MQTT311 = 4
MQTT5 = 5

# CONNACK return codes (3.1 / 3.1.1).
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80


class Packet:
    """Base of every packet; C{type} is the MQTT packet type number."""

    __slots__ = ()
    type = 0

    @property
    def name(self) -> str:
        """The lower-case packet name, used to dispatch to C{handle_<name>}."""
        return PACKET_NAMES[self.type]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )


class Connect(Packet):
    """CONNECT: a client opens a session."""

    __slots__ = (
        "protocolName",
        "protocolLevel",
        "cleanSession",
        "keepAlive",
        "clientId",
        "willTopic",
        "willPayload",
        "willQos",
        "willRetain",
        "username",
        "password",
    )
    type = CONNECT

    def __init__(
        self,
        clientId: str,
        protocolLevel: int = MQTT311,
        cleanSession: bool = True,
        keepAlive: int = 60,
        willTopic: str | None = None,
        willPayload: bytes | None = None,
        willQos: int = 0,
        willRetain: bool = False,
        username: str | None = None,
        password: bytes | None = None,
        protocolName: str | None = None,
    ) -> None:
        self.protocolName = protocolName or ("MQIsdp" if protocolLevel == MQTT31 else "MQTT")
        self.protocolLevel = protocolLevel
        self.cleanSession = cleanSession
        self.keepAlive = keepAlive
        self.clientId = clientId
        self.willTopic = willTopic
        self.willPayload = willPayload
        self.willQos = willQos
        self.willRetain = willRetain
        self.username = username
        self.password = password


class Connack(Packet):
    """CONNACK: the server's answer to CONNECT."""

    __slots__ = ("sessionPresent", "returnCode")
    type = CONNACK

    def __init__(self, sessionPresent: bool, returnCode: int) -> None:
        self.sessionPresent = sessionPresent
        self.returnCode = returnCode


class Publish(Packet):
    """PUBLISH: an application message.

    C{raw} is the whole packet as received, kept so that a QoS 0 message can
    be forwarded to 3.1/3.1.1 subscribers without re-encoding.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packetId", "raw")
    type = PUBLISH

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packetId: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packetId = packetId
        self.raw = raw

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__ if k != "raw"
        )


class _IdOnly(Packet):
    __slots__ = ("packetId",)

    def __init__(self, packetId: int) -> None:
        self.packetId = packetId


class Puback(_IdOnly):
    """PUBACK: QoS 1 acknowledgement."""

    __slots__ = ()
    type = PUBACK


class Pubrec(_IdOnly):
    """PUBREC: QoS 2 received, part 1."""

    __slots__ = ()
    type = PUBREC


class Pubrel(_IdOnly):
    """PUBREL: QoS 2 release, part 2."""

    __slots__ = ()
    type = PUBREL


class Pubcomp(_IdOnly):
    """PUBCOMP: QoS 2 complete, part 3."""

    __slots__ = ()
    type = PUBCOMP


class Unsuback(_IdOnly):
    """UNSUBACK: unsubscribe acknowledgement."""

    __slots__ = ()
    type = UNSUBACK


class Subscribe(Packet):
    """SUBSCRIBE: a list of (topic filter, requested QoS)."""

    __slots__ = ("packetId", "topics")
    type = SUBSCRIBE

    def __init__(self, packetId: int, topics: list[tuple[str, int]]) -> None:
        self.packetId = packetId
        self.topics = topics


class Suback(Packet):
    """SUBACK: granted QoS (or 0x80) per requested filter."""

    __slots__ = ("packetId", "returnCodes")
    type = SUBACK

    def __init__(self, packetId: int, returnCodes: list[int]) -> None:
        self.packetId = packetId
        self.returnCodes = returnCodes


class Unsubscribe(Packet):
    """UNSUBSCRIBE: a list of topic filters."""

    __slots__ = ("packetId", "topics")
    type = UNSUBSCRIBE

    def __init__(self, packetId: int, topics: list[str]) -> None:
        self.packetId = packetId
        self.topics = topics


class _Empty(Packet):
    __slots__ = ()


class Pingreq(_Empty):
    """PINGREQ: keep-alive probe from the client."""

    __slots__ = ()
    type = PINGREQ


class Pingresp(_Empty):
    """PINGRESP: the server's answer to PINGREQ."""

    __slots__ = ()
    type = PINGRESP


class Disconnect(_Empty):
    """DISCONNECT: the client closes cleanly (its will is discarded)."""

    __slots__ = ()
    type = DISCONNECT
