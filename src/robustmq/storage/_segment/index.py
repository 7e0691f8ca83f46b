"""
The per-segment sparse offset index and time index.

Both are sampled at the same points: the first record of the segment and then
the first record after every C{index_interval_bytes} of log data.  Entry I{i}
of the offset index is C{(offset, file position)} of the sampled record;
entry I{i} of the time index is C{(largest timestamp of the records before
it in this segment, offset)}, so the time index is non-decreasing even when
producers send timestamps out of order.  A lookup by timestamp takes the last
entry whose "largest before" is still below the target and scans forward from
there: no record before that point can match.

On disk (written when a segment is sealed or the store closes cleanly)::

    <base>.index      n x (i64 offset, i64 position), then the trailer
                      i64 last_offset, i64 log_size, i64 max_timestamp,
                      i64 record_count, u32 n, u32 crc32c(entries),
                      u32 crc32c(trailer so far)
    <base>.timeindex  n x (i64 max_timestamp_before, i64 offset), then
                      u32 n, u32 crc32c(entries)

An index that is missing, short, or fails a CRC is rebuilt from the log.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right

from crc32c import crc32c

__all__ = [
    "INDEX_SUFFIX",
    "NO_TIMESTAMP",
    "TIMEINDEX_SUFFIX",
    "TRAILER_SIZE",
    "SegmentIndex",
    "Trailer",
    "readTrailer",
]

INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
NO_TIMESTAMP = -(1 << 63)

_TRAILER = struct.Struct("<qqqqII")
_TRAILER_CRC = struct.Struct("<I")
TRAILER_SIZE = _TRAILER.size + _TRAILER_CRC.size
_TTRAILER = struct.Struct("<II")


class Trailer:
    """Summary of a sealed segment kept in memory for every segment."""

    __slots__ = ("lastOffset", "maxTimestamp", "recordCount", "size", "entryCount", "entriesCrc")

    def __init__(
        self,
        lastOffset: int,
        size: int,
        maxTimestamp: int,
        recordCount: int,
        entryCount: int,
        entriesCrc: int,
    ) -> None:
        self.lastOffset = lastOffset
        self.size = size
        self.maxTimestamp = maxTimestamp
        self.recordCount = recordCount
        self.entryCount = entryCount
        self.entriesCrc = entriesCrc


class SegmentIndex:
    """The in-memory sparse offset and time index of one segment."""

    __slots__ = ("offsets", "positions", "tsBefore")

    def __init__(self) -> None:
        self.offsets = array("q")
        self.positions = array("q")
        self.tsBefore = array("q")

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, position: int, maxTimestampBefore: int) -> None:
        """Sample one record."""
        self.offsets.append(offset)
        self.positions.append(position)
        self.tsBefore.append(maxTimestampBefore)

    def positionFor(self, offset: int) -> int:
        """File position of the last sampled record at or before C{offset} (0 if none)."""
        i = bisect_right(self.offsets, offset) - 1
        return self.positions[i] if i >= 0 else 0

    def positionForTimestamp(self, timestamp: int) -> int:
        """File position from which a scan finds the first record with a timestamp >= C{timestamp}."""
        i = bisect_left(self.tsBefore, timestamp) - 1
        return self.positions[i] if i >= 0 else 0

    def lastPosition(self) -> int:
        """Position of the last sampled record (where a tail scan can start)."""
        return self.positions[-1] if self.positions else 0

    def serialize(
        self, lastOffset: int, size: int, maxTimestamp: int, recordCount: int
    ) -> tuple[bytes, bytes]:
        """Return the bytes of the C{.index} and C{.timeindex} files."""
        entries = array("q")
        tentries = array("q")
        for i in range(len(self.offsets)):
            entries.append(self.offsets[i])
            entries.append(self.positions[i])
            tentries.append(self.tsBefore[i])
            tentries.append(self.offsets[i])
        raw = entries.tobytes()
        head = _TRAILER.pack(lastOffset, size, maxTimestamp, recordCount, len(self), crc32c(raw))
        traw = tentries.tobytes()
        return (
            raw + head + _TRAILER_CRC.pack(crc32c(head)),
            traw + _TTRAILER.pack(len(self), crc32c(traw)),
        )

    @classmethod
    def parse(cls, index: bytes, timeindex: bytes, trailer: Trailer) -> SegmentIndex | None:
        """Rebuild from file bytes; None when they are inconsistent or damaged."""
        n = trailer.entryCount
        if len(index) != n * 16 + TRAILER_SIZE or len(timeindex) != n * 16 + _TTRAILER.size:
            return None
        raw = index[: n * 16]
        traw = timeindex[: n * 16]
        tn, tcrc = _TTRAILER.unpack_from(timeindex, n * 16)
        if crc32c(raw) != trailer.entriesCrc or tn != n or crc32c(traw) != tcrc:
            return None
        entries = array("q")
        entries.frombytes(raw)
        tentries = array("q")
        tentries.frombytes(traw)
        self = cls()
        self.offsets = entries[0::2]
        self.positions = entries[1::2]
        self.tsBefore = tentries[0::2]
        if self.offsets != tentries[1::2]:
            return None
        return self


def readTrailer(tail: bytes, fileSize: int) -> Trailer | None:
    """
    Parse an C{.index} trailer; None if absent or damaged.

    @param tail: the last L{TRAILER_SIZE} bytes of the file (or fewer, if shorter).
    @param fileSize: the file's size, checked against the entry count.
    """
    if len(tail) != TRAILER_SIZE:
        return None
    head = tail[: _TRAILER.size]
    (crc,) = _TRAILER_CRC.unpack_from(tail, _TRAILER.size)
    if crc32c(head) != crc:
        return None
    lastOffset, size, maxTs, count, n, entriesCrc = _TRAILER.unpack(head)
    if fileSize != n * 16 + TRAILER_SIZE:
        return None
    return Trailer(lastOffset, size, maxTs, count, n, entriesCrc)
