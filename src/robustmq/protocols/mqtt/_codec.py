"""Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec: bytes in, packets out; packets in, bytes out.

The parser never touches a transport, so it is tested alone and fed one
byte at a time.  Errors are raised as L{MalformedPacket} (bad encoding) or
L{ProtocolViolation} (well-formed but forbidden), each carrying a reason
for the log line, and the normative statement id where there is one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from robustmq.protocols.mqtt._exceptions import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    TopicNameInvalid,
)
from robustmq.protocols.mqtt._packets import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    MQTT5,
    MQTT31,
    MQTT311,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    UnacceptedPublish,
    Unsuback,
    Unsubscribe,
)
from robustmq.protocols.mqtt._primitives import encodeVarint, readBinary, readUtf8
from robustmq.protocols.mqtt._properties import WILL, encodeProperties, readProperties

_U16 = struct.Struct("!H")
_unpackU16 = _U16.unpack_from

MAX_REMAINING_LENGTH = 268_435_455
#: the largest packet the protocol can express: fixed header byte, 4 length bytes, body
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5


# Encoding


def encodeRemainingLength(n: int) -> bytes:
    """The variable-length 'remaining length' field (MQTT 3.1.1 section 2.2.3)."""
    return encodeVarint(n)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return _U16.pack(len(b)) + b


def _bin(b: bytes) -> bytes:
    return _U16.pack(len(b)) + b


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encodeRemainingLength(len(body)) + body


def encodePublish(
    topic: bytes,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packetId: int | None = None,
    properties: bytes | None = None,
) -> bytes:
    """A PUBLISH packet; C{topic} is already UTF-8 encoded.

    C{properties} is an encoded 5.0 property block (L{encodeProperties}), or
    None for 3.1/3.1.1.
    """
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    tlen = len(topic)
    props = properties or b""
    if qos:
        length = 4 + tlen + len(props) + len(payload)
        return b"".join(
            (
                bytes((first,)),
                encodeRemainingLength(length),
                _U16.pack(tlen),
                topic,
                _U16.pack(packetId or 0),
                props,
                payload,
            )
        )
    length = 2 + tlen + len(props) + len(payload)
    return b"".join(
        (bytes((first,)), encodeRemainingLength(length), _U16.pack(tlen), topic, props, payload)
    )


_ACK_FIRST = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70, UNSUBACK: 0xB0}
_ACK = struct.Struct("!BBH")


def encodeAck(packetType: int, packetId: int) -> bytes:
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK for C{packetId}."""
    return _ACK.pack(_ACK_FIRST[packetType], 2, packetId)


def encodeAck5(
    packetType: int, packetId: int, reasonCode: int = 0, properties: dict[str, Any] | None = None
) -> bytes:
    """A 5.0 PUBACK/PUBREC/PUBREL/PUBCOMP; the short form when there is nothing to add."""
    if not properties:
        if reasonCode == 0:
            return _ACK.pack(_ACK_FIRST[packetType], 2, packetId)
        return bytes((_ACK_FIRST[packetType], 3)) + _U16.pack(packetId) + bytes((reasonCode,))
    body = _U16.pack(packetId) + bytes((reasonCode,)) + encodeProperties(properties)
    return _frame(_ACK_FIRST[packetType], body)


def encodeConnack(
    sessionPresent: bool, returnCode: int, properties: dict[str, Any] | None = None
) -> bytes:
    """A CONNACK: 3.1/3.1.1 form when C{properties} is None, else 5.0 form."""
    if properties is None:
        return bytes((0x20, 2, 1 if sessionPresent else 0, returnCode))
    body = bytes((1 if sessionPresent else 0, returnCode)) + encodeProperties(properties)
    return _frame(0x20, body)


def encodeSuback(
    packetId: int, returnCodes: Sequence[int], properties: dict[str, Any] | None = None
) -> bytes:
    """A SUBACK with one return (reason) code per requested filter; 5.0 when C{properties} is given."""
    props = b"" if properties is None else encodeProperties(properties)
    return _frame(0x90, _U16.pack(packetId) + props + bytes(returnCodes))


