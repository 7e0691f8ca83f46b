"""The few MQTT 3.1.1 packets the load generator sends, encoded once up front.

The generator never builds a packet inside a hot loop: publishers send slices
of blobs made here, subscribers answer with PUBACK batches made here.  Nothing
in this module touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82  # MQTT-3.8.1-1: the SUBSCRIBE fixed header flags are 0b0010
SUBACK = 0x90
PINGREQ_BYTE = 0xC0
PINGRESP = 0xD0
DISCONNECT_BYTE = 0xE0

PINGREQ = bytes((PINGREQ_BYTE, 0))
DISCONNECT = bytes((DISCONNECT_BYTE, 0))

MAX_REMAINING_LENGTH = 268_435_455  # MQTT-2.2.3: four bytes of varint

_PUBACK_HEAD = bytes((PUBACK, 2))


def encode_remaining_length(length: int) -> bytes:
    """Return the variable-length "Remaining Length" of a fixed header (MQTT 2.2.3)."""
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        digit, length = length & 0x7F, length >> 7
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """Decode the remaining length starting at ``buf[pos]``.

    Returns ``(length, bytes_used)``, or ``None`` while the varint is still
    incomplete.  Raises ``ValueError`` on a varint longer than four bytes.
    """
    length = 0
    shift = 0
    for used in range(1, 5):
        if pos >= end:
            return None
        digit = buf[pos]
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return length, used
        shift += 7
        pos += 1
    raise ValueError("malformed remaining length (more than four bytes)")


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def connect(client_id: str, keepalive: int = 60, clean_session: bool = True) -> bytes:
    """Encode a CONNECT for protocol level 4 (MQTT 3.1.1) without will or credentials."""
    flags = 0x02 if clean_session else 0x00
    body = _utf8("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + _utf8(client_id)
    return _packet(CONNECT, body)


def subscribe(packet_id: int, topic: str, qos: int) -> bytes:
    """Encode a SUBSCRIBE for one topic filter at the requested QoS."""
    return _packet(SUBSCRIBE, struct.pack("!H", packet_id) + _utf8(topic) + bytes((qos,)))


def puback(packet_id: int) -> bytes:
    """Encode one PUBACK."""
    return _PUBACK_HEAD + struct.pack("!H", packet_id)


def pubacks(packet_ids: bytes | bytearray) -> bytes:
    """Encode one PUBACK per big-endian 2-byte packet id in ``packet_ids``, back to back.

    The ids come straight out of received PUBLISH packets, so a whole recv
    buffer's worth of acknowledgements is built with a few slice copies.
    """
    count = len(packet_ids) // 2
    out = bytearray(_PUBACK_HEAD + b"\0\0") * count
    out[2::4] = packet_ids[0::2]
    out[3::4] = packet_ids[1::2]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class PublishLayout:
    """Where things sit inside a PUBLISH of a fixed topic, payload size and QoS.

    All PUBLISH packets of one benchmark stream have this same shape, which is
    what lets the receivers count and acknowledge them by stride.
    """

    topic: bytes
    payload_size: int
    qos: int

    @property
    def first_byte(self) -> int:
        """The fixed header's first byte as a broker sends it (no DUP, no RETAIN)."""
        return PUBLISH | (self.qos << 1)

    @property
    def body_size(self) -> int:
        """The remaining length: topic, packet id when QoS > 0, payload."""
        return 2 + len(self.topic) + (2 if self.qos else 0) + self.payload_size

    @property
    def header(self) -> bytes:
        """The whole fixed header: first byte plus encoded remaining length."""
        return bytes((self.first_byte,)) + encode_remaining_length(self.body_size)

    @property
    def size(self) -> int:
        """Bytes on the wire per packet."""
        return len(self.header) + self.body_size

    @property
    def packet_id_offset(self) -> int:
        """Offset of the packet id inside a packet (QoS > 0 only)."""
        if not self.qos:
            raise ValueError("QoS 0 PUBLISH has no packet id")
        return len(self.header) + 2 + len(self.topic)

    @property
    def payload_offset(self) -> int:
        """Offset of the payload inside a packet."""
        return len(self.header) + 2 + len(self.topic) + (2 if self.qos else 0)

    def encode(self, payload: bytes, packet_id: int = 0) -> bytes:
        """Encode one PUBLISH of this layout."""
        if len(payload) != self.payload_size:
            raise ValueError("payload does not match the layout's size")
        pid = struct.pack("!H", packet_id) if self.qos else b""
        return self.header + struct.pack("!H", len(self.topic)) + self.topic + pid + payload

    def repeated(self, payload: bytes, count: int) -> bytes:
        """``count`` QoS 0 PUBLISH packets back to back: one ``sendall`` worth."""
        if self.qos:
            raise ValueError("use ring() for QoS > 0, every packet needs its own id")
        return self.encode(payload) * count

    def ring(self, payload: bytes, count: int) -> bytes:
        """``count`` QoS > 0 PUBLISH packets with packet ids 1..count, back to back.

        A publisher sends consecutive slices of this ring; with fewer than
        ``count`` messages in flight an id is never reused while unacknowledged.
        """
        if not self.qos:
            raise ValueError("QoS 0 packets carry no id; use repeated()")
        if not 1 <= count <= 65535:
            raise ValueError("a packet id ring holds 1..65535 packets")
        blob = bytearray(self.encode(payload, 0) * count)
        at = self.packet_id_offset
        ids = range(1, count + 1)
        blob[at :: self.size] = bytes(i >> 8 for i in ids)
        blob[at + 1 :: self.size] = bytes(i & 0xFF for i in ids)
        return bytes(blob)


def bench_payload(size: int) -> bytes:
    """A payload of ``size`` bytes that cannot be mistaken for a fixed header.

    Receivers validate framing by checking header bytes at a fixed stride; a
    filler of ``b"x"`` never equals a PUBLISH or PUBACK first byte.
    """
    return b"x" * size
