"""
The C{s3} shard store: shards as objects in an S3-compatible bucket.

Brokers using it keep no data another broker cannot read: any store opened
on the same bucket and prefix sees every acknowledged record.  The design
(docs/storage.md has the long form):

  - B{Layout.} Under C{s3_prefix}: C{s/<id>/config} (the shard's name,
    config and generation, written once with C{If-None-Match: *}) and
    C{s/<id>/<generation>/<seq>} log objects numbered 1, 2, 3, ... per
    shard; committed group offsets in C{g/<id>/0/<seq>} the same way, one
    compacted log per group.  The object layout is in
    L{robustmq.storage._s3.objects}.
  - B{Group commit.} Appends queue per shard; every C{s3_flush_interval_ms}
    (or as soon as C{s3_max_batch_bytes} are queued) each shard with queued
    writes and no PUT in flight gets one object holding everything queued,
    all shards' PUTs in parallel.  A Deferred fires once its object's PUT
    returned 200; offsets are assigned when the object is built, so a
    failed PUT never leaves a hole.
  - B{Fencing.} Every log object is written with C{If-None-Match: *} at the
    next sequence number.  A broker takes a shard (on its first write) by
    listing the shard, reading what it did not know, and writing a I{fence}
    object carrying a higher epoch at the next sequence number; a previous
    writer's next PUT then finds its sequence number taken (412) and it stops
    writing that shard for good (L{ShardFencedError}).  A 412 on a number
    this store wrote itself (an earlier attempt whose answer was lost) is
    told apart by the random token in the header.
  - B{Failures.} A PUT that fails is retried with back-off until the oldest
    write it carries is C{s3_ack_timeout_ms} old; then those writes fail
    with L{StorageUnavailableError}, and before the shard's next write the
    store settles the number it used (a void object wins it, or the failed
    object is found stored and its records become readable).
  - B{Reads} come from a bounded cache (L{robustmq.storage._s3.cache});
    objects this node writes enter it on acknowledgement, so tail reads do
    no GET.
  - B{Merging, compaction, retention.} Runs of small objects are merged
    into one, compacted shards are rewritten to their live keys when more
    than half their records are superseded, and C{deleteBefore} / retention
    delete whole objects; all of it through the same fenced, queued writes.

Every request is non-blocking: botocore signs, treq sends over Twisted's
HTTP client (L{robustmq.storage._s3.client}).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.interfaces import ISpanShardStore
from robustmq.storage._common import normalizeShardConfig
from robustmq.storage._s3.cache import ObjectCache
from robustmq.storage._s3.client import (
    NotFound,
    PreconditionFailed,
    S3Client,
    S3Error,
    S3Unavailable,
)
from robustmq.storage._s3.objects import (
    FENCE,
    HEADER_SIZE,
    Header,
    decodeBody,
    decodeHeader,
    encodeObject,
    encodeRecord,
    recordSize,
)
from robustmq.storage.errors import (
    LimitExceededError,
    NotCompactedError,
    ShardFencedError,
    ShardLimitError,
    StorageClosedError,
    StorageUnavailableError,
)

if TYPE_CHECKING:
    from robustmq.config import StorageSettings

__all__ = ["S3ShardStore"]

#: header flag: the object replaces lower-numbered objects within its offset range
REPLACES = 2
#: how often retention is enforced (seconds)
RETENTION_CHECK_SECONDS = 30.0
#: a shard's run of small objects merged into one when it reaches this many
MERGE_RUN = 16
#: concurrent GETs while opening the store
_OPEN_CONCURRENCY = 16
#: attempts at taking a shard while others keep writing it
_ACQUIRE_ATTEMPTS = 16


def _objectId(name: str) -> str:
    """A key-safe, reversible-when-short id for a shard or group name."""
    raw = name.encode("utf-8")
    if len(raw) <= 200:
        return "n" + raw.hex()
    return "h" + hashlib.sha256(raw).hexdigest()


class _Ref:
    """One stored log object that holds records."""

    __slots__ = ("seq", "key", "first", "next", "count", "size", "minTs", "maxTs")

    def __init__(self, seq: int, key: str, header: Header, size: int) -> None:
        self.seq = seq
        self.key = key
        self.first = header.first
        self.next = header.next
        self.count = header.count
        self.size = size
        self.minTs = header.minTimestamp
        self.maxTs = header.maxTimestamp


class _Op:
    """A queued write: records to append, a trim (deleteBefore) or a rewrite."""

    __slots__ = (
        "kind",
        "records",
        "frames",
        "span",
        "size",
        "d",
        "deadline",
        "offset",
        "rewrite",
        "done",
    )

    def __init__(self, kind: str, deadline: float) -> None:
        self.kind = kind
        self.records: list[dict[str, Any]] = []
        self.frames: list[bytes] = []
        self.span = 1
        self.size = 0
        self.d: defer.Deferred[Any] = defer.Deferred()
        self.deadline = deadline
        self.offset = 0
        self.rewrite: tuple[int, int, list[dict[str, Any]], list[bytes], list[_Ref]] | None = None
        self.done = False


class _Flight:
    """One object being PUT: its number, bytes, the writes it carries and their results."""

    __slots__ = (
        "seq",
        "token",
        "batch",
        "body",
        "records",
        "results",
        "replaced",
        "state",
        "error",
    )

    def __init__(
        self,
        seq: int,
        token: bytes,
        batch: list[_Op],
        body: bytes,
        records: list[dict[str, Any]],
        results: list[Any],
        replaced: list[_Ref],
    ) -> None:
        self.seq = seq
        self.token = token
        self.batch = batch
        self.body = body
        self.records = records
        self.results = results
        self.replaced = replaced
        #: flying, stored, failed (no answer in time) or taken (another writer's number)
        self.state = "flying"
        self.error: BaseException | None = None


class _Shard:
    """What the store knows of one shard (or one group's offsets log)."""

    def __init__(self, name: str, root: str, config: dict[str, Any], group: bool = False) -> None:
        self.name = name
        self.root = root  # key prefix of the log objects
        self.config = config
        self.group = group
        compacted = bool(config.get("compacted")) or group
        self.keys: dict[bytes, int] | None = {} if compacted else None
        self.tomb: dict[bytes, int] = {}
        self.values: dict[bytes, tuple[int, bytes]] | None = {} if group else None
        self.refs: list[_Ref] = []
        self.firsts: list[int] = []
        self.seqs: list[int] = []
        self.empties: set[int] = set()
        self.start = 0
        self.next = 0
        self.nextSeq = 1
        self.epoch = 0
        self.owned = False
        self.fenced: BaseException | None = None
        self.pending: deque[_Op] = deque()
        #: objects being PUT, in sequence order (at most s3_max_puts_per_shard)
        self.window: deque[_Flight] = deque()
        #: the next offset and start offset once everything in the window is stored
        self.headNext = 0
        self.headStart = 0
        #: a take-over or a settlement is running
        self.busy = False
        self.deleted = False
        self.rewriting = False

    def key(self, seq: int) -> str:
        return f"{self.root}{seq:016d}"

    def addRef(self, ref: _Ref) -> None:
        i = bisect_right(self.firsts, ref.first)
        self.refs.insert(i, ref)
        self.firsts.insert(i, ref.first)

    def removeRefs(self, refs: list[_Ref]) -> None:
        gone = {id(r) for r in refs}
        self.refs = [r for r in self.refs if id(r) not in gone]
        self.firsts = [r.first for r in self.refs]


@implementer(ISpanShardStore)
class S3ShardStore:
    """
    Shards in an S3-compatible bucket, one fenced writer per shard.

    Bounds and what happens at them (docs/configuration.md):

      - C{s3_max_batch_bytes}: one object holds at most this much of a
        shard's queued records (one larger record gets an object of its
        own); reaching it across shards flushes at once instead of waiting
        for C{s3_flush_interval_ms}.
      - C{s3_max_pending_bytes}: records queued or in flight, all shards; an
        append that would pass it fails at once with L{LimitExceededError}.
      - C{s3_ack_timeout_ms}: a write not stored by then fails with
        L{StorageUnavailableError}.
      - C{s3_request_timeout_ms}: one request without an answer counts as failed.
      - C{s3_max_connections}: persistent HTTP connections to the endpoint.
      - C{s3_cache_bytes}: each cache tier (memory; disk in C{s3_cache_dir}).
      - C{max_shards}: C{createShard} beyond it fails with L{ShardLimitError}.
      - Compacted shards keep each live key's offset in memory; committed
        group offsets are kept in memory.

    @ivar epochSource: optional C{callable(shardName) -> int | None}: the epoch
        the placement center handed this broker for the shard.  When it
        answers, a take-over writes that epoch into its fence object and is
        refused if the bucket already holds a higher one; when unset (single
        node) the store counts epochs itself (previous highest + 1).
    """

    name = "s3"
    durable = True
    #: any node opened on the bucket reads everything: keep node metadata here too
    stateless = True
    log = Logger()

    def __init__(self, settings: StorageSettings, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._settings = settings
        self._reactor = reactor
        prefix = settings.s3_prefix
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self._prefix = prefix
        self._open = False
        self._shards: dict[str, _Shard] = {}
        self._groups: dict[str, _Shard] = {}
        self._pendingBytes = 0
        self._dirty: dict[_Shard, None] = {}
        self._flushCall: Any = None
        self._cache = ObjectCache(reactor, settings.s3_cache_bytes, settings.s3_cache_dir)
        self.epochSource: Callable[[str], int | None] | None = None
        self._client: S3Client | None = None
        self._loops: list[LoopingCall] = []
        self._writing = 0
        #: background work (deletes, rewrites) that close() waits for
        self._background: set[defer.Deferred[Any]] = set()
        self._idle: list[defer.Deferred[None]] = []
        #: monotonic time of the first failed request since the last success
        self._failingSince: float | None = None
        self._lastError = ""
        self.counters = {
            "objects_written": 0,
            "bytes_written": 0,
            "put_failures": 0,
            "acks_failed": 0,
            "fenced": 0,
            "merges": 0,
            "objects_deleted": 0,
        }

    # -- lifecycle -------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """List the bucket and index every shard; fires when ready."""
        return defer.ensureDeferred(self._openAsync())

    async def _openAsync(self) -> None:
        if self._open:
            return
        s = self._settings
        client = S3Client(
            self._reactor,
            s.s3_endpoint,
            s.s3_bucket,
            s.s3_region,
            s.s3_request_timeout_ms / 1000.0,
            s.s3_max_connections,
        )
        await client.start()
        try:
            await client.ensureBucket()
            self._client = client
            self._cache.start()
            await self._load()
        except BaseException:
            self._cache.stop()
            await client.close()
            self._client = None
            raise
        self._open = True
        retention = LoopingCall(self.enforceRetention)
        retention.clock = self._reactor
        retention.start(RETENTION_CHECK_SECONDS, now=False)
        expiry = LoopingCall(self._expire)
        expiry.clock = self._reactor
        expiry.start(min(1.0, s.s3_ack_timeout_ms / 4000.0), now=False)
        creds = LoopingCall(lambda: defer.ensureDeferred(client.refreshCredentials()))
        creds.clock = self._reactor
        creds.start(300.0, now=False)
        self._loops = [retention, expiry, creds]
        self.log.info(
            "opened s3 store {endpoint}/{bucket}/{prefix}: {shards} shards, {groups} groups",
            endpoint=s.s3_endpoint or "aws",
            bucket=s.s3_bucket,
            prefix=self._prefix,
            shards=len(self._shards),
            groups=len(self._groups),
        )

    async def _load(self) -> None:
        """Index every shard and group under the prefix (one LIST, then headers)."""
        client = self._client
        assert client is not None
        listed = await client.list(self._prefix)
        configs: dict[str, str] = {}
        logs: dict[tuple[str, str, str], list[int]] = {}
        for key, _size in listed:
            parts = key[len(self._prefix) :].split("/")
            if len(parts) == 3 and parts[0] == "s" and parts[2] == "config":
                configs[parts[1]] = key
            elif len(parts) == 4 and parts[0] in ("s", "g") and parts[3].isdigit():
                logs.setdefault((parts[0], parts[1], parts[2]), []).append(int(parts[3]))
        sem = defer.DeferredSemaphore(_OPEN_CONCURRENCY)
        raw = await defer.gatherResults(
            [sem.run(self._getObject, k) for k in configs.values()],
            consumeErrors=True,
        )
        for oid, data in zip(configs, raw, strict=True):
            meta = json.loads(data)
            config = normalizeShardConfig(meta["config"], self._settings)
            sh = _Shard(meta["name"], f"{self._prefix}s/{oid}/{meta['gen']}/", config)
            self._shards[sh.name] = sh
            await self._loadObjects(sh, sorted(logs.get(("s", oid, meta["gen"]), [])), sem)
        for (kind, oid, _gen), seqs in logs.items():
            if kind != "g":
                continue
            sh = _Shard("", f"{self._prefix}g/{oid}/0/", {"compacted": True}, group=True)
            self._groups[oid] = sh
            await self._loadObjects(sh, sorted(seqs), sem)

    def _getObject(self, key: str) -> defer.Deferred[bytes]:
        assert self._client is not None
        return defer.ensureDeferred(self._client.get(key))

    async def _loadObjects(
        self, sh: _Shard, seqs: list[int], sem: defer.DeferredSemaphore | None = None
    ) -> None:
        """Read the headers (whole objects for compacted shards) of C{seqs} and apply them."""
        client = self._client
        assert client is not None
        if sem is None:
            sem = defer.DeferredSemaphore(_OPEN_CONCURRENCY)
        full = sh.keys is not None

        def fetch(seq: int) -> defer.Deferred[bytes]:
            key = sh.key(seq)
            if full:
                return defer.ensureDeferred(client.get(key))
            return defer.ensureDeferred(client.get(key, 0, HEADER_SIZE - 1))

        for attempt in range(5):
            try:
                datas = await defer.gatherResults(
                    [sem.run(fetch, seq) for seq in seqs], consumeErrors=True
                )
                break
            except defer.FirstError as e:
                if not e.subFailure.check(NotFound) or attempt == 4:  # type: ignore[no-untyped-call]
                    e.subFailure.raiseException()
            # an object went between the LIST and the GET: a rewrite replaced it
            # (the rewrite's own object has a higher number); list again
            listed = await client.list(sh.root)
            known = sh.seqs[-1] if sh.seqs else 0
            n = len(sh.root)
            seqs = sorted(int(k[n:]) for k, _ in listed if k[n:].isdigit() and int(k[n:]) > known)
        for seq, data in zip(seqs, datas, strict=True):
            if full:
                header, records = decodeBody(data)
                self._apply(sh, seq, header, records, len(data))
                if header.count:
                    self._cache.put(sh.key(seq), records, len(data))
            else:
                header = decodeHeader(data)
                self._apply(sh, seq, header, None, HEADER_SIZE + header.bodyLength)

    def _apply(
        self,
        sh: _Shard,
        seq: int,
        header: Header,
        records: list[dict[str, Any]] | None,
        size: int,
    ) -> None:
        """Fold one stored object into the shard's index (in sequence order).

        An object whose epoch is below the highest seen so far was written by a
        writer that had already been fenced (its PUT landed behind the fence):
        it is ignored, and never was acknowledged.
        """
        if seq not in sh.seqs:
            insort(sh.seqs, seq)
        sh.nextSeq = max(sh.nextSeq, seq + 1)
        if header.epoch < sh.epoch:
            sh.empties.add(seq)
            return
        if header.flags & REPLACES:
            gone = [
                r
                for r in sh.refs
                if r.seq < seq and r.first >= header.first and r.next <= header.next
            ]
            sh.removeRefs(gone)
            for r in gone:
                self._cache.drop(r.key)
        if header.count:
            sh.addRef(_Ref(seq, sh.key(seq), header, size))
        else:
            sh.empties.add(seq)
        raised = header.start > sh.start
        sh.start = max(sh.start, header.start)
        sh.next = max(sh.next, header.next)
        sh.epoch = max(sh.epoch, header.epoch)
        if not sh.owned:
            sh.headNext, sh.headStart = sh.next, sh.start
        if records is not None and sh.keys is not None:
            for record in records:
                self._applyKey(sh, record)
        if sh.keys is not None and raised:
            for k in [k for k, o in sh.keys.items() if o < sh.start]:
                del sh.keys[k]
                if sh.values is not None:
                    sh.values.pop(k, None)

    def _applyKey(self, sh: _Shard, r: dict[str, Any]) -> None:
        keys = sh.keys
        assert keys is not None
        k = r["key"]
        off = r["offset"]
        if off < sh.start or off <= max(keys.get(k, -1), sh.tomb.get(k, -1)):
            return
        if r["value"] is None:
            keys.pop(k, None)
            sh.tomb[k] = off
            if sh.values is not None:
                sh.values.pop(k, None)
        else:
            keys[k] = off
            sh.tomb.pop(k, None)
            if sh.values is not None:
                v = r["value"]
                sh.values[k] = (int.from_bytes(v[:8], "big", signed=True), v[8:])

    def close(self) -> defer.Deferred[None]:
        """Write everything queued (up to the ack timeout), then release the connections."""
        return defer.ensureDeferred(self._closeAsync())

    async def _closeAsync(self) -> None:
        if not self._open:
            return
        self._open = False
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        self._flush()
        while self._writing or any(sh.pending for sh in self._all()):
            d: defer.Deferred[None] = defer.Deferred()
            self._idle.append(d)
            await d
        while self._background:
            await defer.DeferredList(list(self._background), consumeErrors=True)
        # let finished responses hand their connections back to the pool, then close them
        await deferLater(self._reactor, 0, lambda: None)
        self._cache.stop()
        if self._client is not None:
            await self._client.close()
        self.log.info("closed s3 store")

    def _track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Remember background work so that L{close} waits for it."""
        self._background.add(d)

        def done(result: Any) -> Any:
            self._background.discard(d)
            return result

        d.addBoth(done)
        return d

    def _all(self) -> list[_Shard]:
        return [*self._shards.values(), *self._groups.values()]

    def _now(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _deadline(self) -> float:
        return time.monotonic() + self._settings.s3_ack_timeout_ms / 1000.0

    # -- health and numbers ------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """C{(ok, detail)}: not ok while requests fail or writes wait to be settled."""
        uncertain = sum(1 for sh in self._all() if sh.window and sh.window[0].state == "failed")
        if self._failingSince is not None:
            return False, f"object store failing: {self._lastError}"
        if uncertain:
            return False, f"{uncertain} shard(s) with an unsettled write"
        return True, "ok"

    def stats(self) -> dict[str, int]:
        """Counters and gauges for metrics (requests by method, bytes, cache, failures)."""
        out = dict(self.counters)
        if self._client is not None:
            for method, n in self._client.requests.items():
                out[f"requests_{method.lower()}"] = n
        out["pending_bytes"] = self._pendingBytes
        out["cache_memory_bytes"] = self._cache.memoryBytes
        out["cache_disk_bytes"] = self._cache.diskBytes
        out["cache_hits"] = self._cache.hits + self._cache.diskHits
        out["cache_misses"] = self._cache.misses
        out["shards_owned"] = sum(1 for sh in self._all() if sh.owned)
        return out

    def _ok(self) -> None:
        self._failingSince = None

    def _failed(self, error: BaseException) -> None:
        if self._failingSince is None:
            self._failingSince = time.monotonic()
            self.log.warn("object store request failed: {error}", error=str(error))
        self._lastError = str(error)
        self.counters["put_failures"] += 1

    # -- shards ------------------------------------------------------------

    def _check(self) -> None:
        if not self._open:
            raise StorageClosedError("the s3 store is not open")

    def _get(self, shard: str) -> _Shard:
        sh = self._shards.get(shard)
        if sh is None:
            raise KeyError(shard)
        return sh

    def createShard(self, shard: str, config: dict[str, Any] | None = None) -> defer.Deferred[bool]:
        """Write the shard's config object (If-None-Match); False if it existed."""
        return defer.ensureDeferred(self._createShard(shard, config))

    async def _createShard(self, shard: str, config: dict[str, Any] | None) -> bool:
        self._check()
        if shard in self._shards:
            return False
        cfg = normalizeShardConfig(config, self._settings)
        if len(self._shards) >= self._settings.max_shards:
            raise ShardLimitError(f"the store holds max_shards={self._settings.max_shards} shards")
        assert self._client is not None
        oid = _objectId(shard)
        gen = os.urandom(6).hex()
        configKey = f"{self._prefix}s/{oid}/config"
        body = json.dumps({"name": shard, "config": cfg, "gen": gen}).encode()
        try:
            await self._client.put(configKey, body, ifNoneMatch=True)
            self._ok()
        except PreconditionFailed:
            if shard not in self._shards:  # another broker made it: read it
                meta = json.loads(await self._client.get(configKey))
                sh = _Shard(
                    meta["name"],
                    f"{self._prefix}s/{oid}/{meta['gen']}/",
                    normalizeShardConfig(meta["config"], self._settings),
                )
                await self._refresh(sh, self._deadline())
                self._shards.setdefault(shard, sh)
            return False
        if shard in self._shards:
            return False
        self._shards[shard] = _Shard(shard, f"{self._prefix}s/{oid}/{gen}/", cfg)
        return True

    def deleteShard(self, shard: str) -> defer.Deferred[bool]:
        """Delete the config object, the shard's log objects and its committed offsets."""
        return defer.ensureDeferred(self._deleteShard(shard))

    async def _deleteShard(self, shard: str) -> bool:
        self._check()
        sh = self._shards.pop(shard, None)
        if sh is None:
            return False
        sh.deleted = True
        self._failOps([op for flight in sh.window for op in flight.batch], KeyError(shard))
        self._failOps(list(sh.pending), KeyError(shard))
        sh.pending.clear()
        sh.window.clear()
        assert self._client is not None
        await self._client.delete(f"{self._prefix}s/{_objectId(shard)}/config")
        self._deleteObjects([sh.key(seq) for seq in sh.seqs])
        for ref in sh.refs:
            self._cache.drop(ref.key)
        key = shard.encode("utf-8")
        for group in list(self._groups.values()):
            if group.keys is not None and key in group.keys:
                await self._enqueueRecords(group, [{"key": key, "value": None}])
        return True

    def listShards(self) -> defer.Deferred[dict[str, dict[str, Any]]]:
        """Every shard and its config."""
        return defer.succeed({name: dict(sh.config) for name, sh in self._shards.items()})

    # -- the write queue ---------------------------------------------------

    def _writable(self, sh: _Shard) -> None:
        self._check()
        if sh.fenced is not None:
            raise sh.fenced

    def _enqueueRecords(
        self, sh: _Shard, records: Sequence[dict[str, Any]], span: int = 1
    ) -> defer.Deferred[list[int]]:
        """Frame C{records} now (bad input fails here) and queue them for the next object."""
        try:
            self._writable(sh)
            now = self._now()
            op = _Op("append", self._deadline())
            op.span = span
            for r in records:
                if sh.keys is not None and r.get("key") is None:
                    raise ValueError("records of a compacted shard need a key")
                frame, ts = encodeRecord(r, now, span)
                op.frames.append(frame)
                rec: dict[str, Any] = {
                    "offset": 0,
                    "timestamp": ts,
                    "key": None if r.get("key") is None else bytes(r["key"]),
                    "value": None if r.get("value") is None else bytes(r["value"]),
                    "headers": [(n, bytes(v)) for n, v in (r.get("headers") or ())],
                }
                if span > 1:
                    rec["span"] = span
                op.records.append(rec)
                op.size += len(frame) + 4
        except Exception as e:
            return defer.fail(e)
        return self._enqueue(sh, op)

    def _enqueue(self, sh: _Shard, op: _Op) -> defer.Deferred[Any]:
        limit = self._settings.s3_max_pending_bytes
        if op.size and self._pendingBytes + op.size > limit and self._pendingBytes:
            return defer.fail(
                LimitExceededError(f"s3_max_pending_bytes={limit} of writes are waiting")
            )
        sh.pending.append(op)
        self._pendingBytes += op.size
        self._dirty[sh] = None
        self._schedule(idle=not sh.window and not sh.busy)
        return op.d

    def _schedule(self, idle: bool = False) -> None:
        """Flush at the end of this reactor turn when a shard with nothing in flight (or a
        full batch) waits, else after C{s3_flush_interval_ms} (group commit while PUTs fly)."""
        s = self._settings
        if idle or self._pendingBytes >= s.s3_max_batch_bytes or s.s3_flush_interval_ms == 0:
            if self._flushCall is not None and self._flushCall.active():
                if self._flushCall.getTime() <= self._reactor.seconds():
                    return
                self._flushCall.cancel()
            self._flushCall = self._reactor.callLater(0, self._flush)
        elif self._flushCall is None or not self._flushCall.active():
            self._flushCall = self._reactor.callLater(s.s3_flush_interval_ms / 1000.0, self._flush)

    def _flush(self) -> None:
        """Start PUTs for every shard with queued writes (group commit across shards)."""
        self._flushCall = None
        dirty, self._dirty = self._dirty, {}
        for sh in dirty:
            self._startWrites(sh)

    def _resolve(self, op: _Op, result: Any = None, error: BaseException | None = None) -> None:
        """Fire one queued write's Deferred (once) and release its bytes."""
        if op.done:
            return
        op.done = True
        self._pendingBytes -= op.size
        if error is not None:
            self.counters["acks_failed"] += 1
            op.d.errback(error)
        else:
            op.d.callback(result)

    def _failOps(self, ops: Sequence[_Op], error: BaseException) -> None:
        for op in ops:
            self._resolve(op, error=error)

    def _fence(self, sh: _Shard, error: ShardFencedError) -> None:
        """C{sh} belongs to another writer now: fail everything queued or in flight, for good."""
        if sh.fenced is None:
            self.counters["fenced"] += 1
            self.log.warn(
                "shard {shard} was taken by another writer: {error}",
                shard=sh.name,
                error=str(error),
            )
        sh.fenced = error
        sh.owned = False
        window, sh.window = list(sh.window), deque()
        for flight in window:
            self._failOps(flight.batch, error)
        pending, sh.pending = list(sh.pending), deque()
        self._failOps(pending, error)

    def _startWrites(self, sh: _Shard) -> None:
        """Start as many PUTs for C{sh} as its window allows (taking or settling it first)."""
        if sh.deleted or not sh.pending or sh.busy:
            return
        if sh.fenced is not None:
            self._fence(sh, sh.fenced)  # type: ignore[arg-type]
            return
        if not sh.owned:
            self._background_(sh, self._acquireTask(sh))
            return
        if sh.window and sh.window[0].state == "failed":
            return  # settling; resumes when settled
        limit = self._settings.s3_max_puts_per_shard
        while sh.pending and len(sh.window) < limit:
            flight = self._build(sh, self._takeBatch(sh))
            sh.window.append(flight)
            self._writing += 1
            defer.ensureDeferred(self._fly(sh, flight)).addErrback(
                lambda f: self.log.failure("writing to {shard} failed", f, shard=sh.name)
            )

    def _background_(self, sh: _Shard, coro: Any) -> None:
        """Run a take-over or settlement of C{sh}; C{sh.busy} while it runs."""
        sh.busy = True
        self._writing += 1

        def done(result: Any) -> None:
            sh.busy = False
            self._writing -= 1
            self._afterBusy(sh)

        d = defer.ensureDeferred(coro)
        d.addErrback(lambda f: self.log.failure("taking over {shard} failed", f, shard=sh.name))
        d.addBoth(done)

    def _afterBusy(self, sh: _Shard) -> None:
        if sh.pending and not sh.deleted:
            delay = 0.1 if self._failingSince is not None else 0
            self._reactor.callLater(delay, self._startWrites, sh)
        self._notifyIdle()

    def _notifyIdle(self) -> None:
        if not self._writing and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def _acquireTask(self, sh: _Shard) -> None:
        deadline = min((op.deadline for op in sh.pending), default=self._deadline())
        try:
            await self._acquire(sh, deadline)
        except ShardFencedError as e:
            self._fence(sh, e)
        except StorageUnavailableError as e:
            self._expirePending(sh, e)

    def _expirePending(self, sh: _Shard, error: BaseException) -> None:
        now = time.monotonic()
        expired = [op for op in sh.pending if op.deadline <= now]
        for op in expired:
            sh.pending.remove(op)
        self._failOps(expired, error)

    def _takeBatch(self, sh: _Shard) -> list[_Op]:
        limit = self._settings.s3_max_batch_bytes
        batch = [sh.pending.popleft()]
        if batch[0].kind == "rewrite":
            return batch
        size = batch[0].size
        while sh.pending and sh.pending[0].kind != "rewrite":
            if size + sh.pending[0].size > limit:
                break
            op = sh.pending.popleft()
            size += op.size
            batch.append(op)
        return batch

    def _build(self, sh: _Shard, batch: list[_Op]) -> _Flight:
        """One object from C{batch} at the next sequence number and offsets."""
        first = cur = sh.headNext
        start = sh.headStart
        frames: list[tuple[int, bytes]] = []
        records: list[dict[str, Any]] = []
        flags = 0
        minTs, maxTs = 1 << 62, -(1 << 62)
        results: list[Any] = []
        replaced: list[_Ref] = []
        for op in batch:
            if op.kind == "append":
                offsets = []
                for frame, rec in zip(op.frames, op.records, strict=True):
                    frames.append((cur, frame))
                    rec["offset"] = cur
                    records.append(rec)
                    offsets.append(cur)
                    ts = rec["timestamp"]
                    minTs = min(minTs, ts)
                    maxTs = max(maxTs, ts)
                    cur += op.span
                results.append(offsets)
            elif op.kind == "trim":
                start = min(max(op.offset, start), cur)
                results.append(start)
            else:  # rewrite: replaces the objects within [first, next)
                assert op.rewrite is not None
                first, end, recs, fr, replaced = op.rewrite
                flags = REPLACES
                for rec, frame in zip(recs, fr, strict=True):
                    frames.append((rec["offset"], frame))
                    minTs = min(minTs, rec["timestamp"])
                    maxTs = max(maxTs, rec["timestamp"])
                records = recs
                results.append(len(recs))
        if not frames:
            minTs = maxTs = 0
        token = os.urandom(16)
        body = encodeObject(
            frames,
            flags=flags,
            epoch=sh.epoch,
            first=first,
            next=end if flags else cur,
            start=start,
            minTimestamp=minTs,
            maxTimestamp=maxTs,
            token=token,
        )
        if not flags:
            sh.headNext = cur
        sh.headStart = start
        seq = sh.nextSeq
        sh.nextSeq += 1
        return _Flight(seq, token, batch, body, records, results, replaced)

    async def _fly(self, sh: _Shard, flight: _Flight) -> None:
        """PUT one object; the window then acknowledges what is stored, in sequence order."""
        try:
            await self._putDurably(
                sh.key(flight.seq), flight.body, flight.token, min(o.deadline for o in flight.batch)
            )
            flight.state = "stored"
        except StorageUnavailableError as e:
            flight.state = "failed"
            flight.error = e
        except _Taken as e:
            flight.state = "taken"
            flight.error = ShardFencedError(
                f"sequence {flight.seq} of {sh.name!r} was written by another broker "
                f"(epoch {e.epoch})"
            )
        finally:
            self._writing -= 1
        self._advance(sh)

    def _advance(self, sh: _Shard) -> None:
        """Acknowledge the stored objects at the head of the window, in sequence order."""
        while sh.window:
            flight = sh.window[0]
            if flight.state == "flying":
                break
            if flight.state == "stored":
                sh.window.popleft()
                self._commit(sh, flight)
                continue
            if flight.state == "taken":
                assert isinstance(flight.error, ShardFencedError)
                self._fence(sh, flight.error)
                break
            # failed: its writes fail now; later objects wait until its number is settled
            assert flight.error is not None
            self._failOps(flight.batch, flight.error)
            if not sh.busy:
                self._background_(sh, self._settleTask(sh, flight))
            break
        if not sh.window and not sh.busy:
            self._afterBusy(sh)
        elif sh.pending and not sh.busy and len(sh.window) < self._settings.s3_max_puts_per_shard:
            self._reactor.callLater(0, self._startWrites, sh)
        self._notifyIdle()

    def _commit(self, sh: _Shard, flight: _Flight) -> None:
        """One object is stored and everything before it settled: apply it, acknowledge."""
        self.counters["objects_written"] += 1
        self.counters["bytes_written"] += len(flight.body)
        key = sh.key(flight.seq)
        header = decodeHeader(flight.body)
        records = flight.records
        self._apply(
            sh, flight.seq, header, records if sh.keys is not None else None, len(flight.body)
        )
        if records and header.count:
            self._cache.put(key, records, len(flight.body))
        # bookkeeping first: a caller woken below may close the store at once
        if flight.replaced:
            self._afterRewrite(sh, flight.seq, flight.replaced)
        elif any(op.kind == "trim" for op in flight.batch):
            self._dropBelowStart(sh)
        else:
            self._maybeRewrite(sh)
        for op, result in zip(flight.batch, flight.results, strict=True):
            self._resolve(op, result)

    async def _settleTask(self, sh: _Shard, flight: _Flight) -> None:
        """Decide the number a failed PUT used, retrying until the store answers."""
        while not sh.deleted and sh.fenced is None and self._client is not None:
            try:
                await self._settle(sh, flight, self._deadline())
            except StorageUnavailableError as e:
                self._expirePending(sh, e)
                self._expireWindow(sh, e)
                if not self._open:
                    # closing with the store unreachable: give up; the next store to
                    # take the shard settles the number (or finds the object)
                    for waiting in sh.window:
                        self._failOps(waiting.batch, e)
                    sh.window.clear()
                    self._failOps(list(sh.pending), e)
                    sh.pending.clear()
                    sh.owned = False
                    return
                await deferLater(self._reactor, 0.1, lambda: None)
                continue
            except ShardFencedError as e:
                self._fence(sh, e)
                return
            if sh.window and sh.window[0] is flight:
                sh.window.popleft()
            self._advance(sh)
            return

    def _expireWindow(self, sh: _Shard, error: BaseException) -> None:
        """Fail the writes of stored objects that wait too long behind an unsettled one."""
        now = time.monotonic()
        for flight in sh.window:
            self._failOps([op for op in flight.batch if op.deadline <= now], error)

    async def _putDurably(self, key: str, body: bytes, token: bytes, deadline: float) -> None:
        """PUT C{key} if absent, retrying with back-off until C{deadline}.

        @raise _Taken: the key holds another writer's object.
        @raise StorageUnavailableError: no success before C{deadline}.
        """
        client = self._client
        assert client is not None
        backoff = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                await client.put(key, body, ifNoneMatch=True, timeout=max(remaining, 0.05))
                self._ok()
                return
            except PreconditionFailed:
                try:
                    header = decodeHeader(await client.get(key, 0, HEADER_SIZE - 1))
                    self._ok()
                except (S3Unavailable, S3Error) as e:
                    self._failed(e)
                else:
                    if header.token == token:
                        return  # an earlier attempt of ours landed; its answer was lost
                    raise _Taken(header.epoch) from None
            except (S3Unavailable, S3Error) as e:
                self._failed(e)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailableError(
                    f"{key} not stored within s3_ack_timeout_ms: {self._lastError}"
                )
            await deferLater(self._reactor, min(backoff, remaining), lambda: None)
            backoff = min(backoff * 2, 1.0)

    async def _retry(self, call: Callable[[], Any], deadline: float) -> Any:
        """Await C{call()} until it succeeds, retrying transient failures until C{deadline}."""
        backoff = 0.05
        while True:
            try:
                result = await call()
                self._ok()
                return result
            except NotFound:
                raise
            except (S3Unavailable, S3Error) as e:
                self._failed(e)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailableError(f"object store unavailable: {self._lastError}")
            await deferLater(self._reactor, min(backoff, remaining), lambda: None)
            backoff = min(backoff * 2, 1.0)

    async def _listSeqs(self, sh: _Shard, deadline: float) -> list[int]:
        client = self._client
        assert client is not None
        listed = await self._retry(lambda: client.list(sh.root), deadline)
        n = len(sh.root)
        return sorted(int(k[n:]) for k, _ in listed if k[n:].isdigit())

    async def _refresh(self, sh: _Shard, deadline: float, fillGaps: bool = False) -> None:
        """Read the objects of C{sh} that others wrote since this store last looked.

        With C{fillGaps} (taking the shard), a missing number among the last
        C{s3_max_puts_per_shard} may be a PUT of the previous writer still
        under way: a void object takes it first (or we read what landed).
        """
        seqs = await self._listSeqs(sh, deadline)
        last = sh.seqs[-1] if sh.seqs else 0
        new = [seq for seq in seqs if seq > last]
        if new:
            await self._retry(lambda: defer.ensureDeferred(self._loadObjects(sh, new)), deadline)
        if not fillGaps or not seqs:
            return
        top = max(seqs)
        present = set(seqs)
        window = self._settings.s3_max_puts_per_shard
        for seq in range(max(1, top - window + 1), top):
            if seq in present:
                continue
            token = os.urandom(16)
            body = self._voidBody(sh, token)
            try:
                await self._putDurably(sh.key(seq), body, token, deadline)
                self._apply(sh, seq, decodeHeader(body), None, len(body))
            except _Taken:
                await self._loadObjects(sh, [seq])

    def _voidBody(
        self, sh: _Shard, token: bytes, flags: int = 0, epoch: int | None = None
    ) -> bytes:
        return encodeObject(
            [],
            flags=flags,
            epoch=sh.epoch if epoch is None else epoch,
            first=sh.next,
            next=sh.next,
            start=sh.start,
            minTimestamp=0,
            maxTimestamp=0,
            token=token,
        )

    async def _acquire(self, sh: _Shard, deadline: float) -> None:
        """Take C{sh}: catch up with the bucket, then win the next number with a fence object."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            await self._refresh(sh, deadline, fillGaps=True)
            epoch = sh.epoch + 1
            if self.epochSource is not None:
                given = self.epochSource(sh.name)
                if given is not None:
                    if given < sh.epoch:
                        raise ShardFencedError(
                            f"{sh.name!r} is held at epoch {sh.epoch} > ours ({given})"
                        )
                    epoch = given
            token = os.urandom(16)
            body = self._voidBody(sh, token, FENCE, epoch)
            seq = sh.nextSeq
            try:
                await self._putDurably(sh.key(seq), body, token, deadline)
            except _Taken:
                continue  # someone wrote meanwhile: catch up and try again
            self._apply(sh, seq, decodeHeader(body), [] if sh.keys is not None else None, len(body))
            sh.owned = True
            sh.headNext = sh.next
            sh.headStart = sh.start
            self.log.info(
                "took shard {shard} at epoch {epoch} (sequence {seq})",
                shard=sh.name,
                epoch=epoch,
                seq=seq,
            )
            return
        raise ShardFencedError(f"could not take {sh.name!r}: other writers kept writing")

    async def _settle(self, sh: _Shard, flight: _Flight, deadline: float) -> None:
        """A void object wins the failed number, or the failed object is found stored."""
        assert self._client is not None
        token = os.urandom(16)
        body = self._voidBody(sh, token)
        key = sh.key(flight.seq)
        try:
            await self._putDurably(key, body, token, deadline)
        except _Taken:
            data = await self._retry(lambda: self._client.get(key), deadline)  # type: ignore[union-attr]
            header, records = decodeBody(data)
            if header.token != flight.token:
                raise ShardFencedError(
                    f"sequence {flight.seq} of {sh.name!r} was written by another broker"
                ) from None
            self.log.info(
                "{shard}: a write reported failed was stored after all ({count} records)",
                shard=sh.name,
                count=header.count,
            )
            self._apply(sh, flight.seq, header, records if sh.keys is not None else None, len(data))
            if header.count:
                self._cache.put(key, records, len(data))
            return
        self._apply(sh, flight.seq, decodeHeader(body), None, len(body))

    # -- merging, compaction, deletion ----------------------------------------

    def _maybeRewrite(self, sh: _Shard) -> None:
        """Queue a merge of small objects, or a compaction of a compacted shard."""
        if sh.rewriting or sh.deleted or len(sh.refs) < 2:
            return
        target = self._settings.s3_max_batch_bytes
        small = target // 16
        if sh.keys is not None:
            total = sum(r.count for r in sh.refs)
            if len(sh.refs) < MERGE_RUN or (total - len(sh.keys)) * 2 <= total:
                if len(sh.refs) < MERGE_RUN * 4:
                    return
            run = list(sh.refs)
        else:
            run = []
            for ref in sh.refs[:-1]:
                if ref.size < small and sum(r.size for r in run) + ref.size <= target:
                    run.append(ref)
                elif len(run) >= MERGE_RUN:
                    break
                else:
                    run = []
            if len(run) < MERGE_RUN:
                return
        sh.rewriting = True
        self._track(defer.ensureDeferred(self._rewrite(sh, run))).addErrback(
            lambda f: self.log.failure("rewriting {shard} failed", f, shard=sh.name)
        )

    async def _rewrite(self, sh: _Shard, run: list[_Ref]) -> None:
        try:
            recs: list[dict[str, Any]] = []
            for ref in run:
                recs.extend(await self._records(sh, ref))
            first, nxt = run[0].first, run[-1].next
            if sh.keys is not None:
                recs = [r for r in recs if sh.keys.get(r["key"]) == r["offset"]]
            recs = [r for r in recs if r["offset"] + r.get("span", 1) > sh.start]
            frames = [encodeRecord(r, 0, r.get("span", 1))[0] for r in recs]
            op = _Op("rewrite", self._deadline())
            op.rewrite = (first, nxt, [dict(r) for r in recs], frames, run)
            if sh.deleted or sh.fenced is not None:
                return
            dropped = await self._enqueue(sh, op)
            self.counters["merges"] += 1
            self.log.debug(
                "rewrote {count} objects of {shard} into one ({records} records)",
                count=len(run),
                shard=sh.name,
                records=dropped,
            )
        finally:
            sh.rewriting = False

    def _afterRewrite(self, sh: _Shard, seq: int, replaced: list[_Ref]) -> None:
        """The rewrite object is stored: delete what it replaced and empty objects before it."""
        keys = [r.key for r in replaced]
        empties = [s for s in sh.empties if s < seq]
        for s in empties:
            sh.empties.discard(s)
            keys.append(sh.key(s))
        gone = {r.seq for r in replaced} | set(empties)
        sh.seqs = [s for s in sh.seqs if s not in gone]
        if sh.keys is not None:
            sh.tomb = {k: o for k, o in sh.tomb.items() if o >= replaced[-1].next}
        self._deleteObjects(keys)

    def _dropBelowStart(self, sh: _Shard) -> None:
        """Delete the objects wholly below the shard's start offset."""
        gone = [r for r in sh.refs if r.next <= sh.start]
        if not gone:
            return
        sh.removeRefs(gone)
        seqs = {r.seq for r in gone}
        sh.seqs = [s for s in sh.seqs if s not in seqs]
        for r in gone:
            self._cache.drop(r.key)
        self._deleteObjects([r.key for r in gone])

    def _deleteObjects(self, keys: list[str]) -> None:
        """Delete objects in the background (a failure leaves garbage, never damage)."""
        client = self._client
        if client is None or not keys:
            return
        sem = defer.DeferredSemaphore(4)

        def one(key: str) -> defer.Deferred[None]:
            d = defer.ensureDeferred(client.delete(key))

            def done(_: Any) -> None:
                self.counters["objects_deleted"] += 1

            d.addCallbacks(done, lambda f: self.log.debug("delete {key}: {f}", key=key, f=f.value))
            return d

        for key in keys:
            self._cache.drop(key)
            self._track(sem.run(one, key))

    def deleteBefore(self, shard: str, offset: int) -> defer.Deferred[int]:
        """Raise the start offset (durably, in the next object); whole objects below go."""
        try:
            sh = self._get(shard)
            self._writable(sh)
        except Exception as e:
            return defer.fail(e)
        if offset <= sh.start or (sh.start == sh.next and not sh.pending):
            return defer.succeed(sh.start)
        op = _Op("trim", self._deadline())
        op.offset = int(offset)
        return self._enqueue(sh, op)

    def enforceRetention(self) -> int:
        """Trim owned, non-compacted shards past C{retention_ms} / C{retention_bytes}."""
        if not self._open:
            return 0
        now = self._now()
        trimmed = 0
        for sh in list(self._shards.values()):
            cfg = sh.config
            ms, limit = cfg["retention_ms"], cfg["retention_bytes"]
            if (not ms and not limit) or sh.keys is not None or not sh.owned or not sh.refs:
                continue
            refs = [r for r in sh.refs if r.next > sh.start]
            total = sum(r.size for r in refs)
            n = 0
            for ref in refs:
                if (ms and ref.maxTs < now - ms) or (limit and total - ref.size >= limit):
                    total -= ref.size
                    n += 1
                else:
                    break
            if n:
                trimmed += n
                self.deleteBefore(sh.name, refs[n - 1].next).addErrback(
                    self._retentionFailed, sh.name
                )
        return trimmed

    def _retentionFailed(self, failure: Failure, shard: str) -> None:
        self.log.warn("retention of {shard} failed: {error}", shard=shard, error=failure.value)

    def _expire(self) -> None:
        """Fail queued writes older than the ack timeout (the store is not answering)."""
        for sh in self._all():
            if not sh.pending or not (sh.busy or sh.window):
                continue
            error = StorageUnavailableError(
                f"not stored within s3_ack_timeout_ms: {self._lastError}"
            )
            self._expirePending(sh, error)

    # -- appends -------------------------------------------------------------

    def append(self, shard: str, records: Sequence[dict[str, Any]]) -> defer.Deferred[list[int]]:
        """Queue C{records} for the shard's next object; fires with offsets once it is stored."""
        try:
            sh = self._get(shard)
        except KeyError as e:
            return defer.fail(e)
        if not records:
            try:
                self._writable(sh)
            except Exception as e:
                return defer.fail(e)
            return defer.succeed([])
        return self._enqueueRecords(sh, records)

    def appendSpan(self, shard: str, record: dict[str, Any], span: int) -> defer.Deferred[int]:
        """Append one record occupying C{span} offsets; fires with its first offset."""
        try:
            sh = self._get(shard)
        except KeyError as e:
            return defer.fail(e)
        if isinstance(span, bool) or not isinstance(span, int) or not 1 <= span <= 0x7FFFFFFF:
            return defer.fail(ValueError(f"span must be an int in 1..2**31-1, not {span!r}"))
        if sh.keys is not None:
            return defer.fail(ValueError(f"compacted shard {shard!r} takes no span records"))
        return self._enqueueRecords(sh, [record], span).addCallback(lambda offsets: offsets[0])

    # -- reads ---------------------------------------------------------------

    async def _records(self, sh: _Shard, ref: _Ref) -> list[dict[str, Any]]:
        """The records of one object: memory, disk cache, or a GET."""
        cached = self._cache.get(ref.key)
        if cached is not None:
            return cached
        data = await self._cache.readDisk(ref.key)
        if data is None:
            assert self._client is not None
            try:
                data = await self._client.get(ref.key)
                self._ok()
            except (S3Unavailable, S3Error) as e:
                self._failed(e)
                raise StorageUnavailableError(f"reading {ref.key}: {e}") from e
            self._cache.writeDisk(ref.key, data)
        _, records = decodeBody(data)
        self._cache.put(ref.key, records, len(data))
        return records

    def read(
        self, shard: str, offset: int, maxRecords: int = 1000, maxBytes: int = 1048576
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Acknowledged records from C{offset} (at least one if any exists)."""
        try:
            sh = self._get(shard)
        except KeyError as e:
            return defer.fail(e)
        return defer.ensureDeferred(self._read(sh, offset, maxRecords, maxBytes))

    async def _read(
        self, sh: _Shard, offset: int, maxRecords: int, maxBytes: int
    ) -> list[dict[str, Any]]:
        offset = max(offset, sh.start)
        if offset >= sh.next or not sh.refs:
            return []
        i = max(0, bisect_right(sh.firsts, offset) - 1)
        out: list[dict[str, Any]] = []
        total = 0
        end = sh.next
        for ref in list(sh.refs[i:]):
            if ref.next <= offset:
                continue
            for r in await self._records(sh, ref):
                o = r["offset"]
                if o + r.get("span", 1) <= offset:
                    continue
                if o >= end or len(out) >= maxRecords:
                    return out
                size = recordSize(r)
                if out and total + size > maxBytes:
                    return out
                out.append(dict(r))
                total += size
        return out

    def offsetForTimestamp(self, shard: str, timestamp: int) -> defer.Deferred[int | None]:
        """First readable offset whose timestamp is >= C{timestamp}, or None."""
        try:
            sh = self._get(shard)
        except KeyError as e:
            return defer.fail(e)
        return defer.ensureDeferred(self._offsetForTimestamp(sh, timestamp))

    async def _offsetForTimestamp(self, sh: _Shard, timestamp: int) -> int | None:
        for ref in list(sh.refs):
            if ref.next <= sh.start or ref.maxTs < timestamp:
                continue
            for r in await self._records(sh, ref):
                if r["offset"] + r.get("span", 1) <= sh.start:
                    continue
                if r["timestamp"] >= timestamp:
                    return max(int(r["offset"]), sh.start)
        return None

    def offsets(self, shard: str) -> defer.Deferred[tuple[int, int]]:
        """Fire with C{(startOffset, nextOffset)} of acknowledged records."""
        try:
            sh = self._get(shard)
        except KeyError as e:
            return defer.fail(e)
        return defer.succeed((sh.start, sh.next))

    # -- compacted shards ------------------------------------------------------

    def _keyed(self, shard: str) -> _Shard:
        sh = self._get(shard)
        if sh.keys is None:
            raise NotCompactedError(f"shard {shard!r} is not compacted")
        return sh

    def upsert(
        self, shard: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> defer.Deferred[int]:
        """Append C{key}=C{value} to a compacted shard; fires with its offset."""
        try:
            sh = self._keyed(shard)
            if key is None:
                raise ValueError("upsert needs a key")
        except Exception as e:
            return defer.fail(e)
        d = self._enqueueRecords(sh, [{"key": key, "value": value, "headers": list(headers)}])
        return d.addCallback(lambda offsets: offsets[0])

    def lookup(self, shard: str, key: bytes) -> defer.Deferred[dict[str, Any] | None]:
        """The latest acknowledged record of C{key}, or None."""
        try:
            sh = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        assert sh.keys is not None
        offset = sh.keys.get(bytes(key))
        if offset is None:
            return defer.succeed(None)

        async def find() -> dict[str, Any] | None:
            for r in await self._read(sh, offset, 1, 1):
                if r["offset"] == offset:
                    return r
            return None

        return defer.ensureDeferred(find())

    def _projectedLive(self, sh: _Shard, key: bytes) -> bool:
        """Whether C{key} is live once every queued write is stored."""
        ops = [op for flight in sh.window for op in flight.batch]
        ops.extend(sh.pending)
        for op in reversed(ops):
            for r in reversed(op.records):
                if r["key"] == key:
                    return r["value"] is not None
        assert sh.keys is not None
        return key in sh.keys

    def deleteKey(self, shard: str, key: bytes) -> defer.Deferred[bool]:
        """Append a tombstone for C{key}; fires True if the key was live."""
        try:
            sh = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        if not self._projectedLive(sh, bytes(key)):
            return defer.succeed(False)
        return self._enqueueRecords(sh, [{"key": key, "value": None}]).addCallback(lambda _: True)

    def keys(self, shard: str) -> defer.Deferred[list[bytes]]:
        """The live keys of a compacted shard."""
        try:
            sh = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        assert sh.keys is not None
        return defer.succeed(list(sh.keys))

    # -- consumer groups -------------------------------------------------------

    def _group(self, group: str) -> _Shard:
        oid = _objectId(group)
        sh = self._groups.get(oid)
        if sh is None:
            sh = _Shard(group, f"{self._prefix}g/{oid}/0/", {"compacted": True}, group=True)
            self._groups[oid] = sh
        return sh

    def commitOffset(
        self, group: str, shard: str, offset: int, metadata: bytes = b""
    ) -> defer.Deferred[None]:
        """Store C{group}'s offset for C{shard} in the group's log; fires once stored."""
        if shard not in self._shards:
            return defer.fail(KeyError(shard))
        sh = self._group(group)
        value = int(offset).to_bytes(8, "big", signed=True) + bytes(metadata)
        d = self._enqueueRecords(sh, [{"key": shard.encode("utf-8"), "value": value}])
        return d.addCallback(lambda _: None)

    def fetchOffset(self, group: str, shard: str) -> defer.Deferred[tuple[int, bytes] | None]:
        """Fire with C{(offset, metadata)} committed by C{group} for C{shard}, or None."""
        if shard not in self._shards:
            return defer.fail(KeyError(shard))
        sh = self._groups.get(_objectId(group))
        if sh is None or sh.values is None:
            return defer.succeed(None)
        return defer.succeed(sh.values.get(shard.encode("utf-8")))


class _Taken(Exception):
    """A conditional PUT found its key holding another writer's object."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.epoch = epoch
