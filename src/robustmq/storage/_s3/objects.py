"""
The layout of one log object of the C{s3} store.

An object is a fixed header followed by a body of record frames, all
little-endian.  The header alone (one ranged GET of L{HEADER_SIZE} bytes) is
enough to index the object; the body is read when its records are::

    4s   magic            b"RMQ3"
    u8   version          1
    u8   flags            FENCE (1): a writer took the shard with this object
    u16  reserved
    u64  epoch            the writer's epoch (see docs/storage.md, fencing)
    i64  first            offset of the object's first record (or next offset if none)
    i64  next             one past the last offset the object covers
    i64  start            the shard's start offset (deleteBefore) as of this write
    u32  count            records in the body
    i64  min_timestamp, max_timestamp
    u64  replaces_from, replaces_to
                          sequence numbers this object replaces (merge or
                          compaction; 0, 0 for none)
    16s  token            random per write: tells a writer its own object apart
    u32  body_length
    u32  crc32c(body)

Each record frame::

    u32  offset_delta     offset - first
    u32  span             offsets the record occupies (1 for plain records)
    i64  timestamp
    i32  key_length       -1 for None
    i32  value_length     -1 for None (a tombstone in compacted shards)
    u16  header_count
    key, value, header_count x (u16 name_length, UTF-8 name, i32 value_length, value)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import attrs
from crc32c import crc32c

from robustmq.storage._common import requireBytes
from robustmq.storage.errors import CorruptRecordError

__all__ = [
    "FENCE",
    "HEADER_SIZE",
    "Header",
    "decodeBody",
    "decodeHeader",
    "encodeObject",
    "encodeRecord",
]

MAGIC = b"RMQ3"
VERSION = 1
FENCE = 1
_HEADER = struct.Struct("<4sBBHQqqqIqqQQ16sII")
HEADER_SIZE = _HEADER.size
_FRAME = struct.Struct("<IIqiiH")
_DELTA = struct.Struct("<I")
_H_NAME = struct.Struct("<H")
_H_VALUE = struct.Struct("<i")
#: the largest key or value one record may carry
MAX_FIELD = 1 << 30


@attrs.define
class Header:
    """The decoded header of one log object."""

    flags: int
    epoch: int
    first: int
    next: int
    start: int
    count: int
    minTimestamp: int
    maxTimestamp: int
    replacesFrom: int
    replacesTo: int
    token: bytes
    bodyLength: int
    crc: int


def encodeRecord(record: dict[str, Any], now: int, span: int = 1) -> tuple[bytes, int]:
    """
    Frame one record without its offset delta.

    @return: C{(frame, timestamp)}.
    @raise TypeError: a key, value or header value is not bytes.
    """
    k = record.get("key")
    v = record.get("value")
    requireBytes("key", k)
    requireBytes("value", v)
    ts = record.get("timestamp")
    if ts is None:
        ts = now
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError(f"timestamp must be an int, not {type(ts).__name__}")
    headers = record.get("headers") or ()
    parts = [b"", b""]
    for name, value in headers:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        requireBytes("header value", value)
        raw = name.encode("utf-8")
        parts.append(_H_NAME.pack(len(raw)))
        parts.append(raw)
        if value is None:
            parts.append(_H_VALUE.pack(-1))
        else:
            parts.append(_H_VALUE.pack(len(value)))
            parts.append(bytes(value))
    kl = -1 if k is None else len(k)
    vl = -1 if v is None else len(v)
    if kl > MAX_FIELD or vl > MAX_FIELD:
        raise ValueError("record key or value exceeds 1 GiB")
    parts[0] = _FRAME.pack(0, span, ts, kl, vl, len(headers))[4:]
    parts[1] = (bytes(k) if k else b"") + (bytes(v) if v else b"")
    return b"".join(parts), ts


def encodeObject(
    frames: Sequence[tuple[int, bytes]],
    *,
    flags: int,
    epoch: int,
    first: int,
    next: int,
    start: int,
    minTimestamp: int,
    maxTimestamp: int,
    token: bytes,
    replaces: tuple[int, int] = (0, 0),
) -> bytes:
    """An object's bytes from C{(offset, frame)} pairs (frames from L{encodeRecord})."""
    parts: list[bytes] = [b""]
    for offset, frame in frames:
        parts.append(_DELTA.pack(offset - first))
        parts.append(frame)
    body = b"".join(parts)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        flags,
        0,
        epoch,
        first,
        next,
        start,
        len(frames),
        minTimestamp,
        maxTimestamp,
        replaces[0],
        replaces[1],
        token,
        len(body),
        crc32c(body),
    )
    return header + body


def decodeHeader(data: bytes) -> Header:
    """Decode the first L{HEADER_SIZE} bytes of an object."""
    if len(data) < HEADER_SIZE:
        raise CorruptRecordError(f"object header of {len(data)} bytes")
    fields = _HEADER.unpack_from(data)
    if fields[0] != MAGIC or fields[1] != VERSION:
        raise CorruptRecordError("not a RobustMQ log object (bad magic or version)")
    return Header(*fields[2:3], *fields[4:])


def decodeBody(data: bytes, header: Header | None = None) -> tuple[Header, list[dict[str, Any]]]:
    """Decode a whole object into its header and records (offsets made absolute)."""
    if header is None:
        header = decodeHeader(data)
    body = memoryview(data)[HEADER_SIZE : HEADER_SIZE + header.bodyLength]
    if len(body) != header.bodyLength or crc32c(body) != header.crc:
        raise CorruptRecordError("log object body failed its CRC32C check")
    records: list[dict[str, Any]] = []
    pos = 0
    first = header.first
    unpack = _FRAME.unpack_from
    for _ in range(header.count):
        delta, span, ts, kl, vl, hc = unpack(body, pos)
        pos += _FRAME.size
        key = None
        if kl >= 0:
            key = bytes(body[pos : pos + kl])
            pos += kl
        value = None
        if vl >= 0:
            value = bytes(body[pos : pos + vl])
            pos += vl
        headers: list[tuple[str, bytes]] = []
        for _h in range(hc):
            (n,) = _H_NAME.unpack_from(body, pos)
            pos += 2
            name = bytes(body[pos : pos + n]).decode("utf-8")
            pos += n
            (hl,) = _H_VALUE.unpack_from(body, pos)
            pos += 4
            hv = b""
            if hl >= 0:
                hv = bytes(body[pos : pos + hl])
                pos += hl
            headers.append((name, hv))
        record: dict[str, Any] = {
            "offset": first + delta,
            "timestamp": ts,
            "key": key,
            "value": value,
            "headers": headers,
        }
        if span > 1:
            record["span"] = span
        records.append(record)
    return header, records


def recordSize(record: dict[str, Any]) -> int:
    """The bytes a decoded record counts for against read and cache bounds."""
    n = 35
    k, v = record["key"], record["value"]
    if k:
        n += len(k)
    if v:
        n += len(v)
    for name, value in record["headers"]:
        n += len(name) + len(value) + 6
    return n
