"""
Opening a data directory: rebuild every shard's in-memory state from disk.

Runs on the storage I/O thread before the store serves anything.  It never
logs directly (observers need not be thread-safe); it returns log events for
the store to emit on the reactor thread.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from robustmq.storage._segment.files import fsyncPath
from robustmq.storage._segment.index import (
    INDEX_SUFFIX,
    TIMEINDEX_SUFFIX,
    TRAILER_SIZE,
    SegmentIndex,
    readTrailer,
)
from robustmq.storage._segment.log import LOG_SUFFIX, Segment, ShardLog, segmentName
from robustmq.storage._segment.naming import unescape
from robustmq.storage._segment.scan import Damage, ScanResult, scanSegment

__all__ = ["META_FILE", "Recovered", "recoverGroups", "recoverShard"]

META_FILE = "shard.json"
SWAP_SUFFIX = ".swap"
CLEANED_SUFFIX = ".cleaned"

LogEvent = tuple[str, str, dict[str, Any]]  # (level, format, fields)


class Recovered:
    """The result of recovering one shard directory.

    @ivar repairs: one entry per repair or loss found, by kind (counted in
        C{/metrics} as C{robustmq_storage_recovery_events_total{kind}}):
        C{metadata_rebuilt}, C{torn_tail_truncated}, C{damaged_records},
        C{records_lost}, C{index_rebuilt}, C{compaction_completed}.
    @ivar lostOffsets: acknowledged offsets found missing or damaged.
    """

    __slots__ = ("log", "events", "newIndexes", "repairs", "lostOffsets")

    def __init__(self, log: ShardLog | None) -> None:
        self.log = log
        self.events: list[LogEvent] = []
        #: segments whose index files must be written once serving
        self.newIndexes: list[Segment] = []
        self.repairs: list[str] = []
        self.lostOffsets = 0

    def warn(self, kind: str, fmt: str, **fields: Any) -> None:
        """Record a repair or a loss: logged at warning, counted by C{kind}."""
        self.repairs.append(kind)
        self.events.append(("warn", fmt, fields))


def readMeta(directory: str) -> dict[str, Any] | None:
    """The parsed C{shard.json} of a shard directory, or None if unreadable."""
    try:
        with open(os.path.join(directory, META_FILE), "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    if not isinstance(meta.get("config"), dict):
        return None
    return meta


def metaBytes(name: str, config: dict[str, Any], startOffset: int) -> bytes:
    """Serialize a shard's metadata file."""
    return json.dumps(
        {"name": name, "config": config, "start_offset": startOffset}, sort_keys=True
    ).encode("utf-8")


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fromScan(seg: Segment, scan: ScanResult) -> None:
    seg.size = seg.visibleSize = scan.fileSize if scan.tail is None else scan.validEnd
    seg.lastOffset = scan.lastOffset
    seg.maxTimestamp = scan.maxTimestamp
    seg.recordCount = scan.recordCount
    seg.index = scan.index
    seg.sinceIndex = scan.sinceIndex if len(scan.index) else 1 << 62


def _loadIndex(seg: Segment, full: bool) -> bool:
    """Fill C{seg} from its index files; False if they are missing, damaged or stale
    (then the log is scanned and the index rebuilt)."""
    indexPath, timePath = seg.indexFiles()
    try:
        logSize = os.stat(seg.path).st_size
        with open(indexPath, "rb") as f:
            fileSize = os.fstat(f.fileno()).st_size
            if full:
                data = f.read()
                tail = data[-TRAILER_SIZE:]
            else:
                f.seek(max(0, fileSize - TRAILER_SIZE))
                tail = f.read()
                data = b""
        trailer = readTrailer(tail, fileSize)
        if trailer is None or trailer.size != logSize:
            return False
        index: SegmentIndex | None = None
        if full:
            with open(timePath, "rb") as f:
                index = SegmentIndex.parse(data, f.read(), trailer)
            if index is None:
                return False
    except OSError:
        return False
    seg.size = seg.visibleSize = trailer.size
    seg.lastOffset = trailer.lastOffset
    seg.maxTimestamp = trailer.maxTimestamp
    seg.recordCount = trailer.recordCount
    seg.index = index
    seg.indexPersisted = True
    if index is not None and len(index):
        seg.sinceIndex = trailer.size - index.lastPosition()
    return True


def _finishSwaps(directory: str, names: list[str], rec: Recovered) -> None:
    """Complete compactions that got as far as renaming their output to C{.swap}."""
    for name in names:
        if name.endswith(CLEANED_SUFFIX) or name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))
            rec.events.append(
                ("info", "{directory}: removed unfinished file {file}", {"file": name})
            )
    for name in names:
        if not name.endswith(SWAP_SUFFIX):
            continue
        try:
            first, end = (int(x) for x in name[: -len(SWAP_SUFFIX)].split("-"))
        except ValueError:
            continue
        for other in names:
            stem, dot, suffix = other.partition(".")
            if (
                dot
                and stem.isdigit()
                and first <= int(stem) < end
                and "." + suffix
                in (
                    LOG_SUFFIX,
                    INDEX_SUFFIX,
                    TIMEINDEX_SUFFIX,
                )
            ):
                try:
                    os.unlink(os.path.join(directory, other))
                except FileNotFoundError:
                    pass
        os.replace(
            os.path.join(directory, name),
            os.path.join(directory, segmentName(first) + LOG_SUFFIX),
        )
        fsyncPath(directory)
        rec.warn(
            "compaction_completed",
            "{directory}: finished an interrupted compaction of offsets {first}..{end}",
            first=first,
            end=end - 1,
        )


