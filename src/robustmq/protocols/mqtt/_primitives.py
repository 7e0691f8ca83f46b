"""MQTT data representations (section 1.5): variable byte integers, UTF-8 strings, binary data."""

from __future__ import annotations

import struct

from robustmq.protocols.mqtt._exceptions import MalformedPacket

unpackU16 = struct.Struct("!H").unpack_from
packU16 = struct.Struct("!H").pack

# Statement ids for a bad UTF-8 string (3.1.1 numbering; 5.0 calls them MQTT-1.5.4-1/-2).
UTF8_STATEMENTS = ("MQTT-1.5.3-1", "MQTT-1.5.3-2")


def readUtf8(
    data: bytes, pos: int, end: int, what: str, statements: tuple[str, str] = UTF8_STATEMENTS
) -> tuple[str, int]:
    """A length-prefixed UTF-8 string at C{pos}: well formed and without U+0000.

    @return: the string and the position after it.
    """
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: truncated length")
    n = unpackU16(data, pos)[0]
    pos += 2
    if pos + n > end:
        raise MalformedPacket(f"{what}: string runs past its end")
    try:
        s = data[pos : pos + n].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what}: not valid UTF-8", statements[0]) from None
    if "\x00" in s:
        raise MalformedPacket(f"{what}: contains U+0000", statements[1])
    return s, pos + n


def readBinary(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """Length-prefixed binary data at C{pos}; returns it and the position after it."""
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: truncated length")
    n = unpackU16(data, pos)[0]
    pos += 2
    if pos + n > end:
        raise MalformedPacket(f"{what}: runs past its end")
    return data[pos : pos + n], pos + n


def readVarint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A variable byte integer at C{pos}; returns (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than 4 bytes", "MQTT-1.5.5-1")


def encodeVarint(n: int) -> bytes:
    """A variable byte integer (also the fixed header's remaining length)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)
