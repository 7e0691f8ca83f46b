"""
The C{segment} shard store: a crash-safe, segmented, append-only local log.

Layout, sync policies and recovery are described in C{docs/storage.md}; the
private modules under L{robustmq.storage._segment} each hold one piece
(record framing, indexes, file handles, scanning, recovery, compaction).

Threads: all state lives on the reactor thread.  File writes, renames,
deletions and C{fsync}s run on a dedicated one-thread pool (the I/O
thread), in submission order; with the C{interval} policy the periodic
C{fsync}s run on a second one-thread pool so that they overlap writes.
Reads are C{pread}s on the reactor thread, of data that is already written
(usually in the page cache).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from robustmq.interfaces import IShardAdminStore, ISpanShardStore
from robustmq.storage._common import normalizeShardConfig
from robustmq.storage._segment.checkpoint import (
    CHECKPOINT_FILE,
    checkpointBytes,
    readCheckpoint,
)
from robustmq.storage._segment.compaction import CompactionResult, compactSegments
from robustmq.storage._segment.files import HandleCache, IOWorker, atomicWrite, fsyncPath, syncPaths
from robustmq.storage._segment.index import TRAILER_SIZE, SegmentIndex, readTrailer
from robustmq.storage._segment.log import Segment, ShardLog
from robustmq.storage._segment.naming import escape
from robustmq.storage._segment.recovery import (
    META_FILE,
    Recovered,
    groupBytes,
    metaBytes,
    recoverGroups,
    recoverShard,
)
from robustmq.storage._segment.scan import Damage, scanSegment
from robustmq.storage.errors import (
    NotCompactedError,
    ShardLimitError,
    StorageClosedError,
    StorageFailedError,
    StorageFullError,
)

if TYPE_CHECKING:
    from robustmq.config import StorageSettings

__all__ = ["SegmentShardStore"]

SYNC_POLICIES = ("always", "interval", "os")
#: how often retention is enforced (seconds)
RETENTION_CHECK_SECONDS = 30.0
#: descriptors kept outside the two handle caches: the lock file, one
#: transient file on the I/O thread, one on the sync thread, one for index loads
_RESERVED_FDS = 4
_CLEAN_MARKER = ".clean-shutdown"
#: how often the durable offsets are checkpointed (seconds; only when they changed)
CHECKPOINT_SECONDS = 5.0
#: how often free space is checked while the disk is full (seconds)
FULL_PROBE_SECONDS = 1.0
#: how often a still-full disk is mentioned again in the log (seconds)
FULL_REMINDER_SECONDS = 60.0
#: errnos of a write that failed for want of space (not damage): recoverable
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _missing(shard: str) -> defer.Deferred[Any]:
    return defer.fail(KeyError(shard))


class _Created:
    """The waiter result of createShard: True, once the shard is durable."""

    __slots__ = ("shard",)

    def __init__(self, shard: str) -> None:
        self.shard = shard


@implementer(ISpanShardStore, IShardAdminStore)
class SegmentShardStore:
    """
    Shards as directories of segment files under C{<data_dir>/shards/}.

    Bounds and what happens at them:

      - C{max_shards}: C{createShard} beyond it fails with L{ShardLimitError}.
      - C{segment_bytes}: the active segment is sealed and a new one started
        when the next record would not fit (one record larger than this gets
        a segment of its own).
      - C{max_open_files}: descriptors held open at once, split between the
        I/O thread's write-handle cache and the reactor's read-handle cache
        (least recently used closed first), with four reserved for transient
        use; at most C{max_open_files} sealed segments keep their sparse index
        in memory (others are loaded from the index files on demand).
      - C{retention_ms} / C{retention_bytes} (per non-compacted shard): whole sealed
        segments past either limit are deleted every 30 s (and on
        L{enforceRetention}); an expired active segment is sealed first.
      - Group commit: appends queue while the previous batch is being
        written; the queue holds only what arrived during one write+fsync.
      - Compacted shards keep every live key in memory (key -> offset); they
        are compacted when more than half their records are superseded.

    Records become readable when their append's Deferred fires.

    Faults (docs/reliability.md):

      - A damaged record (CRC mismatch, impossible header) is isolated: reads
        return the records before it, then fail with L{CorruptRecordError}
        naming the damaged offsets (C{on_corruption = "fail"}) or step over
        it (C{"skip"}); each damaged range is logged once and counted.
      - A write that fails for want of space (ENOSPC, EDQUOT) is undone: the
        batch and everything queued behind it fail with L{StorageFullError},
        the shards they touched are rebuilt from disk, and writes are refused
        (one log line) until C{min_free_bytes} are free again, which is
        checked every second.
      - Any other write or fsync error fails that batch and every later write
        with L{StorageFailedError} until the store is reopened.
    """

    name = "segment"
    #: data survives restarts and crashes (per the sync policy)
    durable = True
    log = Logger()

    def __init__(self, settings: StorageSettings, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        if settings.sync not in SYNC_POLICIES:
            raise ValueError(f"storage.sync must be one of {SYNC_POLICIES}, not {settings.sync!r}")
        self._settings = settings
        self._reactor: IReactorTime = reactor
        self._root = os.path.abspath(settings.data_dir)
        self._shardsDir = os.path.join(self._root, "shards")
        self._groupsDir = os.path.join(self._root, "groups")
        self._trashDir = os.path.join(self._root, "trash")
        budget = max(2, settings.max_open_files - _RESERVED_FDS)
        self._writeFiles = max(1, budget // 2)
        self._readFiles = max(1, budget - self._writeFiles)
        self._open = False
        self._shards: dict[str, ShardLog] = {}
        self._groups: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._skipDamage = getattr(settings, "on_corruption", "fail") == "skip"
        #: what the store found and did, for C{/metrics} (see L{statistics})
        self.counters: Counter[str] = Counter()
        self._reset()

    def _reset(self) -> None:
        self._ops: list[Any] = []
        self._openAppend: dict[str, list[bytes]] = {}
        self._waiters: list[tuple[defer.Deferred[Any], Any]] = []
        self._visible: list[tuple[ShardLog, list[Segment], list[int], int]] = []
        self._sealed: list[tuple[Segment, bool]] = []
        self._dirtyGroups: set[str] = set()
        self._flushCall: Any = None
        self._inflight = False
        self._dirty: dict[str, None] = {}
        self._syncing = False
        self._failure: BaseException | None = None
        self._indexCache: OrderedDict[Segment, None] = OrderedDict()
        self._deleteSeq = 0
        #: the disk was full: writes are refused until space is free again
        self._full: StorageFullError | None = None
        self._fullSince = 0.0
        self._fullProbe: LoopingCall | None = None
        self._lastReminder = 0.0
        #: a full-disk rollback is running; fires when the shards are rebuilt
        self._rebuilding: defer.Deferred[None] | None = None
        self._syncsInFlight = 0
        self._afterSyncs: list[Any] = []
        #: shards created but not yet durable (a failed batch removes them)
        self._unconfirmed: set[str] = set()
        #: the checkpoint entries last written (see _segment/checkpoint.py)
        self._checkpoint: dict[str, dict[str, Any]] = {}
        self._checkpointLoop: LoopingCall | None = None
        self._syncedSnapshot: dict[str, dict[str, Any]] | None = None
        #: written batches waiting for the next fsync round (policy always)
        self._syncQueue: list[tuple[list[str], Any]] = []

    # -- lifecycle -------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Recover the data directory (on the I/O thread); fires when ready."""
        return defer.ensureDeferred(self._openAsync())

    async def _openAsync(self) -> None:
        if self._open:
            return
        self._reset()
        self._ioPool = ThreadPool(1, 1, name="robustmq-storage-io")
        self._syncPool = ThreadPool(1, 1, name="robustmq-storage-sync")
        self._ioPool.start()
        self._syncPool.start()
        self._worker = IOWorker(self._writeFiles)
        self._readHandles = HandleCache(self._readFiles, write=False)
        try:
            recovered, groups, events = await deferToThreadPool(
                self._reactor, self._ioPool, self._recover
            )
        except BaseException:
            self._stopPools()
            raise
        for level, fmt, fields in events:
            getattr(self.log, level)(fmt, **fields)
        self._shards = {}
        for rec in recovered:
            for level, fmt, fields in rec.events:
                getattr(self.log, level)(fmt, **fields)
            for kind in rec.repairs:
                self.counters["recovery:" + kind] += 1
            self.counters["recovery_lost_offsets"] += rec.lostOffsets
            if rec.log is None:
                continue
            self._shards[rec.log.name] = rec.log
            for seg in rec.newIndexes:
                self._queueIndex(seg)
            for seg in rec.log.segments:
                for damage in (seg.damage or {}).values():
                    self._countDamage(damage)
        self._groups = groups
        self._open = True
        self.log.info(
            "opened {dataDir}: {shards} shards, {groups} groups, sync={sync}",
            dataDir=self._root,
            shards=len(self._shards),
            groups=len(groups),
            sync=self._settings.sync,
        )
        if self._settings.sync == "interval":
            self._syncLoop = LoopingCall(self._periodicSync)
            self._syncLoop.clock = self._reactor
            self._syncLoop.start(self._settings.sync_interval_ms / 1000.0, now=False)
        self._retentionLoop = LoopingCall(self.enforceRetention)
        self._retentionLoop.clock = self._reactor
        self._retentionLoop.start(RETENTION_CHECK_SECONDS, now=False)
        self._checkpointLoop = LoopingCall(self._periodicCheckpoint)
        self._checkpointLoop.clock = self._reactor
        self._checkpointLoop.start(CHECKPOINT_SECONDS, now=False)
        # what recovery found is the new truth: a later recovery compares with it
        self._writeCheckpoint(self._snapshot())

    def _recover(self) -> tuple[list[Recovered], dict[str, Any], list[Any]]:
        """Thread side of L{open}: lock, read markers, recover every shard."""
        for d in (self._root, self._shardsDir, self._groupsDir, self._trashDir):
            os.makedirs(d, exist_ok=True)
        self._lockFd = os.open(os.path.join(self._root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lockFd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lockFd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise OSError(e.errno, f"{self._root} is in use by another store") from e
            raise
        events: list[Any] = []
        marker = os.path.join(self._root, _CLEAN_MARKER)
        clean = os.path.exists(marker)
        if clean:
            os.unlink(marker)
            fsyncPath(self._root)
        elif any(
            os.path.isdir(os.path.join(self._shardsDir, n)) for n in os.listdir(self._shardsDir)
        ):
            events.append(
                (
                    "info",
                    "{dataDir}: the previous run did not shut down cleanly; "
                    "checking the active segments",
                    {"dataDir": self._root},
                ),
            )
        else:
            # A first start: nothing to recover, nothing to alarm anyone about.
            events.append(("info", "{dataDir}: new data directory", {"dataDir": self._root}))
        for name in os.listdir(self._trashDir):
            shutil.rmtree(os.path.join(self._trashDir, name), ignore_errors=True)
        defaults = normalizeShardConfig(None, self._settings)
        checkpoint, problem = readCheckpoint(self._root)
        if problem is not None:
            self.counters["recovery:checkpoint_unreadable"] += 1
            events.append(
                (
                    "warn",
                    "{dataDir}: the recovery checkpoint is {problem}; ignored (losses of "
                    "acknowledged records cannot be detected this time)",
                    {"dataDir": self._root, "problem": problem},
                ),
            )
        recovered = []
        for name in sorted(os.listdir(self._shardsDir)):
            path = os.path.join(self._shardsDir, name)
            if not os.path.isdir(path):
                continue
            rec = recoverShard(
                path, self._settings.index_interval_bytes, clean, defaults, checkpoint
            )
            for i, (level, fmt, fields) in enumerate(rec.events):
                rec.events[i] = (level, fmt, {"directory": path, **fields})
            recovered.append(rec)
        groups, groupEvents = recoverGroups(self._groupsDir)
        self.counters["recovery:group_offsets_lost"] += len(groupEvents)
        events.extend(groupEvents)
        return recovered, groups, events

    def close(self) -> defer.Deferred[None]:
        """Write everything queued, seal indexes, fsync, and stop the threads."""
        return defer.ensureDeferred(self._closeAsync())

    async def _closeAsync(self) -> None:
        if not self._open:
            return
        self._open = False
        for loop in (
            getattr(self, "_syncLoop", None),
            self._retentionLoop,
            self._checkpointLoop,
            self._fullProbe,
        ):
            if loop is not None and loop.running:
                loop.stop()
        self._syncLoop = None
        if self._rebuilding is not None:
            await self._rebuilding
        failed = self._failure is not None or self._full is not None
        if not failed:
            # the active segments' indexes, so a clean reopen skips the scan
            for shard in self._shards.values():
                active = shard.active
                if active.size and not active.indexPersisted:
                    self._queueIndex(active, final=True)
            try:
                await self._barrier()
            except Exception:
                failed = True
        try:
            if self._flushCall is not None:
                self._flushCall.cancel()
                self._flushCall = None
            paths = list(self._dirty)
            self._dirty = {}
            sync = self._settings.sync != "os"
            checkpoint = checkpointBytes(self._snapshot(final=True))
            await deferToThreadPool(
                self._reactor, self._ioPool, self._finalSync, paths, sync, checkpoint, failed
            )
        finally:
            self._readHandles.closeAll()
            self._stopPools()
        self.log.info("closed {dataDir}", dataDir=self._root)

    def _finalSync(self, paths: list[str], sync: bool, checkpoint: bytes, failed: bool) -> None:
        try:
            self._worker.close()
            if not failed:
                if sync:
                    syncPaths(paths)
                atomicWrite(os.path.join(self._root, CHECKPOINT_FILE), checkpoint, sync=sync)
                atomicWrite(os.path.join(self._root, _CLEAN_MARKER), b"", sync=sync)
        finally:
            os.close(self._lockFd)

    def _stopPools(self) -> None:
        self._ioPool.stop()
        self._syncPool.stop()

    def _check(self) -> None:
        if not self._open:
            raise StorageClosedError("the segment store is not open")

    # -- the group commit ------------------------------------------------

    def _queue(self, op: tuple[Any, ...]) -> None:
        self._ops.append(op)
        self._schedule()

    def _queueAppend(self, path: str, parts: list[bytes]) -> None:
        pending = self._openAppend.get(path)
        if pending is None:
            pending = []
            self._openAppend[path] = pending
            self._ops.append(("append", path, pending))
        pending.extend(parts)

    def _queueIndex(self, seg: Segment, final: bool = False) -> None:
        indexPath, timePath = seg.indexFiles()
        index, timeindex = seg.serializeIndex()
        self._ops.append(("put", indexPath, index))
        self._ops.append(("put", timePath, timeindex))
        self._sealed.append((seg, not final))
        self._schedule()

    def _forget(self, path: str) -> None:
        """A file is about to be removed: stop merging appends into it, close reads."""
        self._openAppend.pop(path, None)
        self._readHandles.drop(path)

    def _schedule(self) -> None:
        if self._flushCall is None and not self._inflight:
            self._flushCall = self._reactor.callLater(0, self._flush)

    def _barrier(self) -> defer.Deferred[Any]:
        """A Deferred that fires once everything queued so far is acknowledged."""
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((d, None))
        self._schedule()
        return d

    def _flush(self) -> None:
        self._flushCall = None
        if self._inflight or not (self._ops or self._waiters or self._dirtyGroups):
            return
        groups = self._dirtyGroups
        for group in groups:
            path = os.path.join(self._groupsDir, escape(group) + ".json")
            offsets = self._groups.get(group)
            if offsets:
                self._ops.append(("atomic", path, groupBytes(group, offsets)))
            else:
                self._ops.append(("unlink", path))
        self._dirtyGroups = set()
        ops = [("append", op[1], b"".join(op[2])) if op[0] == "append" else op for op in self._ops]
        batch = (self._waiters, self._visible, self._sealed, ops, groups)
        self._ops = []
        self._openAppend = {}
        self._waiters = []
        self._visible = []
        self._sealed = []
        if self._failure is not None:
            self._fail(batch[0], self._failure)
            return
        self._inflight = True
        d = deferToThreadPool(self._reactor, self._ioPool, self._worker.run, ops)
        d.addCallbacks(self._written, self._writeFailed, (batch,), errbackArgs=(batch,))

    def _written(self, paths: list[str], batch: Any) -> None:
        self._inflight = False
        policy = self._settings.sync
        if policy == "always":
            # Group commit: one fsync round covers every batch written since the
            # previous round began; acknowledgements stay in order.
            self._syncQueue.append((paths, batch))
            self._startSync()
        else:
            if policy == "interval":
                self._dirty.update(dict.fromkeys(paths))
            self._acknowledge(batch)
        if self._ops or self._waiters or self._dirtyGroups:
            self._schedule()

    def _startSync(self) -> None:
        if self._syncsInFlight or not self._syncQueue:
            return
        queued, self._syncQueue = self._syncQueue, []
        paths: dict[str, None] = {}
        for batchPaths, _ in queued:
            paths.update(dict.fromkeys(batchPaths))
        self._syncsInFlight += 1
        self.counters["fsync_rounds"] += 1
        self.counters["fsync_batches"] += len(queued)
        d = deferToThreadPool(self._reactor, self._syncPool, syncPaths, list(paths))
        d.addCallbacks(self._synced, self._syncFailed, (queued,), errbackArgs=(queued,))

    def _synced(self, _: Any, queued: list[tuple[list[str], Any]]) -> None:
        self._syncsInFlight -= 1
        for _paths, batch in queued:
            self._acknowledge(batch)
        self._syncDone()
        self._startSync()

    def _syncDone(self) -> None:
        if not self._syncsInFlight and not self._syncQueue:
            calls, self._afterSyncs = self._afterSyncs, []
            for call in calls:
                call()

    def _acknowledge(self, batch: Any) -> None:
        waiters, visible, sealed = batch[:3]
        for shard, segs, sizes, nextOffset in visible:
            for seg, size in zip(segs, sizes, strict=True):
                if size > seg.visibleSize:
                    seg.visibleSize = size
            if nextOffset > shard.visibleNext:
                shard.visibleNext = nextOffset
        for seg, isSealed in sealed:
            seg.indexPersisted = True
            if isSealed and seg.index is not None:
                self._cacheIndex(seg)
        for d, result in waiters:
            if isinstance(result, _Created):
                self._unconfirmed.discard(result.shard)
                result = True
            d.callback(result)

    def _writeFailed(self, failure: Any, batch: Any) -> None:
        self._inflight = False
        error = failure.value
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            self._diskFull(error, batch)
            return
        self.counters["write_errors:io"] += 1
        self._failure = StorageFailedError(f"a write to {self._root} failed: {error}")
        self.log.error(
            "storage write failed: {error}; refusing further writes until the store is reopened",
            error=str(error),
        )
        self._fail(batch[0], self._failure)
        if self._ops or self._waiters:
            self._schedule()

    def _syncFailed(self, failure: Any, queued: list[tuple[list[str], Any]]) -> None:
        self._syncsInFlight -= 1
        self.counters["write_errors:io"] += 1
        # After a failed fsync the kernel may have dropped the dirty pages: what
        # reached the disk is unknown until recovery reads it back.
        self._failure = StorageFailedError(f"fsync in {self._root} failed: {failure.value}")
        self.log.error(
            "storage fsync failed: {error}; refusing further writes until the store is reopened",
            error=str(failure.value),
        )
        for _paths, batch in queued:
            self._fail(batch[0], self._failure)
        for _paths, batch in self._syncQueue:
            self._fail(batch[0], self._failure)
        self._syncQueue = []
        self._syncDone()

    def _fail(self, waiters: list[tuple[defer.Deferred[Any], Any]], error: BaseException) -> None:
        for d, _ in waiters:
            d.errback(error)

    def _periodicSync(self) -> None:
        if self._syncing or not self._dirty:
            return
        paths = list(self._dirty)
        self._dirty = {}
        self._syncing = True
        snapshot = self._snapshot()

        def done(_: Any) -> None:
            self._syncing = False
            self._syncedSnapshot = snapshot

        def failed(failure: Any) -> None:
            self._syncing = False
            self.counters["write_errors:io"] += 1
            self.log.error(
                "periodic fsync failed: {error}; refusing further writes until the store is "
                "reopened",
                error=str(failure.value),
            )
            self._failure = StorageFailedError(f"fsync in {self._root} failed: {failure.value}")

        deferToThreadPool(self._reactor, self._syncPool, syncPaths, paths).addCallbacks(
            done, failed
        )

    # -- a full disk -----------------------------------------------------

    def _diskFull(self, error: OSError, batch: Any) -> None:
        """
        A batch failed for want of space (the I/O worker undid it).

        Refuse writes, fail the batch and everything queued behind it with
        L{StorageFullError}, rebuild the shards they touched from disk once
        the batches before it are acknowledged, then check for free space
        every second and resume writing when there is enough.
        """
        self.counters["write_errors:full"] += 1
        if self._full is None:
            self.counters["disk_full_events"] += 1
            self._fullSince = self._lastReminder = self._reactor.seconds()
            self._full = StorageFullError(
                f"the disk under {self._root} is full ({error.strerror}); writes resume when "
                f"{self._settings.min_free_bytes} bytes are free"
            )
            self.log.warn(
                "storage full under {dataDir} ({error}): refusing writes until "
                "{needed} bytes are free (checked every {every:g}s)",
                dataDir=self._root,
                error=error.strerror,
                needed=self._settings.min_free_bytes,
                every=FULL_PROBE_SECONDS,
            )
        # Everything queued was encoded after the failed batch: it goes too,
        # except deletions (they free space, and the shards already forgot it).
        failed = [batch]
        queued = (self._waiters, self._visible, self._sealed, self._ops, self._dirtyGroups)
        failed.append(queued)
        self._ops = [op for op in self._ops if op[0] in ("unlink", "rmtree")]
        self._openAppend = {}
        self._waiters = []
        self._visible = []
        self._sealed = []
        self._dirtyGroups = set()
        self._inflight = True  # no batch starts until the rebuild is done
        done: defer.Deferred[None] = defer.Deferred()
        self._rebuilding = done

        def rebuild() -> None:
            defer.ensureDeferred(self._rebuild(failed)).addBoth(finished)

        def finished(result: Any) -> None:
            self._rebuilding = None
            self._inflight = False
            if isinstance(result, Failure):
                self._failure = StorageFailedError(f"rebuilding after a full disk: {result.value}")
                self.log.failure("rebuilding shards after a full disk failed", result)
            done.callback(None)
            self._startProbe()
            if self._ops or self._waiters:
                self._schedule()

        if self._syncsInFlight or self._syncQueue:
            self._afterSyncs.append(rebuild)
        else:
            rebuild()

    async def _rebuild(self, failed: list[Any]) -> None:
        """Rebuild the shards the failed batches touched from disk; fail their waiters."""
        dirs: set[str] = set()
        prefix = self._shardsDir + os.sep
        for _w, _v, _s, ops, groups in failed:
            for op in ops:
                if len(op) > 1 and isinstance(op[1], str) and op[1].startswith(prefix):
                    dirs.add(op[1][len(prefix) :].split(os.sep, 1)[0])
            self._dirtyGroups |= groups  # written again once the disk has room
        byDir = {os.path.basename(log.directory): log for log in self._shards.values()}
        drop: list[str] = []
        redo: list[ShardLog] = []
        for name in sorted(dirs):
            log = byDir.get(name)
            if log is None:
                continue
            if log.name in self._unconfirmed:
                drop.append(log.name)
            else:
                redo.append(log)
        for shard in drop:
            log = self._shards.pop(shard)
            log.deleted = True
            self._unconfirmed.discard(shard)
            self._forgetLog(log)
        rebuilt = await deferToThreadPool(
            self._reactor,
            self._ioPool,
            self._rebuildOnDisk,
            [log.directory for log in redo],
            [
                self._shards.get(s) is None and os.path.join(self._shardsDir, escape(s))
                for s in drop
            ],
        )
        for old, rec in zip(redo, rebuilt, strict=True):
            if self._shards.get(old.name) is not old or rec.log is None:
                continue
            old.deleted = True  # a compaction holding it gives up
            self._forgetLog(old)
            self._shards[old.name] = rec.log
            for seg in rec.newIndexes:
                self._queueIndex(seg)
        self.counters["shards_rebuilt"] += len(redo)
        for waiters, *_ in failed:
            self._fail(waiters, self._full or StorageFullError("the disk is full"))

    def _rebuildOnDisk(self, directories: list[str], remove: list[Any]) -> list[Recovered]:
        """I/O thread: remove half-created shards, re-read the others from disk."""
        for directory in remove:
            if directory:
                self._worker.handles.dropUnder(directory)
                shutil.rmtree(directory, ignore_errors=True)
        defaults = normalizeShardConfig(None, self._settings)
        out = []
        for directory in directories:
            self._worker.handles.dropUnder(directory)
            out.append(
                recoverShard(directory, self._settings.index_interval_bytes, False, defaults)
            )
        return out

    def _forgetLog(self, log: ShardLog) -> None:
        for seg in log.segments:
            self._readHandles.drop(seg.path)
            self._indexCache.pop(seg, None)

    def _startProbe(self) -> None:
        if self._full is None or (self._fullProbe is not None and self._fullProbe.running):
            return
        self._fullProbe = LoopingCall(self._probeSpace)
        self._fullProbe.clock = self._reactor
        self._fullProbe.start(FULL_PROBE_SECONDS, now=False)

    def freeBytes(self) -> int | None:
        """Bytes an unprivileged writer may still use under C{data_dir} (None if unknown)."""
        try:
            st = os.statvfs(self._root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _probeSpace(self) -> None:
        if self._full is None:
            if self._fullProbe is not None and self._fullProbe.running:
                self._fullProbe.stop()
            return
        free = self.freeBytes()
        now = self._reactor.seconds()
        if free is not None and free >= self._settings.min_free_bytes:
            self.log.info(
                "storage under {dataDir} has {free} bytes free again after {seconds:.1f}s: "
                "writes resume",
                dataDir=self._root,
                free=free,
                seconds=now - self._fullSince,
            )
            self._full = None
            if self._fullProbe is not None and self._fullProbe.running:
                self._fullProbe.stop()
            if self._dirtyGroups:
                self._schedule()
        elif now - self._lastReminder >= FULL_REMINDER_SECONDS:
            self._lastReminder = now
            self.log.warn(
                "storage under {dataDir} still full after {seconds:.0f}s ({free} bytes free, "
                "{needed} needed); writes refused",
                dataDir=self._root,
                seconds=now - self._fullSince,
                free=free,
                needed=self._settings.min_free_bytes,
            )

    def _refusal(self) -> BaseException | None:
        """Why writes are refused right now, or None."""
        if self._failure is not None:
            return self._failure
        if self._full is not None:
            return self._full
        return None

    # -- the recovery checkpoint -------------------------------------------

    def _snapshot(self, final: bool = False) -> dict[str, dict[str, Any]]:
        """Checkpoint entries of what is durable now (acknowledged, under C{always})."""
        return {
            name: {"next": log.visibleNext, "start": log.startOffset, "config": log.config}
            for name, log in self._shards.items()
            if name not in self._unconfirmed
        }

    def _periodicCheckpoint(self) -> None:
        if self._refusal() is not None:
            return
        if self._settings.sync == "interval":
            # what the last periodic fsync made durable (acknowledged is not enough)
            snapshot = self._syncedSnapshot
            if snapshot is None:
                return
            snapshot = {n: e for n, e in snapshot.items() if n in self._shards}
        else:
            snapshot = self._snapshot()
        if snapshot != self._checkpoint:
            self._writeCheckpoint(snapshot)

    def _writeCheckpoint(self, snapshot: dict[str, dict[str, Any]]) -> None:
        self._checkpoint = snapshot
        self._ops.append(
            ("atomic", os.path.join(self._root, CHECKPOINT_FILE), checkpointBytes(snapshot))
        )
        self._schedule()

    # -- shards ----------------------------------------------------------

    def createShard(self, shard: str, config: dict[str, Any] | None = None) -> defer.Deferred[bool]:
        """Create C{shard}: its directory, metadata file and first segment."""
        try:
            self._check()
            if shard in self._shards:
                return defer.succeed(False)
            if len(self._shards) >= self._settings.max_shards:
                raise ShardLimitError(
                    f"cannot create shard {shard!r}: the store holds max_shards="
                    f"{self._settings.max_shards} shards"
                )
            cfg = normalizeShardConfig(config, self._settings)
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
        except Exception as e:
            return defer.fail(e)
        directory = os.path.join(self._shardsDir, escape(shard))
        log = ShardLog(shard, directory, cfg)
        log.addSegment(Segment(directory, 0))
        self._shards[shard] = log
        self._unconfirmed.add(shard)
        self._ops.append(("mkdir", directory))
        self._ops.append(("atomic", os.path.join(directory, META_FILE), metaBytes(shard, cfg, 0)))
        self._ops.append(("create", log.active.path))
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiters.append((d, _Created(shard)))
        self._schedule()
        return d

    def configureShard(self, shard: str, config: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """Replace C{shard}'s config in memory and in its metadata file (L{IShardAdminStore})."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        try:
            self._check()
            cfg = normalizeShardConfig(config, self._settings)
            if cfg["compacted"] != log.config.get("compacted", False):
                raise ValueError("shard config 'compacted' cannot change")
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
        except Exception as e:
            return defer.fail(e)
        log.config = cfg
        self._ops.append(
            (
                "atomic",
                os.path.join(log.directory, META_FILE),
                metaBytes(shard, cfg, log.startOffset),
            )
        )
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((d, dict(cfg)))
        self._schedule()
        return d

    def shardSize(self, shard: str) -> defer.Deferred[int]:
        """Bytes of C{shard}'s segment files (L{IShardAdminStore})."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        return defer.succeed(log.totalBytes())

    def deleteShard(self, shard: str) -> defer.Deferred[bool]:
        """Delete C{shard}: its files, its index cache entries and group offsets."""
        try:
            self._check()
        except Exception as e:
            return defer.fail(e)
        log = self._shards.pop(shard, None)
        if log is None:
            return defer.succeed(False)
        log.deleted = True
        for seg in log.segments:
            self._forget(seg.path)
            self._indexCache.pop(seg, None)
        self._deleteSeq += 1
        trash = os.path.join(
            self._trashDir, f"{os.path.basename(log.directory)}.deleted-{self._deleteSeq}"
        )
        self._ops.append(("rmtree", log.directory, trash))
        self._unconfirmed.discard(shard)
        if shard in self._checkpoint:
            # a shard of this name created later must not be measured against this one
            self._writeCheckpoint({n: e for n, e in self._checkpoint.items() if n != shard})
        for group, offsets in self._groups.items():
            if offsets.pop(shard, None) is not None:
                self._dirtyGroups.add(group)
        for group in [g for g, o in self._groups.items() if not o]:
            del self._groups[group]
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiters.append((d, True))
        self._schedule()
        return d

    def listShards(self) -> defer.Deferred[dict[str, dict[str, Any]]]:
        """Fire with every shard's config."""
        try:
            self._check()
        except Exception as e:
            return defer.fail(e)
        return defer.succeed({name: dict(log.config) for name, log in self._shards.items()})

    # -- appends ---------------------------------------------------------

    def _now(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def append(self, shard: str, records: Sequence[dict[str, Any]]) -> defer.Deferred[list[int]]:
        """Frame C{records}, queue them for this turn's group commit, fire with offsets."""
        log = self._shards.get(shard)
        if log is None or not self._open:
            return _missing(shard) if self._open else defer.fail(StorageClosedError())
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if not records:
            return defer.succeed([])
        if log.keys is not None:
            for r in records:
                if r.get("key") is None:
                    return defer.fail(
                        ValueError(f"records appended to compacted shard {shard!r} need a key")
                    )
        return self._append(log, records)

    def appendSpan(self, shard: str, record: dict[str, Any], span: int) -> defer.Deferred[int]:
        """Append one record occupying C{span} offsets (L{ISpanShardStore}); fires with its first."""
        log = self._shards.get(shard)
        if log is None or not self._open:
            return _missing(shard) if self._open else defer.fail(StorageClosedError())
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if isinstance(span, bool) or not isinstance(span, int) or not 1 <= span <= 0x7FFFFFFF:
            return defer.fail(ValueError(f"span must be an int in 1..2**31-1, not {span!r}"))
        if log.keys is not None:
            return defer.fail(ValueError(f"compacted shard {shard!r} takes no span records"))
        return self._append(log, [record], span).addCallback(lambda offsets: offsets[0])

    def _append(
        self, log: ShardLog, records: Sequence[dict[str, Any]], span: int = 1
    ) -> defer.Deferred[Any]:
        first = log.nextOffset
        known = len(log.segments)
        settings = self._settings
        try:
            chunks, rolled = log.encode(
                records, self._now(), settings.segment_bytes, settings.index_interval_bytes, span
            )
        except (TypeError, ValueError, AttributeError) as e:
            return defer.fail(e)
        for seg, parts in chunks:
            self._queueAppend(seg.path, parts)
        for seg in rolled:
            self._queueIndex(seg)
        for seg in log.segments[known:]:
            self._ops.append(("create", seg.path))  # makes the directory entry durable
        self._visible.append(
            (log, [seg for seg, _ in chunks], [seg.size for seg, _ in chunks], log.nextOffset)
        )
        d: defer.Deferred[list[int]] = defer.Deferred()
        self._waiters.append((d, list(range(first, log.nextOffset, span))))
        self._schedule()
        if rolled and log.keys is not None:
            self._maybeCompact(log)
        return d

    # -- reads -----------------------------------------------------------

    def _indexFor(self, seg: Segment) -> SegmentIndex:
        """The sparse index of C{seg}, loading (or rebuilding) it if evicted."""
        index = seg.index
        cache = self._indexCache
        if index is not None:
            if seg in cache:
                cache.move_to_end(seg)
            return index
        index = self._loadIndex(seg)
        seg.index = index
        self._cacheIndex(seg)
        return index

    def _cacheIndex(self, seg: Segment) -> None:
        """Count C{seg}'s loaded index against the bound; unload the least recently used."""
        cache = self._indexCache
        cache[seg] = None
        cache.move_to_end(seg)
        limit = max(1, self._settings.max_open_files)
        while len(cache) > limit:
            for old in cache:
                if old.indexPersisted and old is not seg:
                    del cache[old]
                    old.index = None
                    break
            else:
                break

    def _loadIndex(self, seg: Segment) -> SegmentIndex:
        indexPath, timePath = seg.indexFiles()
        try:
            with open(indexPath, "rb") as f:
                data = f.read()
            with open(timePath, "rb") as f:
                tdata = f.read()
            trailer = readTrailer(data[-TRAILER_SIZE:], len(data))
            if trailer is not None and trailer.size == seg.size:
                index = SegmentIndex.parse(data, tdata, trailer)
                if index is not None:
                    return index
        except OSError:
            pass
        self.log.warn("rebuilding the damaged or missing index of {segment}", segment=seg.path)
        scan = scanSegment(
            seg.path, self._settings.index_interval_bytes, False, seg.base, seg.visibleSize
        )
        seg.index = scan.index
        seg.indexPersisted = False
        self._queueIndex(seg)
        return scan.index

    def _fdFor(self, path: str) -> int:
        return self._readHandles.get(path)

    def read(
        self, shard: str, offset: int, maxRecords: int = 1000, maxBytes: int = 1048576
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Read acknowledged records from C{offset} (at least one if any exists)."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        try:
            return defer.succeed(
                log.read(
                    offset,
                    maxRecords,
                    maxBytes,
                    self._fdFor,
                    self._indexFor,
                    self._damageAt,
                    self._skipDamage,
                )
            )
        except Exception as e:
            return defer.fail(e)

    def offsetForTimestamp(self, shard: str, timestamp: int) -> defer.Deferred[int | None]:
        """First readable offset whose timestamp is >= C{timestamp}, or None."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        try:
            return defer.succeed(
                log.offsetForTimestamp(timestamp, self._fdFor, self._indexFor, self._damageAt)
            )
        except Exception as e:
            return defer.fail(e)

    def offsets(self, shard: str) -> defer.Deferred[tuple[int, int]]:
        """Fire with C{(startOffset, nextOffset)}.

        While the store rebuilds shards after a full disk, this waits for the
        rebuild: the next offset then is the one the next append gets.
        """
        if self._rebuilding is not None:
            d: defer.Deferred[tuple[int, int]] = defer.Deferred()
            self._rebuilding.addBoth(lambda r: (self.offsets(shard).chainDeferred(d), r)[1])
            return d
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        return defer.succeed((log.startOffset, log.nextOffset))

    # -- damaged records -------------------------------------------------

    def _damageAt(self, log: ShardLog, i: int, pos: int) -> Damage:
        """
        The damage a read met at byte C{pos} of C{log}'s segment C{i}.

        The first time, the segment is scanned (up to what is acknowledged)
        for every damaged range, each logged once and counted.
        """
        seg = log.segments[i]
        known = seg.damage
        if known is None or pos not in known:
            scan = scanSegment(
                seg.path, self._settings.index_interval_bytes, False, seg.base, seg.visibleSize
            )
            found = list(scan.damaged)
            if scan.tail is not None:
                found.append(scan.tail)
            if i + 1 < len(log.segments):
                lastOffset = log.segments[i + 1].base - 1
            else:
                lastOffset = log.visibleNext - 1
            fresh: dict[int, Damage] = {}
            for damage in found:
                if damage.lastOffset is None:
                    damage.lastOffset = lastOffset
                fresh[damage.start] = damage
                if known is None or damage.start not in known:
                    self._reportDamage(log, seg, damage)
            known = seg.damage = {**(known or {}), **fresh}
        damage = known.get(pos)
        if damage is None:
            for d in known.values():
                if d.start <= pos < d.end:
                    return d
            # The scanner and the decoder disagree on this frame (a CRC-valid frame
            # whose fields do not add up): give the rest of the segment up.
            lastOffset = log.segments[i + 1].base - 1 if i + 1 < len(log.segments) else -1
            damage = Damage(pos, seg.visibleSize, seg.base, max(lastOffset, log.visibleNext - 1))
            known[pos] = damage
            self._reportDamage(log, seg, damage)
        return damage

    def _reportDamage(self, log: ShardLog, seg: Segment, damage: Damage) -> None:
        self._countDamage(damage)
        self.log.warn(
            "shard {shard!r}: offsets {first}..{last} of {segment} (bytes {start}..{end}) are "
            "damaged; reads {action}",
            shard=log.name,
            first=damage.firstOffset,
            last=damage.lastOffset,
            segment=os.path.basename(seg.path),
            start=damage.start,
            end=damage.end,
            action="skip them (on_corruption = skip)"
            if self._skipDamage
            else "of them fail with CorruptRecordError",
        )

    def _countDamage(self, damage: Damage) -> None:
        self.counters["damaged_ranges"] += 1
        if damage.lastOffset is not None:
            self.counters["damaged_offsets"] += max(0, damage.lastOffset - damage.firstOffset + 1)

    # -- health, metrics and checks --------------------------------------

    def health(self) -> dict[str, Any]:
        """
        Whether the store takes writes now, and why not.

        C{{"writable": bool, "state": "ok" | "full" | "failed" | "closed",
        "reason": str or None, "free_bytes": int or None}}; the admin API's
        C{/health/ready} answers 503 with the reason while not writable.
        """
        if not self._open:
            state, reason = "closed", "the store is not open"
        elif self._failure is not None:
            state, reason = "failed", str(self._failure)
        elif self._full is not None:
            state, reason = "full", str(self._full)
        else:
            state, reason = "ok", None
        return {
            "writable": state == "ok",
            "state": state,
            "reason": reason,
            "free_bytes": self.freeBytes(),
        }

    def statistics(self) -> dict[str, int]:
        """Counters of faults found and handled since the store was built (for C{/metrics})."""
        return dict(self.counters)

    def check(self) -> defer.Deferred[dict[str, Any]]:
        """
        Verify every acknowledged byte of every shard (on the I/O thread) and
        report what is damaged; changes nothing.  Backs C{GET /api/v1/storage/check}
        and C{robustmq ctl storage check --online}.
        """
        from robustmq.storage.check import checkShards

        try:
            self._check()
        except Exception as e:
            return defer.fail(e)
        targets = [
            (
                log.name,
                [
                    (seg.path, seg.base, seg.visibleSize, seg.visibleSize == seg.size)
                    for seg in log.segments
                ],
                log.keys is not None,
            )
            for log in self._shards.values()
        ]
        return deferToThreadPool(
            self._reactor,
            self._ioPool,
            checkShards,
            self._root,
            targets,
            self._settings.index_interval_bytes,
        )

    # -- deletion and retention -----------------------------------------

    def _dropSegments(self, log: ShardLog, count: int) -> None:
        """Delete the first C{count} (sealed) segments of C{log}."""
        for seg in log.segments[:count]:
            self._forget(seg.path)
            self._indexCache.pop(seg, None)
            indexPath, timePath = seg.indexFiles()
            self._ops.append(("unlink", seg.path))
            self._ops.append(("unlink", indexPath))
            self._ops.append(("unlink", timePath))
        log.setSegments(log.segments[count:])
        log.startOffset = max(log.startOffset, log.segments[0].base)
        self._schedule()

    def deleteBefore(self, shard: str, offset: int) -> defer.Deferred[int]:
        """Make offsets below C{offset} unreadable; delete the segments wholly below it."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        new = min(max(offset, log.startOffset), log.nextOffset)
        if new == log.startOffset:
            return defer.succeed(new)
        log.startOffset = new
        if log.keys is not None:
            for key in [k for k, o in log.keys.items() if o < new]:
                del log.keys[key]
        if not log.compacting:
            segs = log.segments
            n = 0
            while n < len(segs) - 1 and segs[n + 1].base <= new:
                n += 1
            if n:
                self._dropSegments(log, n)
        self._ops.append(
            (
                "atomic",
                os.path.join(log.directory, META_FILE),
                metaBytes(log.name, log.config, log.startOffset),
            )
        )
        d: defer.Deferred[int] = defer.Deferred()
        self._waiters.append((d, log.startOffset))
        self._schedule()
        return d

    def enforceRetention(self) -> int:
        """
        Delete whole segments past each shard's C{retention_ms} or
        C{retention_bytes}; return how many segments were deleted.
        """
        if not self._open or self._failure is not None:
            return 0
        now = self._now()
        deleted = 0
        for log in self._shards.values():
            cfg = log.config
            ms, limit = cfg["retention_ms"], cfg["retention_bytes"]
            if (not ms and not limit) or log.keys is not None:
                continue
            cutoff = now - ms if ms else None
            segs = log.segments
            if cutoff is not None and len(segs) == 1:
                active = segs[0]
                if (
                    active.size
                    and active.maxTimestamp < cutoff
                    and active.visibleSize == active.size
                ):
                    self._roll(log)
                    segs = log.segments
            total = sum(s.size for s in segs)
            n = 0
            while n < len(segs) - 1:
                seg = segs[n]
                if (cutoff is not None and seg.maxTimestamp < cutoff) or (
                    limit and total - seg.size >= limit
                ):
                    total -= seg.size
                    n += 1
                else:
                    break
            if n:
                self._dropSegments(log, n)
                deleted += n
                self.log.info(
                    "retention deleted {count} segment(s) of {shard}", count=n, shard=log.name
                )
        return deleted

    def _roll(self, log: ShardLog) -> None:
        """Seal the active segment and start an empty one at the next offset."""
        old = log.active
        self._queueIndex(old)
        seg = Segment(log.directory, log.nextOffset)
        seg.visibleSize = 0
        log.addSegment(seg)
        self._ops.append(("create", seg.path))
        self._schedule()

    # -- compacted shards ------------------------------------------------

    def _keyed(self, shard: str) -> ShardLog:
        log = self._shards.get(shard)
        if log is None:
            raise KeyError(shard)
        if log.keys is None:
            raise NotCompactedError(f"shard {shard!r} is not compacted")
        return log

    def upsert(
        self, shard: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> defer.Deferred[int]:
        """Append C{key}=C{value} to a compacted shard; fires with its offset."""
        try:
            log = self._keyed(shard)
            self._check()
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
            if key is None:
                raise ValueError("upsert needs a key")
        except Exception as e:
            return defer.fail(e)
        d = self._append(log, [{"key": key, "value": value, "headers": list(headers)}])
        return d.addCallback(lambda offsets: offsets[0])

    def lookup(self, shard: str, key: bytes) -> defer.Deferred[dict[str, Any] | None]:
        """The latest acknowledged record of C{key}, or None."""
        try:
            log = self._keyed(shard)
            offset = log.keys.get(bytes(key)) if log.keys is not None else None
            if offset is None or offset >= log.visibleNext:
                return defer.succeed(None)
            records = log.read(offset, 1, 1, self._fdFor, self._indexFor, self._damageAt, True)
        except Exception as e:
            return defer.fail(e)
        if records and records[0]["offset"] == offset:
            return defer.succeed(records[0])
        return defer.succeed(None)  # pragma: no cover - deleted by deleteBefore

    def deleteKey(self, shard: str, key: bytes) -> defer.Deferred[bool]:
        """Append a tombstone for C{key}; fires True if the key was live."""
        try:
            log = self._keyed(shard)
            self._check()
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
        except Exception as e:
            return defer.fail(e)
        assert log.keys is not None
        existed = bytes(key) in log.keys
        if not existed:
            return defer.succeed(False)
        d = self._append(log, [{"key": key, "value": None}])
        return d.addCallback(lambda _: True)

    def keys(self, shard: str) -> defer.Deferred[list[bytes]]:
        """The live keys of a compacted shard."""
        try:
            log = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        assert log.keys is not None
        return defer.succeed(list(log.keys))

    def _maybeCompact(self, log: ShardLog) -> None:
        total = sum(s.recordCount for s in log.segments)
        if not log.compacting and log.deadRecords * 2 > total:
            self.compact(log.name).addErrback(
                lambda f: self.log.failure("compaction of {shard} failed", f, shard=log.name)
            )

    def compact(self, shard: str) -> defer.Deferred[int]:
        """
        Seal the active segment and rewrite all sealed segments of a compacted
        shard, keeping the latest value of each live key; fires with the
        number of records dropped.
        """
        return defer.ensureDeferred(self._compact(shard))

    async def _compact(self, shard: str) -> int:
        log = self._keyed(shard)
        self._check()
        if log.compacting:
            return 0
        if log.active.size:
            self._roll(log)  # so that everything written so far is compacted
        elif len(log.segments) == 1:
            return 0
        log.compacting = True
        try:
            await self._barrier()
            sealed = log.segments[:-1]
            if not sealed or log.deleted:
                return 0
            assert log.keys is not None
            end = log.segments[len(sealed)].base
            live = dict(log.keys)
            result: CompactionResult = await deferToThreadPool(
                self._reactor,
                self._ioPool,
                compactSegments,
                log.directory,
                [s.path for s in sealed],
                sealed[0].base,
                end,
                live,
                self._settings.index_interval_bytes,
                self._worker.handles,
            )
            if log.deleted:
                return 0
            for seg in sealed:
                self._forget(seg.path)
                self._indexCache.pop(seg, None)
            seg = Segment(log.directory, result.base)
            seg.size = seg.visibleSize = result.size
            seg.lastOffset = result.lastOffset
            seg.maxTimestamp = result.maxTimestamp
            seg.recordCount = result.recordCount
            seg.index = result.index
            seg.indexPersisted = True
            self._cacheIndex(seg)
            log.setSegments([seg, *log.segments[len(sealed) :]])
            log.startOffset = max(log.startOffset, seg.base)
            total = sum(s.recordCount for s in log.segments)
            log.deadRecords = max(0, total - len(log.keys))
            self.log.info(
                "compacted {shard}: dropped {dropped} records, kept {kept}",
                shard=shard,
                dropped=result.dropped,
                kept=result.recordCount,
            )
            return result.dropped
        finally:
            log.compacting = False

    # -- consumer groups -------------------------------------------------

    def commitOffset(
        self, group: str, shard: str, offset: int, metadata: bytes = b""
    ) -> defer.Deferred[None]:
        """Record C{group}'s offset for C{shard}; durable (fsynced) when it fires."""
        if shard not in self._shards:
            return _missing(shard)
        try:
            self._check()
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
        except Exception as e:
            return defer.fail(e)
        self._groups.setdefault(group, {})[shard] = (int(offset), bytes(metadata))
        self._dirtyGroups.add(group)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((d, None))
        self._schedule()
        return d

    def fetchOffset(self, group: str, shard: str) -> defer.Deferred[tuple[int, bytes] | None]:
        """Fire with C{(offset, metadata)} committed by C{group} for C{shard}, or None."""
        if shard not in self._shards:
            return _missing(shard)
        return defer.succeed(self._groups.get(group, {}).get(shard))

    # -- introspection for tests and metrics ----------------------------

    def shardUsage(self, shard: str) -> tuple[int, int]:
        """C{(records, bytes)} of one shard's segment files (written records, before
        compaction or retention removes them); L{KeyError} if there is none."""
        log = self._shards.get(shard)
        if log is None:
            raise KeyError(shard)
        return _logUsage(log)

    def usage(self) -> tuple[int, int]:
        """C{(records, bytes)} of every shard's segment files."""
        records = size = 0
        for log in self._shards.values():
            r, b = _logUsage(log)
            records += r
            size += b
        return records, size

    def openFileCount(self) -> int:
        """Descriptors held by the two handle caches right now."""
        return len(self._readHandles) + len(self._worker.handles)


def _logUsage(log: ShardLog) -> tuple[int, int]:
    records = size = 0
    for seg in log.segments:
        records += seg.recordCount
        size += seg.size
    return records, size
