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
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from robustmq.interfaces import IShardAdminStore, ISpanShardStore
from robustmq.storage._common import normalizeShardConfig
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
from robustmq.storage._segment.scan import scanSegment
from robustmq.storage.errors import (
    NotCompactedError,
    ShardLimitError,
    StorageClosedError,
    StorageFailedError,
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


def _missing(shard: str) -> defer.Deferred[Any]:
    return defer.fail(KeyError(shard))


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

    Records become readable when their append's Deferred fires.  A failed
    write (disk full, I/O error) fails that batch and every later write with
    L{StorageFailedError} until the store is reopened.
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
            if rec.log is None:
                continue
            self._shards[rec.log.name] = rec.log
            for seg in rec.newIndexes:
                self._queueIndex(seg)
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
        if self._ops:
            self._schedule()

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
        else:
            events.append(
                (
                    "info",
                    "{dataDir}: no clean-shutdown marker; scanning active segments",
                    {"dataDir": self._root},
                ),
            )
        for name in os.listdir(self._trashDir):
            shutil.rmtree(os.path.join(self._trashDir, name), ignore_errors=True)
        defaults = normalizeShardConfig(None, self._settings)
        recovered = []
        for name in sorted(os.listdir(self._shardsDir)):
            path = os.path.join(self._shardsDir, name)
            if not os.path.isdir(path):
                continue
            rec = recoverShard(path, self._settings.index_interval_bytes, clean, defaults)
            for i, (level, fmt, fields) in enumerate(rec.events):
                rec.events[i] = (level, fmt, {"directory": path, **fields})
            recovered.append(rec)
        groups, groupEvents = recoverGroups(self._groupsDir)
        events.extend(groupEvents)
        return recovered, groups, events

    def close(self) -> defer.Deferred[None]:
        """Write everything queued, seal indexes, fsync, and stop the threads."""
        return defer.ensureDeferred(self._closeAsync())

    async def _closeAsync(self) -> None:
        if not self._open:
            return
        self._open = False
        for loop in (getattr(self, "_syncLoop", None), self._retentionLoop):
            if loop is not None and loop.running:
                loop.stop()
        self._syncLoop = None
        failed = self._failure is not None
        if not failed:
            # the active segments' indexes, so a clean reopen skips the scan
            for shard in self._shards.values():
                active = shard.active
                if active.size and not active.indexPersisted:
                    self._queueIndex(active, final=True)
            await self._barrier()
        try:
            if self._flushCall is not None:
                self._flushCall.cancel()
                self._flushCall = None
            if not failed:
                paths = list(self._dirty)
                self._dirty = {}
                sync = self._settings.sync != "os"
                await deferToThreadPool(self._reactor, self._ioPool, self._finalSync, paths, sync)
        finally:
            self._readHandles.closeAll()
            self._stopPools()
        self.log.info("closed {dataDir}", dataDir=self._root)

    def _finalSync(self, paths: list[str], sync: bool) -> None:
        self._worker.close()
        if sync:
            syncPaths(paths)
        atomicWrite(os.path.join(self._root, _CLEAN_MARKER), b"", sync=sync)
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
        for group in self._dirtyGroups:
            path = os.path.join(self._groupsDir, escape(group) + ".json")
            offsets = self._groups.get(group)
            if offsets:
                self._ops.append(("atomic", path, groupBytes(group, offsets)))
            else:
                self._ops.append(("unlink", path))
        self._dirtyGroups = set()
        ops = [("append", op[1], b"".join(op[2])) if op[0] == "append" else op for op in self._ops]
        batch = (self._waiters, self._visible, self._sealed)
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
        if policy == "always":  # through the sync thread even if empty: keeps acks in order
            d = deferToThreadPool(self._reactor, self._syncPool, syncPaths, paths)
            d.addCallbacks(
                lambda _: self._acknowledge(batch), self._syncFailed, errbackArgs=(batch,)
            )
        else:
            if policy == "interval":
                self._dirty.update(dict.fromkeys(paths))
            self._acknowledge(batch)
        if self._ops or self._waiters or self._dirtyGroups:
            self._schedule()

    def _acknowledge(self, batch: Any) -> None:
        waiters, visible, sealed = batch
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
            d.callback(result)

    def _writeFailed(self, failure: Any, batch: Any) -> None:
        self._inflight = False
        self._failure = StorageFailedError(f"a write to {self._root} failed: {failure.value}")
        self.log.failure("storage write failed; refusing further writes until reopened", failure)
        self._fail(batch[0], failure.value)
        if self._ops or self._waiters:
            self._schedule()

    def _syncFailed(self, failure: Any, batch: Any) -> None:
        self._failure = StorageFailedError(f"fsync in {self._root} failed: {failure.value}")
        self.log.failure("storage fsync failed; refusing further writes until reopened", failure)
        self._fail(batch[0], failure.value)

    def _fail(self, waiters: list[tuple[defer.Deferred[Any], Any]], error: BaseException) -> None:
        for d, _ in waiters:
            d.errback(error)

    def _periodicSync(self) -> None:
        if self._syncing or not self._dirty:
            return
        paths = list(self._dirty)
        self._dirty = {}
        self._syncing = True

        def done(_: Any) -> None:
            self._syncing = False

        def failed(failure: Any) -> None:
            self._syncing = False
            self.log.failure("periodic fsync failed; refusing further writes", failure)
            self._failure = StorageFailedError(f"fsync in {self._root} failed: {failure.value}")

        deferToThreadPool(self._reactor, self._syncPool, syncPaths, paths).addCallbacks(
            done, failed
        )

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
            if self._failure is not None:
                raise self._failure
        except Exception as e:
            return defer.fail(e)
        directory = os.path.join(self._shardsDir, escape(shard))
        log = ShardLog(shard, directory, cfg)
        log.addSegment(Segment(directory, 0))
        self._shards[shard] = log
        self._ops.append(("mkdir", directory))
        self._ops.append(("atomic", os.path.join(directory, META_FILE), metaBytes(shard, cfg, 0)))
        self._ops.append(("create", log.active.path))
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiters.append((d, True))
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
            if self._failure is not None:
                raise self._failure
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
        if self._failure is not None:
            return defer.fail(self._failure)
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
        if self._failure is not None:
            return defer.fail(self._failure)
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
        scan = scanSegment(seg.path, self._settings.index_interval_bytes, False)
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
                log.read(offset, maxRecords, maxBytes, self._fdFor, self._indexFor)
            )
        except Exception as e:
            return defer.fail(e)

    def offsetForTimestamp(self, shard: str, timestamp: int) -> defer.Deferred[int | None]:
        """First readable offset whose timestamp is >= C{timestamp}, or None."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        try:
            return defer.succeed(log.offsetForTimestamp(timestamp, self._fdFor, self._indexFor))
        except Exception as e:
            return defer.fail(e)

    def offsets(self, shard: str) -> defer.Deferred[tuple[int, int]]:
        """Fire with C{(startOffset, nextOffset)}."""
        log = self._shards.get(shard)
        if log is None:
            return _missing(shard)
        return defer.succeed((log.startOffset, log.nextOffset))

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
            if self._failure is not None:
                raise self._failure
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
            records = log.read(offset, 1, 1, self._fdFor, self._indexFor)
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
            if self._failure is not None:
                raise self._failure
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
            if self._failure is not None:
                raise self._failure
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

    def openFileCount(self) -> int:
        """Descriptors held by the two handle caches right now."""
        return len(self._readHandles) + len(self._worker.handles)
