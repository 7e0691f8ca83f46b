"""The placement center's state machine: what the leader placement node does.

L{PlacementCenter} keeps cluster metadata in an L{IPlacementBackend} under
these keys (each part percent-encoded, see L{robustmq.placement.kv.keyOf}):

    nodes/<id>              NodeInfo (state alive or dead)
    alive/<id>              empty, bound to the node's liveness lease
    sessions/<client id>    SessionRecord
    routes/<filter>         RouteEntry
    shards/<shard>          ShardRecord
    config/<key>            ConfigEntry
    offsets/<group>/<shard> GroupOffset

Liveness is a backend lease per registered node with a TTL of
C{heartbeat_timeout}; a heartbeat keeps it alive.  When it lapses the
backend deletes C{alive/<id>}, the leader's watch sees it and declares the
node dead: its record says C{dead}, every registered node is told, its
routes are removed and the shards it led move to the live broker with the
fewest shards.  Session records are kept: the next claim of the client id by
another node takes the session over (and tells the old owner if it is back).

Only the leader serves; every call on a follower fails with
L{NotLeaderError} naming the leader's address, and clients go there
(redirect, not proxy).  Leadership is the backend's election
C{"placement"}, bound to this placement node's own lease.

Changes are pushed to the nodes' listeners (L{pb.Referenceable}s handed
over at registration), never polled.  A change is encoded once
(L{encodeRecord}) and queued for every node it concerns; at the end of the
reactor turn each node with queued changes gets them in one
C{updates(chunks)} call (L{encodeBatch}; its L{PlacementListener} turns each
record into C{nodeChanged}, C{routeChanged}, C{shardChanged},
C{configChanged} or C{sessionTakenOver}).  A node has at most one such call
unacknowledged; what is queued meanwhile goes in its next call, so a slow
node gets fewer, larger batches.  Records queued or unacknowledged per node
are bounded by C{max_pending_pushes}; at the bound the node is
disconnected, and re-registering gives it a fresh snapshot.

The leader keeps C{nodes/}, C{routes/}, C{shards/}, C{config/} and
C{alive/} in memory (L{_PrefixCache}: the stored bytes and the decoded
record of each key), so registration snapshots, listings and scheduling do
not re-read and re-decode the backend.  They are loaded when leadership
starts (until then reads go to the backend), written through by the
leader's own writes, and checked against the backend's watches: an event
that disagrees with the cache makes the key be read again.  Each prefix
holds at most L{CACHE_LIMIT} entries; a prefix that outgrows it is no
longer cached and is read from the backend instead.  Session records and
offsets are never cached: they stay in the backend only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from robustmq.config import PlacementSettings
from robustmq.placement.errors import (
    InvalidRecordError,
    LeaseNotFoundError,
    LimitError,
    NotLeaderError,
    NotRegisteredError,
    PermissionDeniedError,
)
from robustmq.placement.kv import keyOf, lastPart
from robustmq.placement.records import (
    SNAPSHOT_SECTIONS,
    ConfigEntry,
    EncodedSnapshot,
    GroupOffset,
    NodeInfo,
    RouteEntry,
    SessionRecord,
    ShardRecord,
    decodeRecord,
    encodeBatch,
    encodeRecord,
)

ELECTION = "placement"
#: Attempts of one read-modify-write before giving up (contention bound).
CAS_ATTEMPTS = 32
#: Most keys one prefix cache holds (each costs about half a KiB: the stored
#: bytes, the decoded record, the dict slot); a prefix that outgrows it is
#: read from the backend instead.
CACHE_LIMIT = 100_000
#: Seconds before a key whose re-read failed is read again.
REFRESH_RETRY = 1.0

#: A watch event value that never matches the cache (forces a re-read).
_UNKNOWN = object()


class _Member:
    """A registered node as the leader sees it.

    @ivar queue: encoded records not yet sent to it (the same bytes objects
        are queued for every node).
    @ivar inFlight: records in its unacknowledged C{updates} call (0: none).
    @ivar ready: whether it waits in the center's list of nodes to send to.
    """

    __slots__ = ("info", "listener", "lease", "avatar", "queue", "inFlight", "ready")

    def __init__(self, info: NodeInfo, listener: Any, lease: int, avatar: Any) -> None:
        self.info = info
        self.listener = listener
        self.lease = lease
        self.avatar = avatar
        self.queue: list[bytes] = []
        self.inFlight = 0
        self.ready = False

    @property
    def pending(self) -> int:
        """Pushed records queued or not yet acknowledged."""
        return len(self.queue) + self.inFlight


class _PrefixCache:
    """The records under one key prefix, as the leader keeps them in memory.

    C{entries} maps a key to its stored bytes, decoded record and the
    revision they were read or written at (None when unknown: writes by
    compare-and-set, which the backend orders for us).  It is written only
    with what the backend holds: the listing when leadership starts, the
    leader's own writes, and re-reads of keys a watch reported.
    """

    __slots__ = (
        "prefix",
        "cls",
        "entries",
        "enabled",
        "loaded",
        "suspects",
        "refreshing",
        "_order",
    )

    log = Logger()

    def __init__(self, prefix: str, cls: type | None) -> None:
        self.prefix = prefix
        self.cls = cls
        self.entries: dict[str, tuple[bytes, Any, int | None]] = {}
        #: False once the prefix outgrew L{CACHE_LIMIT} (until leadership starts again).
        self.enabled = True
        self.loaded = False
        #: Keys a watch reported since the last check: key -> value seen (None: deleted).
        self.suspects: dict[str, Any] = {}
        #: Keys being re-read: key -> the token of the newest re-read.
        self.refreshing: dict[str, object] = {}
        self._order: list[str] | None = None

    @property
    def usable(self) -> bool:
        return self.loaded and self.enabled

    def reset(self) -> None:
        """Forget everything (leadership ended or starts)."""
        self.entries.clear()
        self.suspects.clear()
        self.refreshing.clear()
        self.enabled = True
        self.loaded = False
        self._order = None

    def load(self, kvs: list[Any]) -> None:
        """Fill from a listing of the prefix (before any write of this leadership)."""
        for kv in kvs:
            self._store(kv.key, kv.value, None, kv.modRevision)
        self.loaded = True

    def set(
        self, key: str, raw: bytes | None, record: Any = None, revision: int | None = None
    ) -> None:
        """The backend holds C{raw} (None: nothing) under C{key}, as of C{revision} if known."""
        self.refreshing.pop(key, None)  # a re-read begun earlier may be older
        if not self.usable:
            return
        if raw is None:
            if self.entries.pop(key, None) is not None:
                self._order = None
            return
        self._store(key, raw, record, revision)

    def _store(self, key: str, raw: bytes, record: Any, revision: int | None) -> None:
        old = self.entries.get(key)
        if old is not None and None not in (old[2], revision) and revision < old[2]:  # type: ignore[operator]
            return  # a put answered out of order
        if record is None and self.cls is not None:
            try:
                record = decodeRecord(raw, self.cls)
            except InvalidRecordError as e:
                self.log.warn("placement: {key} is not a valid record: {error}", key=key, error=e)
                if self.entries.pop(key, None) is not None:
                    self._order = None
                return
        if old is None:
            if len(self.entries) >= CACHE_LIMIT:
                self.log.warn(
                    "placement: more than {limit} keys under {prefix}; reading them from the "
                    "backend from now on",
                    limit=CACHE_LIMIT,
                    prefix=self.prefix,
                )
                self.enabled = False
                self.entries.clear()
                self.suspects.clear()
                self._order = None
                return
            self._order = None
        self.entries[key] = (raw, record, revision)

    def raw(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    def get(self, key: str) -> Any:
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def _keys(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self.entries)
        return self._order

    def rawValues(self) -> list[bytes]:
        """The stored bytes of every key, in key order (as the backend lists them)."""
        entries = self.entries
        return [entries[k][0] for k in self._keys()]

    def records(self) -> list[Any]:
        """The records of every key, in key order."""
        entries = self.entries
        return [entries[k][1] for k in self._keys()]


class PlacementCenter:
    """Cluster metadata and scheduling on top of a backend.

    @param advertise: this placement node's C{host:port} (its election candidate).
    """

    log = Logger()

    def __init__(
        self, backend: Any, settings: PlacementSettings, reactor: Any, advertise: str
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.reactor = reactor
        self.advertise = advertise
        self.leading = False
        self.leaderAddress = ""
        self.members: dict[str, _Member] = {}
        self._lease = 0
        self._keeper: LoopingCall | None = None
        self._campaign: Deferred[None] | None = None
        self._watches: list[Any] = []
        self._stopping = False
        #: While set, no node is declared dead (a node stopping all its workers, see L{quiesce}).
        self.quiet = False
        #: Incremented when leadership ends: work begun in an earlier term stops.
        self._term = 0
        self._nodes = _PrefixCache("nodes/", NodeInfo)
        self._routes = _PrefixCache("routes/", RouteEntry)
        self._shards = _PrefixCache("shards/", ShardRecord)
        self._config = _PrefixCache("config/", ConfigEntry)
        #: The liveness keys (their values are empty).
        self._alive = _PrefixCache("alive/", None)
        #: In the order of the snapshot's sections (records.SNAPSHOT_SECTIONS).
        self._sections = (self._nodes, self._routes, self._shards, self._config)
        self._caches = (*self._sections, self._alive)
        #: Members with records queued and no push in flight.
        self._ready: list[_Member] = []
        self._flushCall: IDelayedCall | None = None
        self._checkCall: IDelayedCall | None = None
        #: Called with no argument when leadership is lost (the server drops connections).
        self.onStepDown: Callable[[], None] = lambda: None
        self.becameLeader: Deferred[None] = Deferred()

    # Leadership

    async def start(self) -> None:
        """Join the election (in the background) and follow who leads."""
        self._watches.append(await self.backend.observe(ELECTION, self._leaderChanged))
        self.leaderAddress = await self.backend.leader(ELECTION) or ""
        await self._runForLeader()

    async def _runForLeader(self) -> None:
        self._lease = await self.backend.grantLease(self.settings.heartbeat_timeout)
        self._keeper = LoopingCall(self._keepOwnLease)
        self._keeper.clock = self.reactor
        self._keeper.start(max(self.settings.heartbeat_timeout / 3, 0.05), now=False)
        self._campaign = self.backend.campaign(ELECTION, self.advertise, self._lease)
        self._campaign.addCallbacks(self._won, lambda f: f.trap(Exception) and None)

    def _won(self, _: Any) -> None:
        ensureDeferred(self._lead()).addErrback(self._leadFailed)

    def _leadFailed(self, failure: Any) -> None:
        self.log.failure("taking up placement leadership failed; campaigning again", failure)
        if not self._stopping:
            ensureDeferred(self._stepDown(again=True)).addErrback(
                lambda f: self.log.failure("campaigning again failed", f)
            )

    def _keepOwnLease(self) -> Deferred[None]:
        d = self.backend.keepAlive(self._lease)

        def lost(f: Any) -> None:
            if f.check(LeaseNotFoundError) and not self._stopping:
                self.log.warn("placement node lease lost; stepping down and campaigning again")
                ensureDeferred(self._stepDown(again=True))
            else:
                self.log.warn(
                    "placement lease keep-alive failed: {error}", error=f.getErrorMessage()
                )

        return d.addCallbacks(lambda _: None, lost)

    def _leaderChanged(self, leader: str | None) -> None:
        self.leaderAddress = leader or ""
        if self.leading and leader != self.advertise and not self._stopping:
            self.log.warn("placement leadership moved to {leader}", leader=leader)
            ensureDeferred(self._stepDown(again=True))

    async def _watch(self, term: int, prefix: str, onPut: Any, onDelete: Any) -> bool:
        """Watch C{prefix} for this term; False if the term ended meanwhile."""
        watch = await self.backend.watch(prefix, onPut, onDelete)
        if term != self._term or self._stopping:
            watch.stop()
            return False
        self._watches.append(watch)
        return True

    async def _lead(self) -> None:
        if self._stopping:
            return
        term = self._term
        self.leading = True
        self.leaderAddress = self.advertise
        self.log.info("placement node {address} is the leader", address=self.advertise)
        # Watch first, then list: a change made in between is both listed and
        # reported.  Until a prefix is listed, reads of it go to the backend.
        for cache in self._caches:
            cache.reset()

        def onDelete(cache: _PrefixCache, key: str) -> None:
            self._suspect(cache, key, None)
            if cache is self._alive:
                self._aliveGone(key)

        watching = await _all(
            [
                ensureDeferred(
                    self._watch(
                        term,
                        cache.prefix,
                        lambda kv, cache=cache: self._suspect(cache, kv.key, kv.value),
                        lambda key, cache=cache: onDelete(cache, key),
                    )
                )
                for cache in self._caches
            ]
        )
        if not all(watching):
            return
        listed = await _all([self.backend.list(cache.prefix) for cache in self._caches])
        if term != self._term or self._stopping:
            return
        for cache, kvs in zip(self._caches, listed, strict=True):
            cache.load(kvs)
        self._scheduleCheck(0)
        # Nodes that went silent while nobody led: their lease is gone.
        alive = await self._aliveIds()
        for info in await self._records(self._nodes):
            if info.state == "alive" and info.nodeId not in alive:
                await self._declareDead(info.nodeId)
        if not self.becameLeader.called:
            self.becameLeader.callback(None)

    async def _stepDown(self, again: bool) -> None:
        wasLeading, self.leading = self.leading, False
        self._term += 1
        for watch in self._watches[1:]:
            watch.stop()
        del self._watches[1:]
        if self._keeper is not None and self._keeper.running:
            self._keeper.stop()
        if self._campaign is not None and not self._campaign.called:
            self._campaign.cancel()
        self.members.clear()
        self._ready.clear()
        for call in (self._flushCall, self._checkCall):
            if call is not None and call.active():
                call.cancel()
        self._flushCall = self._checkCall = None
        for cache in self._caches:
            cache.reset()
        if wasLeading:
            self.onStepDown()
        if again and not self._stopping:
            await self._runForLeader()

    async def stop(self) -> None:
        """Resign (so another placement node takes over at once) and stop."""
        self._stopping = True
        leading = self.leading
        await self._stepDown(again=False)
        for watch in self._watches:
            watch.stop()
        self._watches.clear()
        try:
            if leading:
                await self.backend.resign(ELECTION, self.advertise)
            await self.backend.revokeLease(self._lease)
        except Exception as e:
            self.log.warn("placement resign failed: {error}", error=str(e))

    # Checks

    def _requireLeader(self) -> None:
        if not self.leading:
            raise NotLeaderError(self.leaderAddress)

    def _member(self, nodeId: str) -> _Member:
        self._requireLeader()
        member = self.members.get(nodeId)
        if member is None:
            raise NotRegisteredError(f"node {nodeId} is not registered")
        return member

    # The caches

    def _suspect(self, cache: _PrefixCache, key: str, value: Any) -> None:
        """A watch reported C{key}: compare it with the cache at the end of this turn.

        Not sooner: the event may be the echo of a write of ours whose result
        is about to be written through.  The event's value is never stored
        (it may be an old one arriving late); a mismatch re-reads the key.
        """
        if cache.enabled:
            cache.suspects[key] = value
            self._scheduleCheck(0)

    def _scheduleCheck(self, delay: float) -> None:
        if self._checkCall is None:
            self._checkCall = self.reactor.callLater(delay, self._checkSuspects)

    def _checkSuspects(self) -> None:
        self._checkCall = None
        for cache in self._caches:
            if not cache.usable:
                continue  # still loading: checked once loaded
            suspects, cache.suspects = cache.suspects, {}
            for key, value in suspects.items():
                if value is _UNKNOWN or cache.raw(key) != value:
                    ensureDeferred(self._refresh(cache, key))

    async def _refresh(self, cache: _PrefixCache, key: str) -> None:
        """Read C{key} again; stored unless one of our writes (or a newer re-read) came first."""
        token = object()
        cache.refreshing[key] = token
        try:
            kv = await self.backend.get(key)
        except Exception as e:
            if cache.refreshing.get(key) is token:
                del cache.refreshing[key]
                self.log.warn("placement: re-reading {key} failed: {error}", key=key, error=str(e))
                if cache.usable:
                    cache.suspects[key] = _UNKNOWN
                    self._scheduleCheck(REFRESH_RETRY)
            return
        if cache.refreshing.get(key) is token:
            if kv is None:
                cache.set(key, None)
            else:
                cache.set(key, kv.value, None, kv.modRevision)

    async def _records(self, cache: _PrefixCache) -> list[Any]:
        if cache.usable:
            return cache.records()
        return [decodeRecord(kv.value, cache.cls) for kv in await self.backend.list(cache.prefix)]

    async def _rawValues(self, cache: _PrefixCache) -> list[bytes]:
        if cache.usable:
            return cache.rawValues()
        return [kv.value for kv in await self.backend.list(cache.prefix)]

    async def _cached(self, cache: _PrefixCache, key: str) -> Any:
        if cache.usable:
            return cache.get(key)
        return await self._get(key, cache.cls)

    async def _put(
        self, cache: _PrefixCache, key: str, record: Any, raw: bytes | None = None, lease: int = 0
    ) -> None:
        raw = encodeRecord(record) if raw is None else raw
        revision = await self.backend.put(key, raw, lease)
        cache.set(key, raw, record, revision if isinstance(revision, int) else None)

    async def _aliveIds(self) -> set[str]:
        """Ids of the nodes whose liveness key exists."""
        if self._alive.usable:
            keys: Any = self._alive.entries
        else:
            keys = [kv.key for kv in await self.backend.list(self._alive.prefix)]
        return {lastPart(key) for key in keys}

    # Pushes

    def _push(self, record: Any, exclude: str | None = None) -> None:
        """Send C{record} to every registered node but C{exclude} (batched per turn)."""
        data = encodeRecord(record)
        for nodeId, member in list(self.members.items()):
            if nodeId != exclude:
                self._queue(member, data)

    def _queue(self, member: _Member, data: bytes) -> None:
        if member.listener is None or not self.leading:
            return
        if member.pending >= self.settings.max_pending_pushes:
            self.log.warn(
                "node {node} has {count} unacknowledged placement updates; disconnecting it",
                node=member.info.nodeId,
                count=member.pending,
            )
            self._disconnect(member)
            return
        member.queue.append(data)
        self._schedule(member)

    def _schedule(self, member: _Member) -> None:
        if member.inFlight or member.ready:
            return
        member.ready = True
        self._ready.append(member)
        if self._flushCall is None:
            self._flushCall = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        ready, self._ready = self._ready, []
        for member in ready:
            member.ready = False
            self._send(member)

    def _send(self, member: _Member) -> None:
        listener = member.listener
        if self.members.get(member.info.nodeId) is not member or listener is None:
            member.queue.clear()  # replaced, dead or disconnected: a snapshot follows
            return
        if member.inFlight or not member.queue:
            return
        batch, member.queue = member.queue, []
        member.inFlight = len(batch)
        try:
            d = listener.callRemote("updates", encodeBatch(batch))
        except pb.DeadReferenceError:
            member.inFlight = 0
            return
        d.addBoth(self._pushed, member)

    def _pushed(self, result: Any, member: _Member) -> None:
        member.inFlight = 0
        if isinstance(result, Failure) and not result.check(
            pb.PBConnectionLost, pb.DeadReferenceError
        ):
            self.log.warn(
                "push to node {node} failed: {error}",
                node=member.info.nodeId,
                error=result.getErrorMessage(),
            )
        if member.queue:
            self._schedule(member)

    def _disconnect(self, member: _Member) -> None:
        listener, member.listener = member.listener, None
        member.queue.clear()
        broker = getattr(listener, "broker", None)
        if broker is not None and broker.transport is not None:
            broker.transport.loseConnection()

    def detach(self, nodeId: str, avatar: Any) -> None:
        """The node's PB connection closed: stop pushing to it (its lease decides liveness)."""
        member = self.members.get(nodeId)
        if member is not None and member.avatar is avatar:
            member.listener = None
            member.queue.clear()

    # Registration and liveness

    async def register(
        self, nodeId: str, info: NodeInfo, listener: Any, avatar: Any = None
    ) -> EncodedSnapshot:
        """Add or re-add a node; fires with a snapshot of nodes, routes, shards and config
        (an L{EncodedSnapshot}: the node receives a L{robustmq.placement.records.Snapshot})."""
        self._requireLeader()
        if not isinstance(info, NodeInfo) or info.nodeId != nodeId:
            raise PermissionDeniedError(f"node {nodeId} may only register itself")
        if nodeId not in self.members and len(self.members) >= self.settings.max_nodes:
            raise LimitError(f"{self.settings.max_nodes} nodes registered (max_nodes)")
        info = NodeInfo(info.nodeId, info.roles, info.addresses, info.startedAt, "alive")
        key = keyOf("nodes", nodeId)
        raw = encodeRecord(info)
        # The lease and the node record do not depend on each other: one commit.
        lease, revision = await _all(
            [self.backend.grantLease(self.settings.heartbeat_timeout), self.backend.put(key, raw)]
        )
        self._nodes.set(key, raw, info, revision)
        # Re-attach the liveness key to the new lease before ending the old one,
        # so a re-registration never looks like a death.
        await self._put(self._alive, keyOf("alive", nodeId), None, b"", lease)
        self._requireLeader()  # still: the writes took a while
        old = self.members.get(nodeId)
        self.members[nodeId] = _Member(info, listener, lease, avatar)
        if old is not None:
            old.queue.clear()
            if old.lease != lease:
                await self.backend.revokeLease(old.lease)
        self.log.info("node {node} registered", node=nodeId)
        self._push(info, exclude=nodeId)
        return EncodedSnapshot(
            {
                name: await self._rawValues(cache)
                for name, cache in zip(SNAPSHOT_SECTIONS, self._sections, strict=True)
            }
        )

    async def heartbeat(self, nodeId: str) -> float:
        """Keep the node alive; fires with the timeout it must beat."""
        member = self._member(nodeId)
        try:
            await self.backend.keepAlive(member.lease)
        except LeaseNotFoundError:
            if self.members.get(nodeId) is member:
                del self.members[nodeId]
            raise NotRegisteredError(f"node {nodeId} was declared dead; register again") from None
        return self.settings.heartbeat_timeout

    def _aliveGone(self, key: str) -> None:
        if not self.leading:
            return  # a leader that starts checks every node
        ensureDeferred(self._declareDead(lastPart(key), check=True)).addErrback(
            lambda f: self.log.failure("declaring a node dead failed", f)
        )

    async def leave(self, nodeId: str) -> None:
        """The node is stopping cleanly: declare it dead now, not after
        C{heartbeat_timeout}, so that what it did moves at once (its routes,
        shards, and — on the brokers — its sessions)."""
        member = self._member(nodeId)
        await self._declareDead(nodeId, why="left the cluster")
        try:
            await self.backend.revokeLease(member.lease)
        except LeaseNotFoundError:
            pass

    def quiesce(self) -> None:
        """Declare no node dead from now on: every member is stopping on purpose.

        A node's worker processes stopping together (docs/workers.md) leave
        as they stop; declared dead, each would have its persistent sessions
        adopted by a worker that is stopping too.  Quiet, every worker keeps
        its own sessions in its own store for the next start.
        """
        self.quiet = True

    async def declareDead(self, nodeId: str, why: str) -> None:
        """Declare C{nodeId} dead now: its process is known to be gone (a worker that
        exited), so its sessions need not wait for C{heartbeat_timeout} to move."""
        member = self.members.get(nodeId)
        await self._declareDead(nodeId, why=why)
        if member is not None:
            try:
                await self.backend.revokeLease(member.lease)
            except LeaseNotFoundError:
                pass

    async def _declareDead(
        self, nodeId: str, check: bool = False, why: str = "no heartbeat"
    ) -> None:
        if self.quiet:
            return
        aliveKey = keyOf("alive", nodeId)
        if check and await self.backend.get(aliveKey) is not None:
            return  # re-registered meanwhile
        self._alive.set(aliveKey, None)
        key = keyOf("nodes", nodeId)
        info = await self._cached(self._nodes, key)
        member = self.members.pop(nodeId, None)
        if info is None or (info.state == "dead" and member is None):
            return  # already declared (a leave, then its lease's end)
        dead = NodeInfo(info.nodeId, info.roles, info.addresses, info.startedAt, "dead")
        await self._put(self._nodes, key, dead)
        self.log.warn("node {node} declared dead ({why})", node=nodeId, why=why)
        self._push(dead)
        if member is not None:
            self._disconnect(member)
        for entry in await self._records(self._routes):
            if nodeId in entry.nodeIds:
                await self._changeRoute(entry.filter, nodeId, add=False)
        for shard in await self._records(self._shards):
            if shard.leader == nodeId and not shard.pinned:
                await self._moveShard(shard.shard, shard)

    async def listNodes(self, nodeId: str | None = None) -> list[NodeInfo]:
        if nodeId is not None:
            self._member(nodeId)
        return await self._records(self._nodes)

    async def _get(self, key: str, cls: Any) -> Any:
        kv = await self.backend.get(key)
        return None if kv is None else decodeRecord(kv.value, cls)

    async def _update(
        self,
        key: str,
        change: Callable[[bytes | None], Awaitable[bytes | None] | bytes | None],
        cache: _PrefixCache | None = None,
    ) -> bool:
        """Read-modify-write C{key} with compare-and-set; True if it changed.

        With a C{cache}, the first attempt takes the current value from it
        (the compare-and-set checks it); a stale or unchanged value is read
        from the backend again.
        """
        fromCache = cache is not None and cache.usable
        for _ in range(CAS_ATTEMPTS):
            if fromCache:
                current = cache.raw(key)  # type: ignore[union-attr]
            else:
                kv = await self.backend.get(key)
                current = None if kv is None else kv.value
            new = change(current)
            if hasattr(new, "__await__"):
                new = await new  # type: ignore[misc]
            if new == current:
                if fromCache:
                    fromCache = False
                    continue
                return False
            if await self.backend.compareAndSet(key, current, new):
                if cache is not None:
                    cache.set(key, new)  # type: ignore[arg-type]
                return True
            fromCache = False
        raise LimitError(f"{key}: too much contention ({CAS_ATTEMPTS} attempts)")

    # Cluster config

    async def setConfig(self, nodeId: str, key: str, value: str) -> ConfigEntry:
        self._member(nodeId)
        entry = ConfigEntry(key, value)
        await self._put(self._config, keyOf("config", key), entry)
        self._push(entry)
        return entry

    async def getConfig(self, nodeId: str, key: str) -> ConfigEntry | None:
        self._member(nodeId)
        return await self._cached(self._config, keyOf("config", key))  # type: ignore[no-any-return]

    # Sessions

    async def claimSession(
        self, nodeId: str, clientId: str, expiryInterval: int
    ) -> SessionRecord | None:
        """Make C{nodeId} the owner of C{clientId}'s session; fires with the previous record."""
        self._member(nodeId)
        record = SessionRecord(clientId, nodeId, expiryInterval, time.time())
        key = keyOf("sessions", clientId)
        raw = encodeRecord(record)
        # A client id without a record (a new client) costs one operation.
        if await self.backend.compareAndSet(key, None, raw):
            return None
        previous: list[SessionRecord | None] = [None]

        def change(current: bytes | None) -> bytes:
            previous[0] = None if current is None else decodeRecord(current, SessionRecord)
            return raw

        await self._update(key, change)
        old = previous[0]
        if old is not None and old.nodeId != nodeId and old.nodeId in self.members:
            self._queue(self.members[old.nodeId], raw)
        return old

    async def releaseSession(self, nodeId: str, clientId: str) -> bool:
        """Forget the session if C{nodeId} owns it."""
        self._member(nodeId)
        key = keyOf("sessions", clientId)
        kv = await self.backend.get(key)
        if kv is None:
            return False
        if decodeRecord(kv.value, SessionRecord).nodeId != nodeId:
            raise PermissionDeniedError(f"session {clientId!r} belongs to another node")
        return bool(await self.backend.compareAndSet(key, kv.value, None))

    async def lookupSession(self, nodeId: str, clientId: str) -> SessionRecord | None:
        self._member(nodeId)
        return await self._get(keyOf("sessions", clientId), SessionRecord)  # type: ignore[no-any-return]

    # Routes

    async def addRoute(self, nodeId: str, topicFilter: str) -> RouteEntry:
        self._member(nodeId)
        return await self._changeRoute(topicFilter, nodeId, add=True)

    async def removeRoute(self, nodeId: str, topicFilter: str) -> RouteEntry:
        self._member(nodeId)
        return await self._changeRoute(topicFilter, nodeId, add=False)

    async def _changeRoute(self, topicFilter: str, nodeId: str, add: bool) -> RouteEntry:
        RouteEntry(topicFilter)  # validates the filter
        result: list[RouteEntry] = []

        def change(current: bytes | None) -> bytes | None:
            nodes = set() if current is None else set(decodeRecord(current, RouteEntry).nodeIds)
            (nodes.add if add else nodes.discard)(nodeId)
            entry = RouteEntry(topicFilter, tuple(nodes))
            result[:] = [entry]
            return encodeRecord(entry) if nodes else None

        if await self._update(keyOf("routes", topicFilter), change, self._routes):
            self._push(result[0], exclude=nodeId)
        return result[0]

    async def listRoutes(self, nodeId: str) -> list[RouteEntry]:
        self._member(nodeId)
        return await self._records(self._routes)

    # Shards

    async def _liveBrokers(self) -> list[str]:
        alive = await self._aliveIds()
        return sorted(
            info.nodeId
            for info in await self._records(self._nodes)
            if info.nodeId in alive and "broker" in info.roles
        )

    async def assignShard(self, nodeId: str, shard: str, pinned: bool = False) -> ShardRecord:
        """The shard's leader: kept if alive (or if the shard is C{pinned} to it), else the
        live broker leading fewest shards.

        @param pinned: a new shard's data lives only on its leader (a local store).
        """
        self._member(nodeId)
        return await self._moveShard(shard, None, pinned=bool(pinned))

    async def moveShard(self, nodeId: str, shard: str, to: str) -> ShardRecord:
        """Move the shard's leadership to live broker C{to} (a rebalance), epoch + 1."""
        self._member(nodeId)
        return await self._moveShard(shard, None, to=to)

    async def allocateIds(self, nodeId: str, name: str, count: int) -> int:
        """Reserve C{count} consecutive ids of sequence C{name}; returns the first.

        Cluster-unique (compare-and-set on the backend): Kafka producer ids come
        in such blocks, so that two brokers never hand out the same one.
        """
        self._member(nodeId)
        if not isinstance(name, str) or not name or not isinstance(count, int) or count < 1:
            raise InvalidRecordError("allocateIds(name: str, count: int >= 1)")
        first: list[int] = []

        def change(raw: bytes | None) -> bytes:
            start = int(raw.decode()) if raw else 1
            first[:] = [start]
            return b"%d" % (start + count)

        await self._update(keyOf("ids", name), change)
        return first[0]

    async def _moveShard(
        self,
        shard: str,
        current: ShardRecord | None,
        pinned: bool = False,
        to: str | None = None,
    ) -> ShardRecord:
        result: list[ShardRecord] = []

        async def change(raw: bytes | None) -> bytes | None:
            record = None if raw is None else decodeRecord(raw, ShardRecord)
            live = await self._liveBrokers()
            if to is not None:
                if to not in live:
                    raise InvalidRecordError(f"{to} is not a live broker")
                if record is not None and record.leader == to:
                    result[:] = [record]
                    return raw
                epoch = 0 if record is None else record.epoch + 1
                moved = ShardRecord(shard, to, epoch, record.pinned if record else pinned)
                result[:] = [moved]
                return encodeRecord(moved)
            if record is not None and (record.leader in live or record.pinned):
                result[:] = [record]
                return raw
            load = dict.fromkeys(live, 0)
            for other in await self._records(self._shards):
                if other.leader in load:
                    load[other.leader] += 1
            leader = min(live, key=lambda n: (load[n], n)) if live else ""
            epoch = 0 if record is None else record.epoch + 1
            new = ShardRecord(shard, leader, epoch, record.pinned if record else pinned)
            result[:] = [new]
            return encodeRecord(new)

        if await self._update(keyOf("shards", shard), change, self._shards):
            self.log.info(
                "shard {shard} led by {leader} (epoch {epoch})",
                shard=shard,
                leader=result[0].leader or "nobody",
                epoch=result[0].epoch,
            )
            self._push(result[0])
        return result[0]

    async def getShard(self, nodeId: str, shard: str) -> ShardRecord | None:
        self._member(nodeId)
        return await self._cached(self._shards, keyOf("shards", shard))  # type: ignore[no-any-return]

    # Consumer-group offsets

    async def commitOffset(
        self, nodeId: str, group: str, shard: str, offset: int, metadata: str = ""
    ) -> GroupOffset:
        self._member(nodeId)
        record = GroupOffset(group, shard, offset, metadata)
        await self.backend.put(keyOf("offsets", group, shard), encodeRecord(record))
        return record

    async def fetchOffset(self, nodeId: str, group: str, shard: str) -> GroupOffset | None:
        self._member(nodeId)
        return await self._get(keyOf("offsets", group, shard), GroupOffset)  # type: ignore[no-any-return]


async def _all(deferreds: list[Deferred[Any]]) -> list[Any]:
    """The results of C{deferreds}, run together; the first failure is raised as is."""
    try:
        return await gatherResults(deferreds, consumeErrors=True)  # type: ignore[no-any-return]
    except FirstError as e:
        e.subFailure.raiseException()
        raise  # not reached


__all__ = ["CACHE_LIMIT", "ELECTION", "PlacementCenter"]