def _fillTail(damage: Damage, lastOffset: int) -> Damage:
    if damage.lastOffset is None:
        damage.lastOffset = lastOffset
    return damage


def recoverShard(
    directory: str,
    indexInterval: int,
    clean: bool,
    defaultConfig: dict[str, Any],
    checkpoint: dict[str, dict[str, Any]] | None = None,
) -> Recovered:
    """
    Rebuild one shard from its directory.

    Sealed segments are trusted when their index trailer matches the log
    size (their full index is loaded lazily on first read); otherwise they are
    scanned and their index rebuilt.  The last segment is scanned in full
    unless the store was closed cleanly and its index matches; a torn tail is
    truncated.  Compacted shards are always scanned in full to rebuild their
    key map.  Damaged records are isolated (see L{scanSegment}), never a
    reason to drop the records after them.

    Every repair and every loss is a warning event naming the shard, the
    range and what was done (L{Recovered.warn}); C{checkpoint} (the entries of
    L{robustmq.storage._segment.checkpoint}) tells which acknowledged offsets
    a shard must still have, and its config when C{shard.json} is lost.
    """
    checkpoint = checkpoint or {}
    meta = readMeta(directory)
    rebuilt = False
    if meta is None:
        rec = Recovered(None)
        name = unescape(os.path.basename(directory))
        if name is None:
            rec.warn(
                "metadata_rebuilt",
                "{directory}: unreadable shard metadata and undecodable name; ignored",
            )
            return rec
        saved = checkpoint.get(name)
        if saved is not None:
            config, start, source = dict(saved["config"]), saved["start"], "the checkpoint"
        else:
            config, start, source = dict(defaultConfig), 0, "defaults (no checkpoint entry)"
        meta = {"name": name, "config": config, "start_offset": start}
        with open(os.path.join(directory, META_FILE), "wb") as f:
            f.write(metaBytes(name, config, start))
            os.fsync(f.fileno())
        rebuilt = True
        metaEvent = (name, source, start)
    config = meta["config"]
    log = ShardLog(meta["name"], directory, config)
    rec = Recovered(log)
    if rebuilt:
        name, source, start = metaEvent
        rec.warn(
            "metadata_rebuilt",
            "shard {shard!r} ({directory}): unreadable shard.json; rewritten with the config "
            "and start offset {start} from {source}",
            shard=name,
            start=start,
            source=source,
        )
    names = os.listdir(directory)
    if any(n.endswith((SWAP_SUFFIX, CLEANED_SUFFIX, ".tmp")) for n in names):
        _finishSwaps(directory, names, rec)
        names = os.listdir(directory)
    bases = sorted(
        int(n[: -len(LOG_SUFFIX)])
        for n in names
        if n.endswith(LOG_SUFFIX) and n[: -len(LOG_SUFFIX)].isdigit()
    )
    baseSet = set(bases)
    for n in names:
        if n.endswith((INDEX_SUFFIX, TIMEINDEX_SUFFIX)):
            stem = n.partition(".")[0]
            if not stem.isdigit() or int(stem) not in baseSet:
                os.unlink(os.path.join(directory, n))
    startOffset = int(meta.get("start_offset", 0))
    if not bases:
        seg = Segment(directory, startOffset)
        open(seg.path, "ab").close()
        bases = [startOffset]
        rec.events.append(("warn", "{directory}: no segment files; started an empty log", {}))
    keyed = log.keys is not None
    segments = []
    nextOffset = 0
    shard = log.name
    for i, base in enumerate(bases):
        seg = Segment(directory, base)
        last = i == len(bases) - 1
        nextBase = None if last else bases[i + 1]
        trusted = not keyed and (clean or not last) and _loadIndex(seg, full=last)
        if not trusted:
            scan = scanSegment(seg.path, indexInterval, keyed, base)
            _fromScan(seg, scan)
            segName = os.path.basename(seg.path)
            damage = {d.start: d for d in scan.damaged}
            for d in scan.damaged:
                rec.lostOffsets += max(0, (d.lastOffset or 0) - d.firstOffset + 1)
                rec.warn(
                    "damaged_records",
                    "shard {shard!r}: offsets {first}..{last} of {segment} (bytes {start}..{end}) "
                    "are damaged; kept in place, the records around them are served",
                    shard=shard,
                    first=d.firstOffset,
                    last=d.lastOffset,
                    segment=segName,
                    start=d.start,
                    end=d.end,
                )
            tail = scan.tail
            if tail is not None and last:
                _truncate(seg.path, scan.validEnd)
                rec.warn(
                    "torn_tail_truncated",
                    "shard {shard!r}: truncated the torn or damaged tail of {segment}: "
                    "{dropped} bytes after byte {position}, from offset {first} on",
                    shard=shard,
                    segment=segName,
                    dropped=scan.fileSize - scan.validEnd,
                    position=scan.validEnd,
                    first=tail.firstOffset,
                )
            elif not last and nextBase is not None and not keyed:
                # a sealed segment of a plain shard ends right before the next one starts
                expected = nextBase - 1
                if tail is not None or seg.lastOffset < expected:
                    first = max(seg.lastOffset + 1, base)
                    if tail is not None:
                        seg.size = seg.visibleSize = scan.fileSize
                        damage[tail.start] = _fillTail(tail, expected)
                    rec.lostOffsets += max(0, expected - first + 1)
                    rec.warn(
                        "records_lost",
                        "shard {shard!r}: offsets {first}..{last} of sealed segment {segment} "
                        "are missing or damaged ({size} bytes, {valid} valid); kept what is "
                        "left, reads skip or report the range",
                        shard=shard,
                        first=first,
                        last=expected,
                        segment=segName,
                        size=scan.fileSize,
                        valid=scan.validEnd,
                    )
                    if seg.lastOffset < 0:
                        seg.lastOffset = expected
            elif tail is not None:  # a sealed segment of a compacted shard
                seg.size = seg.visibleSize = scan.fileSize
                damage[tail.start] = _fillTail(tail, (nextBase or base) - 1)
                rec.warn(
                    "damaged_records",
                    "shard {shard!r}: the tail of {segment} after byte {start} is damaged; "
                    "kept in place",
                    shard=shard,
                    segment=segName,
                    start=tail.start,
                )
            seg.damage = damage
            if not last:
                seg.indexPersisted = False
                rec.newIndexes.append(seg)
                rec.repairs.append("index_rebuilt")
                rec.events.append(
                    (
                        "warn" if clean else "info",
                        "shard {shard!r}: rebuilt the index of {segment}",
                        {"shard": shard, "segment": segName},
                    ),
                )
            if scan.keyEvents:
                log.applyKeys(scan.keyEvents)
        if seg.lastOffset >= 0:
            nextOffset = max(nextOffset, seg.lastOffset + 1)
        nextOffset = max(nextOffset, base if last else 0)
        segments.append(seg)
    active = segments[-1]
    if active.index is None:  # pragma: no cover - _loadIndex(full=True) always sets it
        active.index = SegmentIndex()
    active.indexPersisted = False
    for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
        try:  # the active segment's index files go stale with the next append
            os.unlink(active.stem + suffix)
        except FileNotFoundError:
            pass
    log.setSegments(segments)
    log.nextOffset = log.visibleNext = max(nextOffset, startOffset)
    log.startOffset = max(startOffset, segments[0].base)
    saved = checkpoint.get(shard)
    if saved is not None and saved["next"] > log.nextOffset:
        # acknowledged, durable records that are gone: an emptied or cut segment
        first, lastLost = log.nextOffset, saved["next"] - 1
        rec.lostOffsets += lastLost - first + 1
        rec.warn(
            "records_lost",
            "shard {shard!r}: offsets {first}..{last} were durable at the last checkpoint but "
            "are not on disk (segment files emptied or cut); the log goes on from {first}",
            shard=shard,
            first=first,
            last=lastLost,
        )
    if keyed:
        assert log.keys is not None
        total = sum(s.recordCount for s in segments)
        log.deadRecords = max(0, total - len(log.keys))
    return rec