def encodeUnsuback(
    packetId: int,
    reasonCodes: Sequence[int] | None = None,
    properties: dict[str, Any] | None = None,
) -> bytes:
    """An UNSUBACK: 3.x form when C{reasonCodes} is None, else 5.0 form."""
    if reasonCodes is None:
        return _ACK.pack(0xB0, 2, packetId)
    return _frame(0xB0, _U16.pack(packetId) + encodeProperties(properties) + bytes(reasonCodes))


def encodeDisconnect(reasonCode: int = 0, properties: dict[str, Any] | None = None) -> bytes:
    """A 5.0 DISCONNECT (the 3.x one is L{DISCONNECT_BYTES})."""
    if not properties:
        if reasonCode == 0:
            return DISCONNECT_BYTES
        return bytes((0xE0, 1, reasonCode))
    return _frame(0xE0, bytes((reasonCode,)) + encodeProperties(properties))


def encodeAuth(reasonCode: int = 0, properties: dict[str, Any] | None = None) -> bytes:
    """A 5.0 AUTH packet."""
    if not properties and reasonCode == 0:
        return b"\xf0\x00"
    return _frame(0xF0, bytes((reasonCode,)) + encodeProperties(properties))


PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


def encodeConnect(packet: Connect) -> bytes:
    """A CONNECT packet (client side: tests, bench and bridges use it)."""
    v5 = packet.protocolLevel == MQTT5
    flags = 0
    if packet.cleanSession:
        flags |= 0x02
    payload = _str(packet.clientId)
    if packet.willTopic is not None:
        flags |= 0x04 | (packet.willQos << 3) | (0x20 if packet.willRetain else 0)
        if v5:
            payload += encodeProperties(packet.willProperties)
        payload += _str(packet.willTopic) + _bin(packet.willPayload or b"")
    if packet.username is not None:
        flags |= 0x80
        payload += _str(packet.username)
    if packet.password is not None:
        flags |= 0x40
        payload += _bin(packet.password)
    header = (
        _str(packet.protocolName)
        + bytes((packet.protocolLevel | (0x80 if packet.bridge else 0), flags))
        + _U16.pack(packet.keepAlive)
    )
    if v5:
        header += encodeProperties(packet.properties)
    return _frame(0x10, header + payload)


def encodeSubscribe(
    packetId: int,
    topics: Sequence[tuple[str, int]],
    properties: dict[str, Any] | None = None,
) -> bytes:
    """A SUBSCRIBE packet (client side); 5.0 form when C{properties} is not None."""
    props = b"" if properties is None else encodeProperties(properties)
    body = _U16.pack(packetId) + props + b"".join(_str(t) + bytes((q,)) for t, q in topics)
    return _frame(0x82, body)


def encodeUnsubscribe(
    packetId: int, topics: Sequence[str], properties: dict[str, Any] | None = None
) -> bytes:
    """An UNSUBSCRIBE packet (client side); 5.0 form when C{properties} is not None."""
    props = b"" if properties is None else encodeProperties(properties)
    return _frame(0xA2, _U16.pack(packetId) + props + b"".join(_str(t) for t in topics))


