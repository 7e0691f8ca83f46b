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
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: Any) -> bool:
        names: tuple[str, ...] = self.__slots__
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in names
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
        "properties",
        "willProperties",
        "bridge",
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
        properties: dict[str, Any] | None = None,
        willProperties: dict[str, Any] | None = None,
        bridge: bool = False,
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
        self.properties = properties or {}
        self.willProperties = willProperties or {}
        #: the protocol level had bit 7 set: a bridge from another broker (mosquitto's
        #: try_private), which gets No Local and Retain As Published subscriptions
        self.bridge = bridge


class Connack(Packet):
    """CONNACK: the server's answer to CONNECT (C{returnCode} is the 5.0 reason code there)."""

    __slots__ = ("sessionPresent", "returnCode", "properties")
    type = CONNACK

    def __init__(
        self, sessionPresent: bool, returnCode: int, properties: dict[str, Any] | None = None
    ) -> None:
        self.sessionPresent = sessionPresent
        self.returnCode = returnCode
        self.properties = properties or {}


class Publish(Packet):
    """PUBLISH: an application message.

    C{raw} is the whole packet as received, kept so that a QoS 0 message can
    be forwarded to 3.1/3.1.1 subscribers without re-encoding.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packetId", "raw", "properties")
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
        properties: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packetId = packetId
        self.raw = raw
        self.properties = properties or {}

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__ if k != "raw"
        )


class UnacceptedPublish(Publish):
    """A 5.0 PUBLISH whose topic name is well formed but beyond this server's limits.

    The parser yields it instead of failing, so that the protocol can refuse
    the one message with reason 0x90 (Topic Name invalid) and go on reading.
    """

    __slots__ = ("why",)

    def __init__(self, why: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.why = why


class _IdOnly(Packet):
    """An acknowledgement: packet id, and in 5.0 a reason code and properties."""

    __slots__ = ("packetId", "reasonCode", "properties")

    def __init__(
        self, packetId: int, reasonCode: int = 0, properties: dict[str, Any] | None = None
    ) -> None:
        self.packetId = packetId
        self.reasonCode = reasonCode
        self.properties = properties or {}


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


class Unsuback(Packet):
    """UNSUBACK: unsubscribe acknowledgement (5.0: a reason code per filter)."""

    __slots__ = ("packetId", "reasonCodes", "properties")
    type = UNSUBACK

    def __init__(
        self,
        packetId: int,
        reasonCodes: list[int] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        self.packetId = packetId
        self.reasonCodes = reasonCodes or []
        self.properties = properties or {}


class Subscribe(Packet):
    """SUBSCRIBE: a list of (topic filter, options byte); in 3.x the options are the QoS."""

    __slots__ = ("packetId", "topics", "properties")
    type = SUBSCRIBE

    def __init__(
        self,
        packetId: int,
        topics: list[tuple[str, int]],
        properties: dict[str, Any] | None = None,
    ) -> None:
        self.packetId = packetId
        self.topics = topics
        self.properties = properties or {}


class Suback(Packet):
    """SUBACK: granted QoS (or 0x80) per requested filter."""

    __slots__ = ("packetId", "returnCodes", "properties")
    type = SUBACK

    def __init__(
        self, packetId: int, returnCodes: list[int], properties: dict[str, Any] | None = None
    ) -> None:
        self.packetId = packetId
        self.returnCodes = returnCodes
        self.properties = properties or {}


class Unsubscribe(Packet):
    """UNSUBSCRIBE: a list of topic filters."""

    __slots__ = ("packetId", "topics", "properties")
    type = UNSUBSCRIBE

    def __init__(
        self, packetId: int, topics: list[str], properties: dict[str, Any] | None = None
    ) -> None:
        self.packetId = packetId
        self.topics = topics
        self.properties = properties or {}


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


class _ReasonOnly(Packet):
    __slots__ = ("reasonCode", "properties")

    def __init__(self, reasonCode: int = 0, properties: dict[str, Any] | None = None) -> None:
        self.reasonCode = reasonCode
        self.properties = properties or {}


class Disconnect(_ReasonOnly):
    """DISCONNECT: a clean close (5.0: either side, with a reason code)."""

    __slots__ = ()
    type = DISCONNECT


class Auth(_ReasonOnly):
    """AUTH (5.0): a step of enhanced authentication."""

    __slots__ = ()
    type = AUTH


class Reason:
    """MQTT 5.0 reason codes (section 2.4) used by the broker."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


# 3.1.1 CONNACK return code for a 5.0 reason code, for refusing older clients.
CONNACK_V3_FOR_REASON = {
    Reason.UNSUPPORTED_PROTOCOL_VERSION: CONNACK_UNACCEPTABLE_PROTOCOL,
    Reason.CLIENT_IDENTIFIER_NOT_VALID: CONNACK_IDENTIFIER_REJECTED,
    Reason.SERVER_UNAVAILABLE: CONNACK_SERVER_UNAVAILABLE,
    Reason.SERVER_BUSY: CONNACK_SERVER_UNAVAILABLE,
    Reason.USE_ANOTHER_SERVER: CONNACK_SERVER_UNAVAILABLE,
    Reason.SERVER_MOVED: CONNACK_SERVER_UNAVAILABLE,
    Reason.BAD_USER_NAME_OR_PASSWORD: CONNACK_BAD_CREDENTIALS,
    Reason.NOT_AUTHORIZED: CONNACK_NOT_AUTHORIZED,
    Reason.BANNED: CONNACK_NOT_AUTHORIZED,
    Reason.BAD_AUTHENTICATION_METHOD: CONNACK_NOT_AUTHORIZED,
    Reason.CONNECTION_RATE_EXCEEDED: CONNACK_SERVER_UNAVAILABLE,
    Reason.QUOTA_EXCEEDED: CONNACK_SERVER_UNAVAILABLE,
    Reason.UNSPECIFIED_ERROR: CONNACK_SERVER_UNAVAILABLE,
}
