"""
Compaction of keyed shards: rewrite sealed segments keeping only the latest
record of each live key.

Runs on the storage I/O thread.  The output goes to
C{<first>-<end>.cleaned}, is fsynced, renamed to C{<first>-<end>.swap} (the
commit point: recovery finishes a swap it finds, and deletes a C{.cleaned}
one), the old segments C{[first, end)} are deleted and the swap file becomes
C{<first>.log}.  Frames are copied verbatim, so offsets and CRCs are kept;
tombstones are dropped (with every older value of their key).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence

from crc32c import crc32c

from robustmq.storage._segment.files import HandleCache, fsyncPath, writeAll
from robustmq.storage._segment.frame import BODY_SIZE, FRAME_OVERHEAD, MAGIC, MAX_BODY
from robustmq.storage._segment.index import (
    INDEX_SUFFIX,
    NO_TIMESTAMP,
    TIMEINDEX_SUFFIX,
    SegmentIndex,
)
from robustmq.storage._segment.log import LOG_SUFFIX, segmentName
from robustmq.storage.errors import CorruptRecordError

__all__ = ["CompactionResult", "compactSegments"]

_FULL = struct.Struct("<IIBqqiiH")
_FLUSH = 1 << 20


class CompactionResult:
    """The single segment that replaced the compacted ones."""

    __slots__ = ("base", "size", "lastOffset", "maxTimestamp", "recordCount", "index", "dropped")

    def __init__(self, base: int) -> None:
        self.base = base
        self.size = 0
        self.lastOffset = -1
        self.maxTimestamp = NO_TIMESTAMP
        self.recordCount = 0
        self.index = SegmentIndex()
        self.dropped = 0


def compactSegments(
    directory: str,
    paths: Sequence[str],
    first: int,
    end: int,
    live: dict[bytes, int],
    indexInterval: int,
    handles: HandleCache,
) -> CompactionResult:
    """
    Rewrite the segment files C{paths} (offsets C{[first, end)}) into one.

    @param live: snapshot of the key map: key -> offset of its latest value.
    @param handles: the I/O thread's write-handle cache (old files are closed).
    """
    result = CompactionResult(first)
    stem = os.path.join(directory, f"{segmentName(first)}-{segmentName(end)}")
    cleaned = stem + ".cleaned"
    out = os.open(cleaned, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pending: list[bytes] = []
    pendingBytes = 0
    pos = 0
    since = 1 << 62
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if not size:
                    continue
                with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
                    mv = memoryview(buf)
                    try:
                        p = 0
                        while p < size:
                            blen, crc, magic, offset, ts, klen, vlen, _h = _FULL.unpack_from(buf, p)
                            stop = p + 8 + blen
                            if (
                                not (BODY_SIZE <= blen <= MAX_BODY and magic == MAGIC)
                                or stop > size
                            ):
                                raise CorruptRecordError(f"{path}: bad frame at byte {p}")
                            if crc32c(mv[p + 8 : stop]) != crc:
                                raise CorruptRecordError(f"{path}: CRC mismatch at byte {p}")
                            k = p + FRAME_OVERHEAD
                            key = bytes(mv[k : k + klen]) if klen >= 0 else None
                            if vlen >= 0 and key is not None and live.get(key) == offset:
                                if since >= indexInterval:
                                    result.index.add(offset, pos, result.maxTimestamp)
                                    since = 0
                                frame = bytes(mv[p:stop])
                                pending.append(frame)
                                pendingBytes += len(frame)
                                pos += len(frame)
                                since += len(frame)
                                result.recordCount += 1
                                result.lastOffset = offset
                                if ts > result.maxTimestamp:
                                    result.maxTimestamp = ts
                                if pendingBytes >= _FLUSH:
                                    writeAll(out, b"".join(pending))
                                    pending.clear()
                                    pendingBytes = 0
                            else:
                                result.dropped += 1
                            p = stop
                    finally:
                        mv.release()
            finally:
                os.close(fd)
        writeAll(out, b"".join(pending))
        os.fsync(out)
    finally:
        os.close(out)
    result.size = pos
    swap = stem + ".swap"
    os.replace(cleaned, swap)
    fsyncPath(directory)  # the commit point
    for path in paths:
        handles.drop(path)
        base = path[: -len(LOG_SUFFIX)]
        for p in (path, base + INDEX_SUFFIX, base + TIMEINDEX_SUFFIX):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    target = os.path.join(directory, segmentName(first))
    os.replace(swap, target + LOG_SUFFIX)
    index, timeindex = result.index.serialize(
        result.lastOffset, result.size, result.maxTimestamp, result.recordCount
    )
    for suffix, data in ((INDEX_SUFFIX, index), (TIMEINDEX_SUFFIX, timeindex)):
        fd = os.open(target + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            writeAll(fd, data)
        finally:
            os.close(fd)
    fsyncPath(directory)
    return result