def encode(packet: Packet, version: int = MQTT311) -> bytes:
    """Encode any packet object for protocol level C{version} (convenience for tests and
    clients; the broker's hot paths call the specific encoders)."""
    t = packet.type
    v5 = version == MQTT5
    if t == PUBLISH:
        assert isinstance(packet, Publish)
        return encodePublish(
            packet.topic.encode(),
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packetId,
            encodeProperties(packet.properties) if v5 else None,
        )
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if v5:
            return encodeAck5(t, packet.packetId, packet.reasonCode, packet.properties)  # type: ignore[attr-defined]
        return encodeAck(t, packet.packetId)  # type: ignore[attr-defined]
    if t == UNSUBACK:
        assert isinstance(packet, Unsuback)
        if v5:
            return encodeUnsuback(packet.packetId, packet.reasonCodes, packet.properties)
        return encodeUnsuback(packet.packetId)
    if t == CONNECT:
        assert isinstance(packet, Connect)
        return encodeConnect(packet)
    if t == CONNACK:
        assert isinstance(packet, Connack)
        return encodeConnack(
            packet.sessionPresent, packet.returnCode, packet.properties if v5 else None
        )
    if t == SUBSCRIBE:
        assert isinstance(packet, Subscribe)
        return encodeSubscribe(packet.packetId, packet.topics, packet.properties if v5 else None)
    if t == SUBACK:
        assert isinstance(packet, Suback)
        return encodeSuback(packet.packetId, packet.returnCodes, packet.properties if v5 else None)
    if t == UNSUBSCRIBE:
        assert isinstance(packet, Unsubscribe)
        return encodeUnsubscribe(packet.packetId, packet.topics, packet.properties if v5 else None)
    if t == PINGREQ:
        return PINGREQ_BYTES
    if t == PINGRESP:
        return PINGRESP_BYTES
    if t == DISCONNECT:
        assert isinstance(packet, Disconnect)
        if v5:
            return encodeDisconnect(packet.reasonCode, packet.properties)
        return DISCONNECT_BYTES
    if t == AUTH:
        assert isinstance(packet, Auth)
        return encodeAuth(packet.reasonCode, packet.properties)
    raise ValueError(f"cannot encode {packet!r}")


# Decoding


_readStr = readUtf8
_readBin = readBinary


def _readId(data: bytes, pos: int, end: int, what: str) -> int:
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: missing packet identifier")
    pid = _unpackU16(data, pos)[0]
    if pid == 0:
        raise ProtocolViolation(f"{what}: packet identifier 0", "MQTT-2.3.1-1")
    return pid


def _checkFlags(first: int, expected: int, what: str) -> None:
    if first & 0x0F != expected:
        raise MalformedPacket(
            f"{what}: reserved fixed-header flags are {first & 0x0F:#x}", "MQTT-2.2.2-2"
        )


