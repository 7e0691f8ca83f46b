"""
The records inside a v2 record batch, for the few places that must look at them.

Produce and Fetch never decode records (see L{robustmq.protocols.kafka._records}).
Topics mapped to MQTT topics (docs/topic-space.md) do: a record produced
to a mapped topic is published to MQTT under its key, and an MQTT publish
is appended to the mapped topic as a record.  This module decodes the
records of a batch (decompressing gzip, snappy, lz4 and zstd batches) and
encodes new, uncompressed batches.

Record layout (KIP-98)::

    length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
    keyLength varint (-1: null), key, valueLength varint (-1: null), value,
    headerCount varint, headers: [keyLength varint, key, valueLength varint, value]
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import crc32c

from robustmq.protocols.kafka._records import (
    ATTR_COMPRESSION,
    BATCH_OVERHEAD,
    BatchHeader,
    InvalidRecord,
)

__all__ = ["Record", "decodeRecords", "encodeBatch", "UnsupportedCompression"]

_TAIL = struct.Struct(">hiqqqhii")
_HEAD = struct.Struct(">qiibI")
_XERIAL_MAGIC = b"\x82SNAPPY\x00"


class UnsupportedCompression(InvalidRecord):
    """The batch is compressed with a codec whose library is not installed."""


class Record:
    """One record of a batch: key, value, headers and its absolute timestamp (ms)."""

    __slots__ = ("key", "value", "headers", "timestamp", "offsetDelta")

    def __init__(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        timestamp: int,
        offsetDelta: int = 0,
    ) -> None:
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.offsetDelta = offsetDelta

    def __repr__(self) -> str:
        return f"Record(key={self.key!r}, value={self.value!r:.40}, ts={self.timestamp})"


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def _readVarint(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data):
        b = data[pos]
        if b < 0x80:  # most lengths, deltas and counts fit in one byte
            return (b >> 1) ^ -(b & 1), pos + 1
    shift = 0
    result = 0
    while True:
        if pos >= len(data):
            raise InvalidRecord("truncated varint in a record")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return _zigzag(result), pos
        shift += 7
        if shift > 63:
            raise InvalidRecord("varint too long in a record")


def _varint(v: int) -> bytes:
    v = (v << 1) ^ (v >> 63)
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _bytesField(data: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = _readVarint(data, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(data):
        raise InvalidRecord("truncated field in a record")
    return bytes(data[pos:end]), end


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    try:
        if codec == 2:
            import snappy

            if data.startswith(_XERIAL_MAGIC):
                # Java's (and librdkafka's) framing: a 16-byte header, then
                # [int32 length][snappy block] chunks.
                out = bytearray()
                pos = 16
                while pos < len(data):
                    (n,) = struct.unpack_from(">i", data, pos)
                    pos += 4
                    out += snappy.decompress(data[pos : pos + n])
                    pos += n
                return bytes(out)
            return bytes(snappy.decompress(data))
        if codec == 3:
            import lz4.frame

            return bytes(lz4.frame.decompress(data))
        if codec == 4:
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    except ImportError as e:
        raise UnsupportedCompression(f"compression codec {codec} needs {e.name}") from None
    except InvalidRecord:
        raise
    except Exception as e:  # the codec library's own errors
        raise InvalidRecord(f"compressed records do not decompress: {e}") from None
    raise InvalidRecord(f"unknown compression codec {codec}")


def decodeRecords(batch: bytes | memoryview, h: BatchHeader) -> list[Record]:
    """The records of the batch C{h} in C{batch} (decompressed as needed).

    @raise InvalidRecord: malformed records or undecompressible data
        (L{UnsupportedCompression} when only the codec's library is missing).
    """
    body = bytes(memoryview(batch)[h.start + BATCH_OVERHEAD : h.start + h.size])
    codec = h.attributes & ATTR_COMPRESSION
    if codec:
        body = _decompress(codec, body)
    records: list[Record] = []
    pos = 0
    for _ in range(h.count):
        length, pos = _readVarint(body, pos)
        end = pos + length
        if length < 0 or end > len(body):
            raise InvalidRecord("truncated record")
        pos += 1  # record attributes (unused)
        tsDelta, pos = _readVarint(body, pos)
        offsetDelta, pos = _readVarint(body, pos)
        key, pos = _bytesField(body, pos)
        value, pos = _bytesField(body, pos)
        count, pos = _readVarint(body, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(max(0, count)):
            name, pos = _bytesField(body, pos)
            hvalue, pos = _bytesField(body, pos)
            headers.append(((name or b"").decode("utf-8", "replace"), hvalue))
        if pos != end:
            raise InvalidRecord("record length does not match its fields")
        records.append(Record(key, value, headers, h.baseTimestamp + tsDelta, offsetDelta))
    return records


def encodeBatch(records: Sequence[Record]) -> bytes:
    """An uncompressed v2 batch of C{records} with base offset 0 and no producer id.

    Timestamps are taken from the records (CreateTime); the broker assigns
    offsets when it stores the batch, as for any produced batch.
    """
    if not records:
        raise ValueError("a record batch needs at least one record")
    base = min(r.timestamp for r in records)
    top = max(r.timestamp for r in records)
    parts: list[bytes] = []
    for i, r in enumerate(records):
        fields = [b"\x00", _varint(r.timestamp - base), _varint(i)]
        if r.key is None:
            fields.append(_varint(-1))
        else:
            fields += (_varint(len(r.key)), r.key)
        if r.value is None:
            fields.append(_varint(-1))
        else:
            fields += (_varint(len(r.value)), r.value)
        fields.append(_varint(len(r.headers)))
        for name, value in r.headers:
            encoded = name.encode("utf-8")
            fields += (_varint(len(encoded)), encoded)
            if value is None:
                fields.append(_varint(-1))
            else:
                fields += (_varint(len(value)), value)
        body = b"".join(fields)
        parts.append(_varint(len(body)))
        parts.append(body)
    tail = _TAIL.pack(0, len(records) - 1, base, top, -1, -1, -1, len(records)) + b"".join(parts)
    return _HEAD.pack(0, 4 + 1 + 4 + len(tail), 0, 2, crc32c.crc32c(tail)) + tail


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's default partitioner for keyed records)."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    i = 0
    while length - i >= 4:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
        i += 4
    left = length - i
    if left == 3:
        h ^= data[i + 2] << 16
    if left >= 2:
        h ^= data[i + 1] << 8
    if left >= 1:
        h ^= data[i]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partitionForKey(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for C{key}."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
