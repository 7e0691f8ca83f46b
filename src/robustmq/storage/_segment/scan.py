"""
Scanning a segment file: validate every frame, rebuild the segment's index,
find where valid data ends (recovery of a torn tail), and isolate damaged
records (bit rot, a stray write, a hole left by a power loss).

A frame that fails its CRC, or whose header cannot be right, is not the end
of the log: the scanner looks for the next valid frame after it (see
L{findNextFrame}) and carries on from there, so the records after the damage
stay readable.  What lies between is a L{Damage}: a byte range of the file
and the offsets it held.  Damage with no valid frame after it, up to the end
of the file, is the file's I{tail} (a torn write at a crash, or damage at the
very end).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from typing import Any

from crc32c import crc32c

from robustmq.storage._segment.frame import (
    BODY_SIZE,
    FRAME_OVERHEAD,
    MAGIC,
    MAX_BODY,
    SPAN,
    SPAN_MAGIC,
)
from robustmq.storage._segment.index import NO_TIMESTAMP, SegmentIndex

__all__ = ["Damage", "ScanResult", "findNextFrame", "scanSegment"]

_FULL = struct.Struct("<IIBqqiiH")
_HEAD = struct.Struct("<IIBq")
_MAGICS = (MAGIC, SPAN_MAGIC)
#: a valid frame has its magic byte 8 bytes after its start: candidates for a resync
_MAGIC_BYTE = re.compile(rb"[\x01\x02]")


class Damage:
    """
    Damaged bytes of one segment file and the offsets they held.

    @ivar start: file position of the first damaged byte (where a frame should start).
    @ivar end: file position of the next valid frame (or the end of the scanned data).
    @ivar firstOffset: the first offset the damaged bytes held: one past the
        last offset of the valid frame before them.
    @ivar lastOffset: the last offset they held: one before the next valid
        frame's offset; None when no valid frame follows in this file (the
        caller knows the next segment's base, or the last offset assigned).
    """

    __slots__ = ("start", "end", "firstOffset", "lastOffset")

    def __init__(self, start: int, end: int, firstOffset: int, lastOffset: int | None) -> None:
        self.start = start
        self.end = end
        self.firstOffset = firstOffset
        self.lastOffset = lastOffset

    def __repr__(self) -> str:
        return (
            f"Damage(bytes {self.start}..{self.end}, offsets {self.firstOffset}..{self.lastOffset})"
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (for C{robustmq ctl storage check})."""
        return {
            "start_byte": self.start,
            "end_byte": self.end,
            "first_offset": self.firstOffset,
            "last_offset": self.lastOffset,
        }


class ScanResult:
    """What a scan of one segment file found."""

    __slots__ = (
        "validEnd",
        "fileSize",
        "index",
        "lastOffset",
        "maxTimestamp",
        "recordCount",
        "sinceIndex",
        "keyEvents",
        "damaged",
        "tail",
    )

    def __init__(self) -> None:
        #: position after the last valid frame (where a torn tail starts)
        self.validEnd = 0
        self.fileSize = 0
        self.index = SegmentIndex()
        self.lastOffset = -1
        self.maxTimestamp = NO_TIMESTAMP
        self.recordCount = 0
        self.sinceIndex = 0
        #: for compacted shards: (key, offset, isTombstone) in log order
        self.keyEvents: list[tuple[bytes, int, bool]] | None = None
        #: damage followed by valid frames, in file order
        self.damaged: list[Damage] = []
        #: damage (or a torn write) after the last valid frame, or None
        self.tail: Damage | None = None


def findNextFrame(buf: Any, mv: memoryview, start: int, end: int, afterOffset: int) -> int | None:
    """
    The position of the first valid frame at or after C{start} (before C{end})
    whose offset is above C{afterOffset}, or None.

    Candidates are the positions 8 bytes before a byte that can be a magic
    (found at C speed, so runs of zeros cost nothing); each is checked for a
    plausible length and its CRC32C.  A false match needs a 32-bit CRC to
    agree by chance on top of a plausible header and a rising offset.
    """
    unpack = _HEAD.unpack_from
    for m in _MAGIC_BYTE.finditer(buf, start + 8, end):
        q = m.start() - 8
        if q + FRAME_OVERHEAD > end:
            return None
        blen, crc, magic, offset = unpack(buf, q)
        stop = q + 8 + blen
        if blen < BODY_SIZE or blen > MAX_BODY or stop > end or offset <= afterOffset:
            continue
        if magic == SPAN_MAGIC and blen < BODY_SIZE + SPAN.size:
            continue
        if crc32c(mv[q + 8 : stop]) == crc:
            return q
    return None


def scanSegment(
    path: str, indexInterval: int, wantKeys: bool, base: int = 0, limit: int | None = None
) -> ScanResult:
    """
    Validate C{path} frame by frame from its start and rebuild its index.

    Damaged bytes are stepped over to the next valid frame (L{findNextFrame})
    and reported in C{damaged}; damage with nothing valid after it is the
    C{tail}.  C{validEnd} is the end of the last valid frame.

    @param base: the segment's first offset (offsets of damage at its start).
    @param limit: scan only the first C{limit} bytes (the acknowledged part of
        an active segment); None: the whole file.
    """
    result = ScanResult()
    if wantKeys:
        result.keyEvents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if limit is not None:
            size = min(size, limit)
        result.fileSize = size
        if size == 0:
            return result
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
            mv = memoryview(buf)
            try:
                _scan(buf, mv, size, indexInterval, base, result)
            finally:
                mv.release()
    finally:
        os.close(fd)
    return result


def _scan(
    buf: mmap.mmap, mv: memoryview, size: int, interval: int, base: int, r: ScanResult
) -> None:
    unpack = _FULL.unpack_from
    index = r.index
    keyEvents = r.keyEvents
    pos = 0
    since = interval
    maxTs = NO_TIMESTAMP
    count = 0
    last = base - 1
    validEnd = 0
    while pos < size:
        ok = False
        if pos + FRAME_OVERHEAD <= size:
            blen, crc, magic, offset, ts, klen, vlen, _h = unpack(buf, pos)
            stop = pos + 8 + blen
            if (
                BODY_SIZE <= blen <= MAX_BODY
                and magic in _MAGICS
                and stop <= size
                and offset > last
                and not (magic == SPAN_MAGIC and blen < BODY_SIZE + SPAN.size)
            ):
                ok = crc32c(mv[pos + 8 : stop]) == crc
        if not ok:
            nxt = findNextFrame(buf, mv, pos + 1, size, last)
            if nxt is None:
                r.tail = Damage(pos, size, last + 1, None)
                break
            nextOffset = _HEAD.unpack_from(buf, nxt)[3]
            r.damaged.append(Damage(pos, nxt, last + 1, nextOffset - 1))
            pos = nxt
            since = interval  # index the first record after the damage
            continue
        if since >= interval:
            index.add(offset, pos, maxTs)
            since = 0
        if keyEvents is not None and klen >= 0:
            p = pos + FRAME_OVERHEAD
            keyEvents.append((bytes(mv[p : p + klen]), offset, vlen < 0))
        since += stop - pos
        if ts > maxTs:
            maxTs = ts
        count += 1
        # the last offset the record occupies (a span record covers several)
        last = (
            offset + SPAN.unpack_from(buf, pos + FRAME_OVERHEAD)[0] - 1
            if magic == SPAN_MAGIC
            else offset
        )
        pos = stop
        validEnd = pos
    r.lastOffset = last if count else -1
    r.maxTimestamp = maxTs
    r.recordCount = count
    r.sinceIndex = since
    r.validEnd = validEnd
