"""
Record batches (message format v2): split, check and rewrite, never re-encode.

A produced C{records} field holds one or more batches.  Each batch is kept
as the bytes the client sent; only C{baseOffset} and
C{partitionLeaderEpoch}, which the CRC does not cover, are rewritten when
the broker assigns offsets.  Compressed batches stay compressed.

Batch header layout (offsets in bytes)::

    0  baseOffset int64         8  batchLength int32      12 partitionLeaderEpoch int32
    16 magic int8               17 crc uint32 (CRC-32C of bytes 21..end)
    21 attributes int16         23 lastOffsetDelta int32  27 baseTimestamp int64
    35 maxTimestamp int64       43 producerId int64       51 producerEpoch int16
    53 baseSequence int32       57 recordCount int32      61 records...
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import crc32c

__all__ = [
    "BATCH_OVERHEAD",
    "BatchHeader",
    "InvalidRecord",
    "controlBatch",
    "iterBatches",
    "rewriteBaseOffset",
]

BATCH_OVERHEAD = 61
_HEADER = struct.Struct(">qiibIhiqqqhii")
_BASE = struct.Struct(">q")
_EPOCH = struct.Struct(">i")

ATTR_COMPRESSION = 0x07
ATTR_TIMESTAMP_TYPE = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20


class InvalidRecord(ValueError):
    """A batch is truncated, not magic 2, or fails its CRC (Kafka's CORRUPT_MESSAGE)."""


class BatchHeader:
    """The fields of one batch header that the broker looks at."""

    __slots__ = (
        "start",
        "size",
        "attributes",
        "lastOffsetDelta",
        "baseTimestamp",
        "maxTimestamp",
        "producerId",
        "producerEpoch",
        "baseSequence",
        "count",
        "_crc",
    )

    def __init__(self, data: bytes | memoryview, start: int) -> None:
        (
            _base,
            length,
            _epoch,
            magic,
            crc,
            self.attributes,
            self.lastOffsetDelta,
            self.baseTimestamp,
            self.maxTimestamp,
            self.producerId,
            self.producerEpoch,
            self.baseSequence,
            self.count,
        ) = _HEADER.unpack_from(data, start)
        if magic != 2:
            raise InvalidRecord(f"record batch magic {magic}; only v2 is accepted")
        self.start = start
        self.size = 12 + length
        if length < BATCH_OVERHEAD - 12 or start + self.size > len(data):
            raise InvalidRecord("truncated record batch")
        self._crc = crc

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    def checkCrc(self, data: bytes | memoryview) -> None:
        """Raise L{InvalidRecord} unless the CRC-32C matches."""
        body = memoryview(data)[self.start + 21 : self.start + self.size]
        if crc32c.crc32c(body) != self._crc:
            raise InvalidRecord("record batch CRC mismatch")


def iterBatches(data: bytes | memoryview, check: bool = True) -> Iterator[BatchHeader]:
    """Yield the header of each batch in C{data} (CRC-checked when C{check})."""
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < BATCH_OVERHEAD:
            raise InvalidRecord("truncated record batch header")
        h = BatchHeader(data, pos)
        if check:
            h.checkCrc(data)
        if h.count < 0 or h.lastOffsetDelta < 0:
            raise InvalidRecord("negative record count")
        yield h
        pos += h.size


def rewriteBaseOffset(batch: bytes, baseOffset: int, leaderEpoch: int = 0) -> bytes:
    """A copy of C{batch} with C{baseOffset} and C{partitionLeaderEpoch} set."""
    out = bytearray(batch)
    _BASE.pack_into(out, 0, baseOffset)
    _EPOCH.pack_into(out, 12, leaderEpoch)
    return bytes(out)


def _varint(v: int) -> bytes:
    v = (v << 1) ^ (v >> 63)
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def controlBatch(
    producerId: int, producerEpoch: int, commit: bool, timestamp: int, coordinatorEpoch: int = 0
) -> bytes:
    """An end-transaction marker batch (KIP-98) with base offset 0, ready to store."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    value = struct.pack(">hi", 0, coordinatorEpoch)
    body = (
        b"\x00"  # record attributes
        + _varint(0)  # timestamp delta
        + _varint(0)  # offset delta
        + _varint(len(key))
        + key
        + _varint(len(value))
        + value
        + _varint(0)  # headers
    )
    record = _varint(len(body)) + body
    attributes = ATTR_TRANSACTIONAL | ATTR_CONTROL
    tail = (
        struct.pack(
            ">hiqqqhii", attributes, 0, timestamp, timestamp, producerId, producerEpoch, -1, 1
        )
        + record
    )
    crc = crc32c.crc32c(tail)
    head = struct.pack(">qiibI", 0, 4 + 1 + 4 + len(tail), 0, 2, crc)
    return head + tail
