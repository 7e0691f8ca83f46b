"""
Verifying a segment store: every frame's CRC, every gap, every index.

Two ways in, one report:

  - offline, on a data directory no node has open
    (C{robustmq ctl storage check --data-dir DIR}): L{checkDataDir};
  - online, through a running node's admin API
    (C{GET /api/v1/storage/check}, C{robustmq ctl storage check}):
    L{robustmq.storage.segment.SegmentShardStore.check}, which runs
    L{checkShards} on the store's I/O thread over the acknowledged bytes.

Neither changes anything on disk.  The report::

    {"data_dir": ..., "shards": n, "segments": n, "bytes": n, "records": n,
     "damaged": [{"shard", "segment", "start_byte", "end_byte",
                  "first_offset", "last_offset"}, ...],
     "problems": [{"shard", "kind", "detail"}, ...],
     "ok": bool}

C{damaged} lists every damaged range (what reads fail on, or skip);
C{problems} lists what recovery would repair or report at the next start
(unreadable metadata, torn tails, missing or stale indexes, missing offsets,
unreadable group files).  C{ok} is true when both are empty.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from robustmq.storage._segment.checkpoint import readCheckpoint
from robustmq.storage._segment.index import TRAILER_SIZE, readTrailer
from robustmq.storage._segment.log import LOG_SUFFIX, Segment
from robustmq.storage._segment.recovery import META_FILE, readMeta, recoverGroups
from robustmq.storage._segment.scan import scanSegment

__all__ = ["StoreInUseError", "checkDataDir", "checkShards"]

#: (path, base offset, bytes to check, sealed?) of one segment
SegmentTarget = tuple[str, int, int, bool]


class StoreInUseError(Exception):
    """A node has the data directory open: check it online instead."""


def _report(root: str) -> dict[str, Any]:
    return {
        "data_dir": root,
        "shards": 0,
        "segments": 0,
        "bytes": 0,
        "records": 0,
        "damaged": [],
        "problems": [],
        "ok": True,
    }


def _problem(report: dict[str, Any], shard: str, kind: str, detail: str) -> None:
    report["problems"].append({"shard": shard, "kind": kind, "detail": detail})


def _checkShard(
    report: dict[str, Any],
    shard: str,
    segments: list[SegmentTarget],
    keyed: bool,
    indexInterval: int,
    online: bool,
) -> int:
    """Check one shard's segments; returns one past its last valid offset."""
    report["shards"] += 1
    nextOffset = segments[0][1] if segments else 0
    for i, (path, base, limit, sealed) in enumerate(segments):
        name = os.path.basename(path)
        last = i == len(segments) - 1
        nextBase = None if last else segments[i + 1][1]
        report["segments"] += 1
        try:
            scan = scanSegment(path, indexInterval, False, base, limit)
        except OSError as e:
            _problem(report, shard, "unreadable_segment", f"{name}: {e}")
            continue
        report["bytes"] += scan.fileSize
        report["records"] += scan.recordCount
        for damage in scan.damaged:
            report["damaged"].append({"shard": shard, "segment": name, **damage.describe()})
        if scan.tail is not None:
            tail = scan.tail
            if last and not online:
                _problem(
                    report,
                    shard,
                    "torn_tail",
                    f"{name}: {scan.fileSize - tail.start} bytes after byte {tail.start} "
                    f"are no whole record (from offset {tail.firstOffset}); the next start "
                    f"cuts them off",
                )
            else:
                tail.lastOffset = (nextBase - 1) if nextBase is not None else tail.firstOffset
                report["damaged"].append({"shard": shard, "segment": name, **tail.describe()})
        if scan.lastOffset >= 0:
            nextOffset = max(nextOffset, scan.lastOffset + 1)
        if nextBase is not None and not keyed and scan.tail is None:
            if scan.lastOffset + 1 < nextBase:
                first = max(base, scan.lastOffset + 1)
                _problem(
                    report,
                    shard,
                    "missing_offsets",
                    f"{name}: offsets {first}..{nextBase - 1} are not in any segment",
                )
        if sealed and not last and not online:
            _checkIndex(report, shard, path, scan.fileSize)
    return nextOffset


