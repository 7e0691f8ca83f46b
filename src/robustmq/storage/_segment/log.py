"""
The reactor-side state of one shard's log: its segments, offsets, key map,
and the fused encoder of the append path.

File I/O is not done here: the encoder returns the bytes to append and the
store hands them to its I/O thread.  Reads call back into the store for a
file descriptor (see L{ShardLog.read}).
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from crc32c import crc32c

from robustmq.storage._segment.frame import (
    BODY_SIZE,
    FRAME_OVERHEAD,
    MAX_BODY,
    decodeRecords,
    encodeHeaders,
    findTimestamp,
    frameLengthAt,
)
from robustmq.storage._segment.index import (
    INDEX_SUFFIX,
    NO_TIMESTAMP,
    TIMEINDEX_SUFFIX,
    SegmentIndex,
)
from robustmq.storage._segment.scan import Damage
from robustmq.storage.errors import CorruptRecordError

__all__ = ["LOG_SUFFIX", "DamageLocator", "Segment", "ShardLog", "segmentName"]

#: what a read calls when it meets a damaged frame: (log, segment number,
#: position) -> the L{Damage} starting there, its offsets filled in
DamageLocator = Callable[["ShardLog", int, int], Damage]

LOG_SUFFIX = ".log"
_READ_AHEAD = 64 * 1024

_PREFIX = struct.Struct("<II").pack
_BODY = struct.Struct("<BqqiiH").pack
_SPAN_BODY = struct.Struct("<BqqiiHI").pack  # magic 2: the fixed body, then the span


def segmentName(base: int) -> str:
    """File name stem of the segment whose first offset is C{base}."""
    return f"{base:020d}"


class Segment:
    """One segment file of a shard: its extent, summary and (maybe loaded) index."""

    __slots__ = (
        "base",
        "path",
        "size",
        "visibleSize",
        "lastOffset",
        "maxTimestamp",
        "recordCount",
        "index",
        "sinceIndex",
        "indexPersisted",
        "damage",
    )

    def __init__(self, directory: str, base: int) -> None:
        self.base = base
        self.path = os.path.join(directory, segmentName(base) + LOG_SUFFIX)
        self.size = 0  # bytes assigned (written or queued)
        self.visibleSize = 0  # bytes acknowledged: readable
        self.lastOffset = -1
        self.maxTimestamp = NO_TIMESTAMP
        self.recordCount = 0
        self.index: SegmentIndex | None = SegmentIndex()
        self.sinceIndex = 1 << 62  # sample the first record
        self.indexPersisted = False
        #: damaged byte ranges by start position, once the file has been scanned
        #: for damage (None: not scanned since it was opened)
        self.damage: dict[int, Damage] | None = None

    @property
    def stem(self) -> str:
        """Path without the C{.log} suffix (for the index files)."""
        return self.path[: -len(LOG_SUFFIX)]

    def indexFiles(self) -> tuple[str, str]:
        """Paths of this segment's offset index and time index."""
        stem = self.stem
        return stem + INDEX_SUFFIX, stem + TIMEINDEX_SUFFIX

    def serializeIndex(self) -> tuple[bytes, bytes]:
        """Bytes of the index files describing the segment as assigned now."""
        assert self.index is not None
        return self.index.serialize(self.lastOffset, self.size, self.maxTimestamp, self.recordCount)


