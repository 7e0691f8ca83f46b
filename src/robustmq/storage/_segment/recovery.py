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
from robustmq.storage._segment.scan import ScanResult, scanSegment

__all__ = ["META_FILE", "Recovered", "recoverGroups", "recoverShard"]

META_FILE = "shard.json"
SWAP_SUFFIX = ".swap"
CLEANED_SUFFIX = ".cleaned"

LogEvent = tuple[str, str, dict[str, Any]]  # (level, format, fields)


class Recovered:
    """The result of recovering one shard directory."""

    __slots__ = ("log", "events", "newIndexes")

    def __init__(self, log: ShardLog | None) -> None:
        self.log = log
        self.events: list[LogEvent] = []
        #: (segment, index bytes, time index bytes) to write once serving
        self.newIndexes: list[Segment] = []


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
    seg.size = seg.visibleSize = scan.validEnd
    seg.lastOffset = scan.lastOffset
    seg.maxTimestamp = scan.maxTimestamp
    seg.recordCount = scan.recordCount
    seg.index = scan.index
    seg.sinceIndex = scan.sinceIndex if len(scan.index) else 1 << 62


def _loadIndex(seg: Segment, full: bool) -> bool:
    """Fill C{seg} from its index files; False if they are missing, damaged or stale."""
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
        rec.events.append(
            (
                "warn",
                "{directory}: finished an interrupted compaction of offsets {first}-{end}",
                {"first": first, "end": end},
            ),
        )


def recoverShard(
    directory: str, indexInterval: int, clean: bool, defaultConfig: dict[str, Any]
) -> Recovered:
    """
    Rebuild one shard from its directory.

    Sealed segments are trusted when their index trailer matches the log
    size (their full index is loaded lazily on first read); otherwise they are
    scanned and their index rebuilt.  The last segment is scanned in full
    unless the store was closed cleanly and its index matches; a torn or
    corrupt tail is truncated.  Compacted shards are always scanned in full
    to rebuild their key map.
    """
    meta = readMeta(directory)
    if meta is None:
        rec = Recovered(None)
        name = unescape(os.path.basename(directory))
        if name is None:
            rec.events.append(
                (
                    "error",
                    "{directory}: unreadable shard metadata and undecodable name; ignored",
                    {},
                ),
            )
            return rec
        meta = {"name": name, "config": dict(defaultConfig), "start_offset": 0}
        rec.events.append(
            (
                "error",
                "{directory}: unreadable shard metadata; recovered as {shard!r} with "
                "default config",
                {"shard": name},
            ),
        )
        with open(os.path.join(directory, META_FILE), "wb") as f:
            f.write(metaBytes(name, meta["config"], 0))
            os.fsync(f.fileno())
    config = meta["config"]
    log = ShardLog(meta["name"], directory, config)
    rec = Recovered(log)
    names = os.listdir(directory)
    if any(n.endswith((SWAP_SUFFIX, CLEANED_SUFFIX, ".tmp")) for n in names):
        _finishSwaps(directory, names, rec)
        names = os.listdir(directory)
    bases = sorted(int(n[: -len(LOG_SUFFIX)]) for n in names if n.endswith(LOG_SUFFIX))
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
    for i, base in enumerate(bases):
        seg = Segment(directory, base)
        last = i == len(bases) - 1
        trusted = not keyed and (clean or not last) and _loadIndex(seg, full=last)
        if not trusted:
            scan = scanSegment(seg.path, indexInterval, keyed)
            _fromScan(seg, scan)
            if scan.badFrameAt is not None:
                if scan.intactAfterBad:
                    rec.events.append(
                        (
                            "critical",
                            "{directory}: record at byte {position} of {segment} fails "
                            "its CRC but later records are intact; kept (reads of it will fail)",
                            {"position": scan.badFrameAt, "segment": os.path.basename(seg.path)},
                        ),
                    )
                else:
                    _truncate(seg.path, scan.validEnd)
                    rec.events.append(
                        (
                            "warn",
                            "{directory}: truncated torn/corrupt tail of {segment}: "
                            "{dropped} bytes after byte {position}",
                            {
                                "segment": os.path.basename(seg.path),
                                "dropped": scan.fileSize - scan.validEnd,
                                "position": scan.validEnd,
                            },
                        ),
                    )
            elif scan.fileSize != scan.validEnd:  # pragma: no cover - defensive
                _truncate(seg.path, scan.validEnd)
            if not last:
                seg.indexPersisted = False
                rec.newIndexes.append(seg)
                rec.events.append(
                    (
                        "info",
                        "{directory}: rebuilt the index of {segment}",
                        {"segment": os.path.basename(seg.path)},
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
    if keyed:
        assert log.keys is not None
        total = sum(s.recordCount for s in segments)
        log.deadRecords = max(0, total - len(log.keys))
    return rec


def recoverGroups(directory: str) -> tuple[dict[str, dict[str, tuple[int, bytes]]], list[LogEvent]]:
    """Load every consumer group's committed offsets from C{<data_dir>/groups}."""
    groups: dict[str, dict[str, tuple[int, bytes]]] = {}
    events: list[LogEvent] = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(".tmp"):
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
                    "error",
                    "unreadable group offsets file {file}: {error}; ignored",
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
