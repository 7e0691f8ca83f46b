"""
Scanning a segment file: validate every frame, rebuild the segment's index,
and find where valid data ends (recovery of a torn tail).
"""

from __future__ import annotations

import mmap
import os
import struct

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

__all__ = ["ScanResult", "scanSegment"]

_FULL = struct.Struct("<IIBqqiiH")
_MAGICS = (MAGIC, SPAN_MAGIC)


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
        "badFrameAt",
        "intactAfterBad",
    )

    def __init__(self) -> None:
        self.validEnd = 0
        self.fileSize = 0
        self.index = SegmentIndex()
        self.lastOffset = -1
        self.maxTimestamp = NO_TIMESTAMP
        self.recordCount = 0
        self.sinceIndex = 0
        #: for compacted shards: (key, offset, isTombstone) in log order
        self.keyEvents: list[tuple[bytes, int, bool]] | None = None
        #: position of the first frame that failed to validate, or None
        self.badFrameAt: int | None = None
        #: true when a damaged frame is followed by valid frames up to the end
        #: of the file: corruption in the middle, not a torn tail
        self.intactAfterBad = False


def scanSegment(path: str, indexInterval: int, wantKeys: bool) -> ScanResult:
    """
    Validate C{path} frame by frame from its start and rebuild its index.

    The scan stops at the first frame that is cut short, malformed or fails
    its CRC.  If that frame's length field is plausible and every frame after
    it up to the end of the file checks, the damage is in the middle of the
    log (bit rot, a stray write) rather than a torn tail: C{intactAfterBad}
    is then true and the scan carries on past it so the index covers the
    later records, while C{validEnd} stays at the damaged frame.
    """
    result = ScanResult()
    if wantKeys:
        result.keyEvents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        result.fileSize = size
        if size == 0:
            return result
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
            mv = memoryview(buf)
            try:
                _scan(buf, mv, size, indexInterval, result)
            finally:
                mv.release()
    finally:
        os.close(fd)
    return result


def _scan(buf: mmap.mmap, mv: memoryview, size: int, interval: int, r: ScanResult) -> None:
    unpack = _FULL.unpack_from
    index = r.index
    keyEvents = r.keyEvents
    pos = 0
    since = interval
    maxTs = NO_TIMESTAMP
    count = 0
    last = -1
    validEnd: int | None = None
    while pos < size:
        ok = False
        stop = pos
        if pos + FRAME_OVERHEAD <= size:
            blen, crc, magic, offset, ts, klen, vlen, _h = unpack(buf, pos)
            stop = pos + 8 + blen
            if BODY_SIZE <= blen <= MAX_BODY and magic in _MAGICS and stop <= size:
                ok = crc32c(mv[pos + 8 : stop]) == crc
                plausible = True
            else:
                plausible = False
        else:
            plausible = False
        if not ok:
            if validEnd is None:
                validEnd = pos
                r.badFrameAt = pos
                if plausible and _chainValid(buf, mv, stop, size):
                    r.intactAfterBad = True
                    pos = stop  # skip the damaged record, index the rest
                    continue
            break
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
    r.lastOffset = last
    r.maxTimestamp = maxTs
    r.recordCount = count
    r.sinceIndex = since
    if r.intactAfterBad:
        r.validEnd = size
    else:
        r.validEnd = pos if validEnd is None else validEnd


def _chainValid(buf: mmap.mmap, mv: memoryview, pos: int, size: int) -> bool:
    """True if frames from C{pos} check all the way to the end of the file."""
    unpack = _FULL.unpack_from
    if pos >= size:
        return False  # nothing after the damaged frame: treat it as a torn tail
    while pos < size:
        if pos + FRAME_OVERHEAD > size:
            return False
        blen, crc, magic = unpack(buf, pos)[:3]
        stop = pos + 8 + blen
        if not (BODY_SIZE <= blen <= MAX_BODY and magic in _MAGICS and stop <= size):
            return False
        if crc32c(mv[pos + 8 : stop]) != crc:
            return False
        pos = stop
    return True
