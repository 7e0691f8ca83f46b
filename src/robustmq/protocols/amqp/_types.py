"""AMQP 0-9-1 field values: short/long strings and RabbitMQ's field tables.

Decoders take a buffer (``bytes`` or ``memoryview``) and an offset and return
``(value, newOffset)``; encoders append to a list of byte chunks.  The type
tags are RabbitMQ's (its errata to the 0-9-1 table grammar), which every
client listed in docs/amqp.md speaks.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "DecodeError",
    "decodeLongstr",
    "decodeShortstr",
    "decodeTable",
    "encodeLongstr",
    "encodeShortstr",
    "encodeTable",
]

_b = struct.Struct(">b")
_B = struct.Struct(">B")
_h = struct.Struct(">h")
_H = struct.Struct(">H")
_i = struct.Struct(">i")
_I = struct.Struct(">I")
_q = struct.Struct(">q")
_Q = struct.Struct(">Q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected AMQP value."""


def decodeShortstr(buf: Any, off: int) -> tuple[str, int]:
    """A shortstr (octet length, UTF-8)."""
    n = buf[off]
    end = off + 1 + n
    if end > len(buf):
        raise DecodeError("shortstr runs past the end of the frame")
    return str(buf[off + 1 : end], "utf-8", "surrogateescape"), end


def decodeLongstr(buf: Any, off: int) -> tuple[bytes, int]:
    """A longstr (32-bit length, raw bytes)."""
    (n,) = _I.unpack_from(buf, off)
    end = off + 4 + n
    if end > len(buf):
        raise DecodeError("longstr runs past the end of the frame")
    return bytes(buf[off + 4 : end]), end


def encodeShortstr(value: str | bytes) -> bytes:
    """Encode a shortstr; longer than 255 bytes is an error."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(raw) > 255:
        raise ValueError(f"shortstr longer than 255 bytes: {raw[:32]!r}...")
    return _B.pack(len(raw)) + raw


def encodeLongstr(value: str | bytes) -> bytes:
    """Encode a longstr."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _I.pack(len(raw)) + raw


def _decodeValue(buf: Any, off: int) -> tuple[Any, int]:
    tag = buf[off]
    off += 1
    if tag == 0x53:  # 'S'
        raw, off = decodeLongstr(buf, off)
        try:
            return raw.decode("utf-8"), off
        except UnicodeDecodeError:
            return raw, off
    if tag == 0x49:  # 'I'
        return _i.unpack_from(buf, off)[0], off + 4
    if tag == 0x74:  # 't'
        return bool(buf[off]), off + 1
    if tag == 0x46:  # 'F'
        return decodeTable(buf, off)
    if tag == 0x6C:  # 'l'
        return _q.unpack_from(buf, off)[0], off + 8
    if tag == 0x41:  # 'A'
        (n,) = _I.unpack_from(buf, off)
        off += 4
        end = off + n
        if end > len(buf):
            raise DecodeError("array runs past the end of the frame")
        items = []
        while off < end:
            v, off = _decodeValue(buf, off)
            items.append(v)
        return items, off
    if tag == 0x62:  # 'b'
        return _b.unpack_from(buf, off)[0], off + 1
    if tag == 0x42:  # 'B'
        return buf[off], off + 1
    if tag == 0x73:  # 's'
        return _h.unpack_from(buf, off)[0], off + 2
    if tag == 0x75:  # 'u'
        return _H.unpack_from(buf, off)[0], off + 2
    if tag == 0x69:  # 'i'
        return _I.unpack_from(buf, off)[0], off + 4
    if tag == 0x4C:  # 'L' (unsigned 64, accepted)
        return _Q.unpack_from(buf, off)[0], off + 8
    if tag == 0x66:  # 'f'
        return _f.unpack_from(buf, off)[0], off + 4
    if tag == 0x64:  # 'd'
        return _d.unpack_from(buf, off)[0], off + 8
    if tag == 0x44:  # 'D'
        scale = buf[off]
        (raw,) = _i.unpack_from(buf, off + 1)
        return Decimal(raw).scaleb(-scale), off + 5
    if tag == 0x54:  # 'T'
        (secs,) = _Q.unpack_from(buf, off)
        return datetime.fromtimestamp(secs, UTC), off + 8
    if tag == 0x56:  # 'V'
        return None, off
    if tag == 0x78:  # 'x'
        return decodeLongstr(buf, off)
    raise DecodeError(f"unknown field-table type tag {tag:#x}")


def decodeTable(buf: Any, off: int) -> tuple[dict[str, Any], int]:
    """A field table (32-bit byte length, then shortstr name + tagged value pairs)."""
    try:
        (n,) = _I.unpack_from(buf, off)
        off += 4
        end = off + n
        if end > len(buf):
            raise DecodeError("table runs past the end of the frame")
        table: dict[str, Any] = {}
        while off < end:
            name, off = decodeShortstr(buf, off)
            table[name], off = _decodeValue(buf, off)
        if off != end:
            raise DecodeError("table entry runs past the table's length")
        return table, off
    except (struct.error, IndexError) as e:
        raise DecodeError(f"truncated field table: {e}") from None


def _encodeValue(value: Any, out: list[bytes]) -> None:
    if isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"S" + _I.pack(len(raw)) + raw)
    elif isinstance(value, bool):
        out.append(b"t\x01" if value else b"t\x00")
    elif isinstance(value, int):
        if -(1 << 31) <= value < (1 << 31):
            out.append(b"I" + _i.pack(value))
        else:
            out.append(b"l" + _q.pack(value))
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"x" + _I.pack(len(raw)) + raw)
    elif isinstance(value, dict):
        out.append(b"F")
        encodeTable(value, out)
    elif isinstance(value, list | tuple):
        inner: list[bytes] = []
        for v in value:
            _encodeValue(v, inner)
        body = b"".join(inner)
        out.append(b"A" + _I.pack(len(body)) + body)
    elif isinstance(value, float):
        out.append(b"d" + _d.pack(value))
    elif isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        scale = max(0, -int(exponent))
        out.append(b"D" + _B.pack(scale) + _i.pack(int(value.scaleb(scale))))
    elif isinstance(value, datetime):
        out.append(b"T" + _Q.pack(int(value.timestamp())))
    elif value is None:
        out.append(b"V")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a field table")


def encodeTable(table: dict[str, Any] | None, out: list[bytes]) -> None:
    """Append the encoding of C{table} to C{out}."""
    if not table:
        out.append(b"\x00\x00\x00\x00")
        return
    inner: list[bytes] = []
    for name, value in table.items():
        inner.append(encodeShortstr(name))
        _encodeValue(value, inner)
    body = b"".join(inner)
    out.append(_I.pack(len(body)))
    out.append(body)