def recoverGroups(
    directory: str, readOnly: bool = False
) -> tuple[dict[str, dict[str, tuple[int, bytes]]], list[LogEvent]]:
    """Load every consumer group's committed offsets from C{<data_dir>/groups}.

    @param readOnly: leave stray temporary files alone (an offline check).
    """
    groups: dict[str, dict[str, tuple[int, bytes]]] = {}
    events: list[LogEvent] = []
    if not os.path.isdir(directory):
        return groups, events
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(".tmp"):
            if not readOnly:
                os.unlink(path)
            continue
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            offsets = {
                shard: (int(v[0]), base64.b64decode(v[1])) for shard, v in doc["offsets"].items()
            }
            groups[str(doc["group"])] = offsets
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            events.append(
                (
                    "warn",
                    "unreadable group offsets file {file}: {error}; ignored (the group's "
                    "committed offsets are lost)",
                    {"file": path, "error": str(e)},
                ),
            )
    return groups, events


def groupBytes(group: str, offsets: dict[str, tuple[int, bytes]]) -> bytes:
    """Serialize one consumer group's offsets file."""
    return json.dumps(
        {
            "group": group,
            "offsets": {
                s: [o, base64.b64encode(m).decode("ascii")] for s, (o, m) in offsets.items()
            },
        },
        sort_keys=True,
    ).encode("utf-8")
