"""Sans-IO AMQP 0-9-1 framing: bytes in, frames out, and frame encoders.

L{FrameParser} is fed whatever the socket delivered and returns complete
frames; it holds at most one frame's bytes (bounded by the negotiated
C{frame_max}).  It knows nothing of transports, so tests feed it whole
streams and single bytes alike.
"""

from __future__ import annotations

import struct
from typing import Any

from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._types import DecodeError

__all__ = [
    "PROTOCOL_HEADER",
    "BodyFrame",
    "FrameError",
    "FrameParser",
    "HeaderFrame",
    "Heartbeat",
    "MethodFrame",
    "ProtocolHeader",
    "decodeMethod",
    "encodeBody",
    "encodeContent",
    "encodeDeliver",
    "encodeHeartbeat",
    "encodeMethod",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_HEAD = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQ")
_END = bytes([_spec.FRAME_END])
_DELIVER_HEAD = struct.Struct(">BHIHH")  # method frame head + class and method ids
_TAG_BIT = struct.Struct(">QB")  # delivery-tag, redelivered
_END_HEAD = struct.Struct(">BBHI")  # end octet of one frame + head of the next
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class FrameError(Exception):
    """The peer broke framing; the connection must close with C{code}.

    @ivar code: the AMQP reply code (501 frame-error, 505 unexpected-frame,
        502 syntax-error, 540 not-implemented).
    """

    def __init__(
        self, code: int, text: str, classId: int = 0, methodId: int = 0, detail: str = ""
    ) -> None:
        super().__init__(text)
        self.code = code
        #: what the client is told: the reply code's name and a human sentence
        self.text = text
        self.classId = classId
        self.methodId = methodId
        #: what went wrong inside the decoder, for the log only (never sent)
        self.detail = detail


class ProtocolHeader:
    """The client's 8-byte protocol header (C{AMQP} + version)."""

    __slots__ = ("raw",)
    kind = 0
    channel = 0

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @property
    def valid(self) -> bool:
        """True for AMQP 0-9-1 (also the C{AMQP\\x01\\x01\\x00\\x09} spelling of old clients)."""
        return self.raw in (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09")


class MethodFrame:
    """A method frame: C{channel} and the decoded C{method}."""

    __slots__ = ("channel", "method")
    kind = _spec.FRAME_METHOD

    def __init__(self, channel: int, method: _spec.Method) -> None:
        self.channel = channel
        self.method = method


class HeaderFrame:
    """A content header frame."""

    __slots__ = ("channel", "classId", "bodySize", "properties", "raw")
    kind = _spec.FRAME_HEADER

    def __init__(
        self,
        channel: int,
        classId: int,
        bodySize: int,
        properties: _spec.BasicProperties,
        raw: bytes = b"",
    ) -> None:
        self.channel = channel
        #: the encoded property flags and list, forwarded to consumers as is
        self.raw = raw
        self.classId = classId
        self.bodySize = bodySize
        self.properties = properties


class BodyFrame:
    """A content body frame."""

    __slots__ = ("channel", "data")
    kind = _spec.FRAME_BODY

    def __init__(self, channel: int, data: bytes) -> None:
        self.channel = channel
        self.data = data


class Heartbeat:
    """A heartbeat frame (must be on channel 0)."""

    __slots__ = ("channel",)
    kind = _spec.FRAME_HEARTBEAT

    def __init__(self, channel: int) -> None:
        self.channel = channel


Frame = ProtocolHeader | MethodFrame | HeaderFrame | BodyFrame | Heartbeat


def decodeMethod(payload: Any) -> _spec.Method:
    """Decode a method frame's payload (class id, method id, arguments)."""
    if len(payload) < 4:
        raise FrameError(_spec.FRAME_ERROR, "method frame too short")
    classId = (payload[0] << 8) | payload[1]
    methodId = (payload[2] << 8) | payload[3]
    cls = _spec.METHODS.get((classId << 16) | methodId)
    if cls is None:
        raise FrameError(
            _spec.COMMAND_INVALID,
            f"COMMAND_INVALID - unknown method {classId}/{methodId}",
            classId,
            methodId,
        )
    try:
        return cls.decode(payload, 4)  # type: ignore[attr-defined, no-any-return]
    except (DecodeError, struct.error, IndexError, UnicodeDecodeError) as e:
        raise FrameError(
            _spec.SYNTAX_ERROR,
            f"SYNTAX_ERROR - malformed {cls.NAME.replace('_', '.', 1)} method",
            classId,
            methodId,
            detail=f"{type(e).__name__}: {e}",
        ) from None


class FrameParser:
    """Turns a byte stream into frames.

    The first 8 bytes are the protocol header; after that every frame is
    type, channel, size, payload and the frame-end octet (0xCE).

    @ivar frameMax: largest frame accepted (header and end octet included);
        a larger size fails with L{FrameError} as soon as its header arrives.
    """

    def __init__(self, frameMax: int) -> None:
        self.frameMax = frameMax
        self._buf = bytearray()
        self._headerSeen = False

    def feed(self, data: bytes) -> list[Frame]:
        """Add C{data}; return every frame it completes (possibly none)."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        if not self._headerSeen:
            if len(buf) < 8:
                if bytes(buf[:4]) != b"AMQP"[: min(4, len(buf))]:
                    # Not AMQP at all: report it now rather than wait for 8 bytes.
                    frames.append(ProtocolHeader(bytes(buf)))
                    self._headerSeen = True
                    del buf[:]
                return frames
            frames.append(ProtocolHeader(bytes(buf[:8])))
            self._headerSeen = True
            pos = 8
        n = len(buf)
        try:
            while n - pos >= 7:
                kind, channel, size = _FRAME_HEAD.unpack_from(buf, pos)
                if size + 8 > self.frameMax:
                    raise FrameError(
                        _spec.FRAME_ERROR,
                        f"FRAME_ERROR - frame size {size + 8} exceeds frame_max {self.frameMax}",
                    )
                end = pos + 7 + size
                if end >= n:
                    break
                if buf[end] != 0xCE:  # FRAME_END
                    raise FrameError(_spec.FRAME_ERROR, "FRAME_ERROR - bad frame end octet")
                payload = bytes(buf[pos + 7 : end])
                if kind == 3:  # FRAME_BODY, the most frequent
                    frames.append(BodyFrame(channel, payload))
                elif kind == 1:  # FRAME_METHOD
                    frames.append(MethodFrame(channel, decodeMethod(payload)))
                else:
                    frames.append(self._frame(kind, channel, payload))
                pos = end + 1
        finally:
            if pos:
                del buf[:pos]
        return frames

    def _frame(self, kind: int, channel: int, payload: bytes) -> Frame:
        if kind == _spec.FRAME_METHOD:
            return MethodFrame(channel, decodeMethod(payload))
        if kind == _spec.FRAME_BODY:
            return BodyFrame(channel, payload)
        if kind == _spec.FRAME_HEADER:
            if len(payload) < 14:
                raise FrameError(_spec.FRAME_ERROR, "FRAME_ERROR - content header too short")
            classId, _weight, bodySize = _HEADER.unpack_from(payload, 0)
            try:
                props = _spec.BasicProperties.decode(payload, 12)
            except (DecodeError, struct.error, IndexError) as e:
                raise FrameError(
                    _spec.SYNTAX_ERROR,
                    "SYNTAX_ERROR - malformed content header",
                    detail=f"{type(e).__name__}: {e}",
                ) from None
            return HeaderFrame(channel, classId, bodySize, props, payload[12:])
        if kind == _spec.FRAME_HEARTBEAT:
            return Heartbeat(channel)
        raise FrameError(_spec.FRAME_ERROR, f"FRAME_ERROR - unknown frame type {kind}")


def encodeMethod(channel: int, method: _spec.Method) -> bytes:
    """A complete method frame."""
    payload = method.encode()
    return _FRAME_HEAD.pack(_spec.FRAME_METHOD, channel, len(payload)) + payload + _END


def encodeHeartbeat() -> bytes:
    """A heartbeat frame."""
    return HEARTBEAT_FRAME


def encodeBody(channel: int, body: bytes, frameMax: int, out: list[bytes]) -> None:
    """Append body frames for C{body}, split to fit C{frameMax}."""
    step = frameMax - 8
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        out.append(_FRAME_HEAD.pack(_spec.FRAME_BODY, channel, len(chunk)))
        out.append(chunk)
        out.append(_END)


def encodeDeliver(
    channel: int,
    consumerTag: bytes,
    deliveryTag: int,
    redelivered: bool,
    tail: bytes,
    header: bytes,
    body: bytes,
    frameMax: int,
) -> bytes:
    """Basic.Deliver with its content header and body, from pre-encoded parts.

    The hot path of every consumer: C{consumerTag} is the consumer's tag as
    an encoded shortstr, C{tail} the message's exchange and routing key as
    encoded shortstrs and C{header} its content header payload, all encoded
    once (per consumer, per message) and reused for every delivery.
    """
    parts = [
        _DELIVER_HEAD.pack(_spec.FRAME_METHOD, channel, 13 + len(consumerTag) + len(tail), 60, 60),
        consumerTag,
        _TAG_BIT.pack(deliveryTag, 1 if redelivered else 0),
        tail,
        _END_HEAD.pack(_spec.FRAME_END, _spec.FRAME_HEADER, channel, len(header)),
        header,
    ]
    n = len(body)
    if not n:
        parts.append(_END)
    elif n <= frameMax - 8:
        parts.append(_END_HEAD.pack(_spec.FRAME_END, _spec.FRAME_BODY, channel, n))
        parts.append(body)
        parts.append(_END)
    else:
        parts.append(_END)
        encodeBody(channel, body, frameMax, parts)
    return b"".join(parts)


def encodeContent(
    channel: int,
    method: _spec.Method,
    propertiesRaw: bytes,
    body: bytes,
    frameMax: int,
) -> bytes:
    """Method, content header and body frames for a content-bearing method.

    C{propertiesRaw} is the already-encoded property flags and list, so a
    message fanned out to many consumers is encoded once.
    """
    payload = method.encode()
    out = [_FRAME_HEAD.pack(_spec.FRAME_METHOD, channel, len(payload)), payload, _END]
    header = _HEADER.pack(method.CLASS_ID, 0, len(body)) + propertiesRaw
    out.append(_FRAME_HEAD.pack(_spec.FRAME_HEADER, channel, len(header)))
    out.append(header)
    out.append(_END)
    if body:
        encodeBody(channel, body, frameMax, out)
    return b"".join(out)