class MQTTParser:
    """Turns a byte stream into MQTT packets.

    @ivar maxPacketSize: packets whose total size would exceed this raise
        L{PacketTooLarge} as soon as their length is known, so an oversize
        packet is never buffered.
    @ivar server: True to accept only client-to-server packets.
    @ivar version: the protocol level: 5.0 packets carry reason codes and
        properties.  A server parser switches on the CONNECT it parses; a
        client sets it.
    """

    __slots__ = (
        "maxPacketSize",
        "server",
        "version",
        "_chunks",
        "_have",
        "_need",
        "_topicCache",
        "_handlers",
        "maxTopicLength",
        "maxTopicLevels",
    )

    def __init__(
        self,
        maxPacketSize: int = MAX_REMAINING_LENGTH + 5,
        server: bool = True,
        maxTopicLength: int = 65535,
        maxTopicLevels: int = 0,
    ) -> None:
        self.maxPacketSize = maxPacketSize
        self.server = server
        #: checked once per distinct topic (the result is cached with the topic)
        self.maxTopicLength = maxTopicLength
        self.maxTopicLevels = maxTopicLevels
        #: protocol level in use; a server parser learns it from CONNECT
        self.version = MQTT311
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        # Topic bytes → validated str, bounded; saves decode+checks per PUBLISH.
        self._topicCache: dict[bytes, str] = {}
        # Shared tables: no per-connection bound methods (memory per idle client).
        self._handlers = _SERVER_HANDLERS if server else _CLIENT_HANDLERS

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return self._have

    def feed(self, data: bytes) -> list[Packet]:
        """Add received bytes; return every packet now complete, in order."""
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._have = 0
        packets: list[Packet] = []
        append = packets.append
        pos = 0
        n = len(data)
        maxSize = self.maxPacketSize
        handlers = self._handlers
        parsePublish = self._parsePublish
        while pos < n:
            # Fixed header: type/flags byte, then 1-4 bytes of remaining length.
            i = pos + 1
            if i >= n:
                self._keep(data, pos, pos + 2)
                break
            b = data[i]
            if b < 128:
                length = b
                i += 1
            else:
                length = b & 127
                shift = 7
                i += 1
                while True:
                    if i >= n:
                        length = -1
                        break
                    b = data[i]
                    i += 1
                    length |= (b & 127) << shift
                    if b < 128:
                        break
                    shift += 7
                    if shift > 21:
                        raise MalformedPacket("remaining length longer than 4 bytes")
                if length < 0:
                    self._keep(data, pos, i + 1)
                    break
            end = i + length
            if end - pos > maxSize:
                if self.server and data[pos] >> 4 == CONNECT:
                    self._peekLevel(data, i, n)
                raise PacketTooLarge(f"packet of {end - pos} bytes exceeds the maximum {maxSize}")
            if end > n:
                self._keep(data, pos, end)
                break
            first = data[pos]
            t = first >> 4
            if t == PUBLISH:
                append(parsePublish(first, data, i, end, pos))
            else:
                handler = handlers[t]
                if handler is None:
                    raise ProtocolViolation(f"unexpected packet type {t}")
                append(handler(self, first, data, i, end))
            pos = end
        return packets

    def _peekLevel(self, data: bytes, pos: int, n: int) -> None:
        """An oversize CONNECT: learn its protocol level if it has arrived, so that a
        5.0 client is refused with a 5.0 CONNACK (0x95 Packet too large)."""
        if pos + 2 <= n:
            level = pos + 2 + ((data[pos] << 8) | data[pos + 1])
            if level < n and data[level] == MQTT5:
                self.version = MQTT5

    def _keep(self, data: bytes, pos: int, needEnd: int) -> None:
        rest = data[pos:]
        self._chunks = [rest]
        self._have = len(rest)
        self._need = needEnd - pos

    def _parseConnect(self, first: int, data: bytes, pos: int, end: int) -> Connect:
        _checkFlags(first, 0, "CONNECT")
        name, pos = _readStr(data, pos, end, "CONNECT protocol name")
        if pos + 4 > end:
            raise MalformedPacket("CONNECT: truncated variable header")
        level = data[pos]
        flags = data[pos + 1]
        keepAlive = _unpackU16(data, pos + 2)[0]
        pos += 4
        bridge = False
        if level & 0x80 and (name, level & 0x7F) in (("MQTT", MQTT311), ("MQIsdp", MQTT31)):
            # A 3.x bridge: mosquitto sets the level's top bit (its try_private option).
            level &= 0x7F
            bridge = True
        if (name, level) not in (("MQTT", MQTT311), ("MQIsdp", MQTT31), ("MQTT", MQTT5)):
            if name not in ("MQTT", "MQIsdp"):
                raise ProtocolViolation(f"CONNECT: unknown protocol name {name!r}", "MQTT-3.1.2-1")
            # A known name with a level we do not speak gets CONNACK 0x01 (MQTT-3.1.2-2).
            return Connect("", protocolLevel=level, protocolName=name)
        self.version = level
        v5 = level == MQTT5
        if flags & 0x01:
            raise MalformedPacket("CONNECT: reserved flag set", "MQTT-3.1.2-3")
        will = bool(flags & 0x04)
        willQos = (flags >> 3) & 0x03
        willRetain = bool(flags & 0x20)
        if willQos == 3:
            raise MalformedPacket("CONNECT: will QoS 3", "MQTT-3.1.2-14")
        if not will and (willQos or willRetain):
            raise MalformedPacket("CONNECT: will QoS/retain set without will flag", "MQTT-3.1.2-11")
        hasUser = bool(flags & 0x80)
        hasPassword = bool(flags & 0x40)
        if hasPassword and not hasUser and not v5:
            raise MalformedPacket("CONNECT: password without user name", "MQTT-3.1.2-22")
        properties: dict[str, Any] = {}
        if v5:
            properties, pos = readProperties(data, pos, end, CONNECT)
        clientId, pos = _readStr(data, pos, end, "CONNECT client identifier")
        willTopic = willPayload = username = None
        password = None
        willProperties: dict[str, Any] = {}
        if will:
            if v5:
                willProperties, pos = readProperties(data, pos, end, WILL)
            willTopic, pos = _readStr(data, pos, end, "CONNECT will topic")
            willPayload, pos = _readBin(data, pos, end, "CONNECT will message")
        if hasUser:
            username, pos = _readStr(data, pos, end, "CONNECT user name")
        if hasPassword:
            password, pos = _readBin(data, pos, end, "CONNECT password")
        if pos != end:
            raise MalformedPacket("CONNECT: trailing bytes after the payload")
        return Connect(
            clientId,
            protocolLevel=level,
            cleanSession=bool(flags & 0x02),
            keepAlive=keepAlive,
            willTopic=willTopic,
            willPayload=willPayload,
            willQos=willQos,
            willRetain=willRetain,
            username=username,
            password=password,
            protocolName=name,
            properties=properties,
            willProperties=willProperties,
            bridge=bridge,
        )

    def _parseConnack(self, first: int, data: bytes, pos: int, end: int) -> Connack:
        _checkFlags(first, 0, "CONNACK")
        if self.version == MQTT5:
            if end - pos < 2:
                raise MalformedPacket("CONNACK: truncated")
            props: dict[str, Any] = {}
            if end - pos > 2:
                props, _ = readProperties(data, pos + 2, end, CONNACK)
            return Connack(bool(data[pos] & 1), data[pos + 1], props)
        if end - pos != 2:
            raise MalformedPacket("CONNACK: remaining length must be 2")
        return Connack(bool(data[pos] & 1), data[pos + 1])

    def _parsePublish(self, first: int, data: bytes, pos: int, end: int, start: int) -> Publish:
        qos = (first >> 1) & 3
        if qos == 3:
            raise MalformedPacket("PUBLISH: QoS 3", "MQTT-3.3.1-4")
        dup = bool(first & 8)
        if dup and not qos:
            raise MalformedPacket("PUBLISH: DUP set on QoS 0", "MQTT-3.3.1-2")
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH: truncated topic length")
        tlen = (data[pos] << 8) | data[pos + 1]
        tend = pos + 2 + tlen
        if tend > end:
            raise MalformedPacket("PUBLISH: topic runs past the packet end")
        v5 = self.version == MQTT5
        unaccepted = None
        if tlen == 0 and v5:
            topic = ""  # a Topic Alias must stand in for it; the protocol checks
        else:
            tb = data[pos + 2 : tend]
            topic = self._topicCache.get(tb)  # type: ignore[assignment]
            if topic is None:
                try:
                    topic = self._validTopic(tb)
                except TopicNameInvalid as e:
                    if not v5:
                        raise
                    # 5.0: refused with 0x90 by the protocol, the connection stays.
                    unaccepted = e.reason
                    topic = tb.decode("utf-8")
        pid = None
        if qos:
            if tend + 2 > end:
                raise MalformedPacket("PUBLISH: missing packet identifier")
            pid = (data[tend] << 8) | data[tend + 1]
            if pid == 0:
                raise ProtocolViolation("PUBLISH: packet identifier 0", "MQTT-2.3.1-1")
            tend += 2
        if v5:
            props, tend = readProperties(data, tend, end, PUBLISH)
            if unaccepted is not None:
                return UnacceptedPublish(
                    unaccepted, topic, data[tend:end], qos, bool(first & 1), dup, pid, None, props
                )
            return Publish(topic, data[tend:end], qos, bool(first & 1), dup, pid, None, props)
        if qos:
            return Publish(topic, data[tend:end], qos, bool(first & 1), dup, pid)
        return Publish(topic, data[tend:end], 0, bool(first & 1), False, None, data[start:end])

    def _validTopic(self, tb: bytes) -> str:
        try:
            topic = tb.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("PUBLISH: topic is not valid UTF-8", "MQTT-1.5.3-1") from None
        if not topic:
            raise ProtocolViolation("PUBLISH: empty topic name", "MQTT-4.7.3-1")
        if "\x00" in topic:
            raise MalformedPacket("PUBLISH: topic contains U+0000", "MQTT-1.5.3-2")
        if "+" in topic or "#" in topic:
            raise ProtocolViolation("PUBLISH: wildcard in topic name", "MQTT-3.3.2-2")
        if len(topic) > self.maxTopicLength:
            raise TopicNameInvalid(f"PUBLISH: topic longer than {self.maxTopicLength} characters")
        if self.maxTopicLevels and topic.count("/") >= self.maxTopicLevels:
            raise TopicNameInvalid(f"PUBLISH: topic has more than {self.maxTopicLevels} levels")
        cache = self._topicCache
        if len(cache) >= 1024:
            cache.clear()
        cache[tb] = topic
        return topic

    def _parseAck(self, first: int, data: bytes, pos: int, end: int) -> Packet:
        t = first >> 4
        _checkFlags(first, 2 if t == PUBREL else 0, "acknowledgement")
        cls = {PUBACK: Puback, PUBREC: Pubrec, PUBREL: Pubrel, PUBCOMP: Pubcomp}[t]
        if self.version == MQTT5:
            if end - pos < 2:
                raise MalformedPacket(f"packet type {t}: missing packet identifier")
            pid = _unpackU16(data, pos)[0]
            reason = data[pos + 2] if end - pos > 2 else 0
            props: dict[str, Any] = {}
            if end - pos > 3:
                props, _ = readProperties(data, pos + 3, end, t)
            return cls(pid, reason, props)
        if end - pos != 2:
            raise MalformedPacket(f"packet type {t}: remaining length must be 2")
        return cls(_unpackU16(data, pos)[0])

    def _parseUnsuback(self, first: int, data: bytes, pos: int, end: int) -> Unsuback:
        if end - pos < 2:
            raise MalformedPacket("UNSUBACK: missing packet identifier")
        pid = _unpackU16(data, pos)[0]
        if self.version == MQTT5:
            props, pos = readProperties(data, pos + 2, end, UNSUBACK)
            return Unsuback(pid, list(data[pos:end]), props)
        return Unsuback(pid)

    def _parseSubscribe(self, first: int, data: bytes, pos: int, end: int) -> Subscribe:
        _checkFlags(first, 2, "SUBSCRIBE")
        pid = _readId(data, pos, end, "SUBSCRIBE")
        pos += 2
        v5 = self.version == MQTT5
        props: dict[str, Any] = {}
        if v5:
            props, pos = readProperties(data, pos, end, SUBSCRIBE)
        topics: list[tuple[str, int]] = []
        while pos < end:
            topicFilter, pos = _readStr(data, pos, end, "SUBSCRIBE topic filter")
            if pos >= end:
                raise MalformedPacket("SUBSCRIBE: missing subscription options")
            options = data[pos]
            pos += 1
            if options & (0xC0 if v5 else 0xFC):
                raise MalformedPacket(
                    "SUBSCRIBE: reserved option bits set", "MQTT-3.8.3-5" if v5 else "MQTT-3-8.3-4"
                )
            if options & 3 == 3:
                if v5:  # MQTT 5.0 section 3.8.3.1: a Protocol Error
                    raise ProtocolViolation("SUBSCRIBE: Maximum QoS 3")
                raise MalformedPacket("SUBSCRIBE: requested QoS 3", "MQTT-3-8.3-4")
            if (options >> 4) & 3 == 3:  # MQTT 5.0 section 3.8.3.1: a Protocol Error
                raise ProtocolViolation("SUBSCRIBE: Retain Handling 3")
            topics.append((topicFilter, options))
        if not topics:
            # MQTT 5.0 section 3.8.3: "A SUBSCRIBE packet with no Payload is a
            # Protocol Error" (MQTT-3.8.3-2; 3.1.1: a protocol violation, MQTT-3.8.3-3).
            raise ProtocolViolation(
                "SUBSCRIBE: no topic filters", "MQTT-3.8.3-2" if v5 else "MQTT-3.8.3-3"
            )
        return Subscribe(pid, topics, props)

    def _parseSuback(self, first: int, data: bytes, pos: int, end: int) -> Suback:
        pid = _unpackU16(data, pos)[0]
        pos += 2
        props: dict[str, Any] = {}
        if self.version == MQTT5:
            props, pos = readProperties(data, pos, end, SUBACK)
        return Suback(pid, list(data[pos:end]), props)

    def _parseUnsubscribe(self, first: int, data: bytes, pos: int, end: int) -> Unsubscribe:
        _checkFlags(first, 2, "UNSUBSCRIBE")
        pid = _readId(data, pos, end, "UNSUBSCRIBE")
        pos += 2
        props: dict[str, Any] = {}
        if self.version == MQTT5:
            props, pos = readProperties(data, pos, end, UNSUBSCRIBE)
        topics: list[str] = []
        while pos < end:
            topicFilter, pos = _readStr(data, pos, end, "UNSUBSCRIBE topic filter")
            topics.append(topicFilter)
        if not topics:
            # MQTT 5.0 section 3.10.3: "An UNSUBSCRIBE packet with no Payload is a
            # Protocol Error" (MQTT-3.10.3-2).
            raise ProtocolViolation("UNSUBSCRIBE: no topic filters", "MQTT-3.10.3-2")
        return Unsubscribe(pid, topics, props)

    def _parseEmpty(self, first: int, data: bytes, pos: int, end: int) -> Packet:
        t = first >> 4
        _checkFlags(first, 0, "packet")
        if t in (DISCONNECT, AUTH) and self.version == MQTT5:
            reason = data[pos] if end > pos else 0
            props: dict[str, Any] = {}
            if end - pos > 1:
                props, _ = readProperties(data, pos + 1, end, t)
            return Disconnect(reason, props) if t == DISCONNECT else Auth(reason, props)
        if t == AUTH:
            raise ProtocolViolation("AUTH before MQTT 5.0")
        if end != pos:
            raise MalformedPacket(f"packet type {t}: remaining length must be 0")
        return {PINGREQ: Pingreq, PINGRESP: Pingresp, DISCONNECT: Disconnect}[t]()