def _checkIndex(report: dict[str, Any], shard: str, path: str, size: int) -> None:
    seg = Segment(os.path.dirname(path), 0)
    seg.path = path
    indexPath, _ = seg.indexFiles()
    name = os.path.basename(indexPath)
    try:
        with open(indexPath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        _problem(report, shard, "index_missing", f"{name}: missing; rebuilt at the next start")
        return
    trailer = readTrailer(data[-TRAILER_SIZE:], len(data))
    if trailer is None:
        _problem(report, shard, "index_damaged", f"{name}: damaged; rebuilt when first used")
    elif trailer.size != size:
        _problem(
            report,
            shard,
            "index_stale",
            f"{name}: describes {trailer.size} bytes, the log has {size}; rebuilt at the "
            f"next start",
        )


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    report["ok"] = not report["damaged"] and not report["problems"]
    return report


def checkShards(
    root: str, targets: list[tuple[str, list[SegmentTarget], bool]], indexInterval: int
) -> dict[str, Any]:
    """
    Check the acknowledged bytes of a running store's shards (its I/O thread).

    @param targets: per shard: its name, its segments, whether it is compacted.
    """
    report = _report(root)
    for shard, segments, keyed in targets:
        _checkShard(report, shard, segments, keyed, indexInterval, online=True)
    return _finish(report)


def checkDataDir(root: str, indexInterval: int = 4096, force: bool = False) -> dict[str, Any]:
    """
    Check a data directory that no node has open (offline).

    @param force: check even though a node holds the directory's lock (what
        it is writing at the moment may show as a torn tail).
    @raise StoreInUseError: a node has the directory open and not C{force}.
    @raise FileNotFoundError: C{root} holds no store.
    """
    root = os.path.abspath(root)
    shardsDir = os.path.join(root, "shards")
    if not os.path.isdir(shardsDir):
        raise FileNotFoundError(f"{root} holds no segment store (no shards/ directory)")
    lockPath = os.path.join(root, ".lock")
    if os.path.exists(lockPath) and not force:
        fd = os.open(lockPath, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise StoreInUseError(
                f"{root} is open in a running node: check it online "
                f"(robustmq ctl storage check), or pass --force"
            ) from None
        finally:
            os.close(fd)
    report = _report(root)
    checkpoint, problem = readCheckpoint(root)
    if problem is not None:
        _problem(report, "", "checkpoint_unreadable", f"checkpoint.json is {problem}")
    for entry in sorted(os.listdir(shardsDir)):
        directory = os.path.join(shardsDir, entry)
        if not os.path.isdir(directory):
            continue
        meta = readMeta(directory)
        if meta is None:
            _problem(
                report,
                entry,
                "metadata_unreadable",
                f"{entry}/{META_FILE} is unreadable; the next start rewrites it "
                f"(config from the checkpoint if it has the shard)",
            )
            shard, keyed = entry, False
        else:
            shard, keyed = meta["name"], bool(meta["config"].get("compacted"))
        names = sorted(
            n
            for n in os.listdir(directory)
            if n.endswith(LOG_SUFFIX) and n[: -len(LOG_SUFFIX)].isdigit()
        )
        segments: list[SegmentTarget] = []
        for i, n in enumerate(names):
            path = os.path.join(directory, n)
            segments.append(
                (path, int(n[: -len(LOG_SUFFIX)]), os.path.getsize(path), i < len(names) - 1)
            )
        if not segments:
            _problem(report, shard, "no_segments", f"{entry} has no segment file")
            report["shards"] += 1
            continue
        nextOffset = _checkShard(report, shard, segments, keyed, indexInterval, online=False)
        saved = checkpoint.get(shard)
        if saved is not None and saved["next"] > nextOffset:
            _problem(
                report,
                shard,
                "missing_offsets",
                f"offsets {nextOffset}..{saved['next'] - 1} were durable at the last "
                f"checkpoint and are not on disk",
            )
    _, groupEvents = recoverGroups(os.path.join(root, "groups"), readOnly=True)
    for _level, _fmt, fields in groupEvents:
        _problem(report, "", "group_offsets_unreadable", f"{fields['file']}: {fields['error']}")
    return _finish(report)