class ShardLog:
    """
    One shard on the reactor thread: ordered segments, offsets and key map.

    C{nextOffset} is the next offset to assign; C{visibleNext} is one past the
    last acknowledged offset (records become readable when their append's
    Deferred fires).
    """

    __slots__ = (
        "name",
        "directory",
        "config",
        "segments",
        "bases",
        "nextOffset",
        "visibleNext",
        "startOffset",
        "keys",
        "deadRecords",
        "compacting",
        "deleted",
    )

    def __init__(self, name: str, directory: str, config: dict[str, Any]) -> None:
        self.name = name
        self.directory = directory
        self.config = config
        self.segments: list[Segment] = []
        self.bases: list[int] = []
        self.nextOffset = 0
        self.visibleNext = 0
        self.startOffset = 0
        self.keys: dict[bytes, int] | None = {} if config.get("compacted") else None
        self.deadRecords = 0
        self.compacting = False
        self.deleted = False

    @property
    def active(self) -> Segment:
        """The segment appends go to."""
        return self.segments[-1]

    def addSegment(self, segment: Segment) -> None:
        """Attach C{segment} after the current ones."""
        self.segments.append(segment)
        self.bases.append(segment.base)

    def setSegments(self, segments: list[Segment]) -> None:
        """Replace the segment list (recovery, retention, compaction)."""
        self.segments = segments
        self.bases = [s.base for s in segments]

    def totalBytes(self) -> int:
        """Bytes of all segments."""
        return sum(s.size for s in self.segments)

    # -- the append path -------------------------------------------------

    def encode(
        self,
        records: Sequence[dict[str, Any]],
        now: int,
        segmentBytes: int,
        indexInterval: int,
        span: int = 1,
    ) -> tuple[list[tuple[Segment, list[bytes]]], list[Segment]]:
        """
        Frame C{records} at the next offsets and update the shard's state.

        With C{span > 1} each record occupies C{span} offsets (a magic 2
        frame, see L{robustmq.storage._segment.frame}).

        Bytes are gathered as a list of small C{bytes} per segment (frame
        prefix, fixed body, key, value) so a whole group commit costs one
        C{bytes.join} per file; profiling showed this beats packing into a
        preallocated C{bytearray} and checksumming C{memoryview} slices.
        No state changes unless every record encodes.

        @return: C{(chunks, rolled)}: the bytes to append per segment in
            order, and the segments that were sealed by rolling.
        """
        seg = self.segments[-1]
        offset = self.nextOffset
        pos = seg.size
        since = seg.sinceIndex
        maxTs = seg.maxTimestamp
        count = 0
        parts: list[bytes] = []
        ap = parts.append
        # per segment touched: [segment, parts, endPos, maxTs, count, lastOffset, since, points]
        points: list[tuple[int, int, int]] = []
        touched: list[list[Any]] = []
        newSegments: list[Segment] = []
        keys = self.keys
        keyed: list[tuple[bytes, int, bool]] | None = [] if keys is not None else None
        directory = self.directory
        for r in records:
            k = r.get("key")
            v = r.get("value")
            ts = r.get("timestamp")
            if ts is None:
                ts = now
            h = r.get("headers")
            kl = -1 if k is None else len(k)
            vl = -1 if v is None else len(v)
            hb = encodeHeaders(h) if h else None
            if span > 1:
                body = _SPAN_BODY(2, offset, ts, kl, vl, len(h) if h else 0, span)
                n = 31
            else:
                body = _BODY(1, offset, ts, kl, vl, len(h) if h else 0)
                n = 27
            crc = crc32c(body)
            if kl > 0:
                crc = crc32c(k, crc)
                n += kl
            if vl > 0:
                crc = crc32c(v, crc)
                n += vl
            if hb:
                crc = crc32c(hb, crc)
                n += len(hb)
            if n > MAX_BODY:
                raise ValueError(f"record of {n} bytes exceeds the {MAX_BODY}-byte limit")
            size = n + 8
            if pos and pos + size > segmentBytes:
                touched.append([seg, parts, pos, maxTs, count, offset - 1, since, points])
                seg = Segment(directory, offset)
                newSegments.append(seg)
                parts = []
                ap = parts.append
                points = []
                pos = 0
                since = 1 << 62
                maxTs = NO_TIMESTAMP
                count = 0
            if since >= indexInterval:
                points.append((offset, pos, maxTs))
                since = 0
            ap(_PREFIX(n, crc))
            ap(body)
            if kl > 0:
                ap(k)
            if vl > 0:
                ap(v)
            if hb:
                ap(hb)
            if keyed is not None and k is not None:
                keyed.append((bytes(k), offset, v is None))
            pos += size
            since += size
            if ts > maxTs:
                maxTs = ts
            count += 1
            offset += span
        touched.append([seg, parts, pos, maxTs, count, offset - 1, since, points])
        # -- commit the new state (nothing above can have changed it) --
        rolled: list[Segment] = []
        for s in newSegments:
            rolled.append(self.segments[-1])
            self.addSegment(s)
        chunks: list[tuple[Segment, list[bytes]]] = []
        for s, p, end, mts, cnt, last, snc, pts in touched:
            if not cnt:
                continue
            s.size = end
            s.maxTimestamp = mts
            s.recordCount += cnt
            s.lastOffset = last
            s.sinceIndex = snc
            idx = s.index
            assert idx is not None
            for o, ps, t in pts:
                idx.add(o, ps, t)
            chunks.append((s, p))
        self.nextOffset = offset
        if keyed:
            self.applyKeys(keyed)
        return chunks, rolled

    def applyKeys(self, events: list[tuple[bytes, int, bool]]) -> None:
        """Update the key map of a compacted shard with C{(key, offset, tombstone)}s."""
        keys = self.keys
        assert keys is not None
        dead = 0
        for key, offset, tombstone in events:
            if key in keys:
                dead += 1
            if tombstone:
                dead += 1
                keys.pop(key, None)
            else:
                keys[key] = offset
        self.deadRecords += dead

    # -- the read path ---------------------------------------------------

    def segmentFor(self, offset: int) -> int:
        """Index in C{segments} of the segment that would hold C{offset}."""
        return max(0, bisect_right(self.bases, offset) - 1)

    def read(
        self,
        offset: int,
        maxRecords: int,
        maxBytes: int,
        fdFor: Callable[[str], int],
        indexFor: Callable[[Segment], SegmentIndex],
        damageAt: DamageLocator,
        skip: bool = False,
    ) -> list[dict[str, Any]]:
        """
        Read acknowledged records from C{offset} (see L{IShardStore.read}).

        A damaged record is isolated: the records before it are returned;
        a read that starts on it raises L{CorruptRecordError} naming the
        damaged offsets, or, with C{skip}, steps over it.  Damage wholly
        below C{offset} is always stepped over.
        """
        out: list[dict[str, Any]] = []
        if maxRecords <= 0:
            return out
        offset = max(offset, self.startOffset)
        if offset >= self.visibleNext:
            return out
        used = 0
        segments = self.segments
        for i in range(self.segmentFor(offset), len(segments)):
            seg = segments[i]
            limit = seg.visibleSize
            pos = indexFor(seg).positionFor(offset) if offset > seg.base else 0
            while pos < limit:
                data = _readFrames(fdFor(seg.path), pos, limit, max(maxBytes - used, 0))
                consumed, got, done, bad = decodeRecords(
                    data, 0, len(data), offset, maxRecords, maxBytes - used, out
                )
                used += got
                if done:
                    return out
                pos += consumed
                if not bad and consumed:
                    continue
                damage = damageAt(self, i, pos)
                assert damage.lastOffset is not None and damage.end > pos
                if damage.lastOffset >= offset and not skip:
                    if out:
                        return out  # hand back what precedes the damage
                    raise CorruptRecordError(
                        f"shard {self.name!r}: offsets {damage.firstOffset}..{damage.lastOffset} "
                        f"are damaged ({os.path.basename(seg.path)}, bytes "
                        f"{damage.start}..{damage.end})",
                        self.name,
                        damage.firstOffset,
                        damage.lastOffset,
                    )
                pos = damage.end
        return out

    def offsetForTimestamp(
        self,
        timestamp: int,
        fdFor: Callable[[str], int],
        indexFor: Callable[[Segment], SegmentIndex],
        damageAt: DamageLocator,
    ) -> int | None:
        """First acknowledged offset whose timestamp is >= C{timestamp}, or None.

        Damaged records are stepped over (their timestamps are unknown).
        """
        for i, seg in enumerate(self.segments):
            if seg.maxTimestamp < timestamp or seg.lastOffset < self.startOffset:
                continue
            limit = seg.visibleSize
            pos = indexFor(seg).positionForTimestamp(timestamp)
            while pos < limit:
                data = _readFrames(fdFor(seg.path), pos, limit, _READ_AHEAD)
                found, consumed, bad = findTimestamp(
                    data, 0, len(data), timestamp, self.startOffset
                )
                if found is not None:
                    return found if found < self.visibleNext else None
                pos += consumed
                if bad or not consumed:
                    pos = damageAt(self, i, pos).end
        return None


def _readFrames(fd: int, pos: int, limit: int, want: int) -> bytes:
    """Read from C{pos} enough bytes to hold at least one whole frame (up to C{limit}).

    A frame whose length field cannot be right is returned as read: the
    decoder reports it as damaged.
    """
    n = min(limit - pos, max(want, 0) + _READ_AHEAD)
    data = os.pread(fd, n, pos)
    length = frameLengthAt(data, 0, len(data))
    if length is None and len(data) >= FRAME_OVERHEAD:
        # a frame larger than what we read: fetch it whole, if it can be whole
        blen = struct.unpack_from("<I", data, 0)[0]
        if BODY_SIZE <= blen <= MAX_BODY and pos + 8 + blen <= limit and 8 + blen > len(data):
            data = os.pread(fd, 8 + blen, pos)
    return data