_Handler = Callable[[MQTTParser, int, bytes, int, int], Packet]

_ALL_HANDLERS: dict[int, _Handler] = {
    CONNECT: MQTTParser._parseConnect,
    CONNACK: MQTTParser._parseConnack,
    PUBACK: MQTTParser._parseAck,
    PUBREC: MQTTParser._parseAck,
    PUBREL: MQTTParser._parseAck,
    PUBCOMP: MQTTParser._parseAck,
    UNSUBACK: MQTTParser._parseUnsuback,
    SUBSCRIBE: MQTTParser._parseSubscribe,
    SUBACK: MQTTParser._parseSuback,
    UNSUBSCRIBE: MQTTParser._parseUnsubscribe,
    PINGREQ: MQTTParser._parseEmpty,
    PINGRESP: MQTTParser._parseEmpty,
    DISCONNECT: MQTTParser._parseEmpty,
    AUTH: MQTTParser._parseEmpty,
}


def _table(types: set[int]) -> list[_Handler | None]:
    table: list[_Handler | None] = [None] * 16
    for t in types:
        table[t] = _ALL_HANDLERS[t]
    return table


# PUBLISH is parsed inline by feed(); it is allowed both ways.
_SERVER_HANDLERS = _table(
    {CONNECT, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH}
)
_CLIENT_HANDLERS = _table(
    {CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH}
)
