"""Copies of persistent sessions on a second broker, so a node's death loses none.

The owner side is L{ReplicatingStore}: it stands in for the shard store
under the broker's L{SessionPersistence}; every upsert or delete of the
session shards (C{mqtt/sessions}, C{mqtt/session-messages},
C{mqtt/incoming-qos2}) is also sent to the replica broker, and the write's
Deferred fires once both copies are durable.  Will messages of connected
clients go to the replica only (shard C{cluster/wills}).  When the replica
link is down the owner goes on alone (I{degraded}) and sends a full copy
(reset + every row, built from memory in one reactor turn, so nothing
interleaves) once a replica is reachable again.

The replica side is L{ReplicaStore}: it keeps each origin's rows in its own
store under C{cluster/replica/<origin>/<shard>} and, when the placement
center declares the origin dead, hands them to the adoption (L{load}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.cluster import wire
from robustmq.core.persistence import INCOMING, MESSAGES, SESSIONS, SessionPersistence

#: The shards whose writes are replicated.
REPLICATED = frozenset({SESSIONS, MESSAGES, INCOMING})
#: Wills of connected clients (kept on the replica only).
WILLS = "cluster/wills"
#: A reset op: forget everything of this origin (precedes a full copy).
RESET = 2
REPLICA_PREFIX = "cluster/replica/"


def replicaPrefix(origin: str) -> str:
    """Where a replica keeps the rows of C{origin}."""
    return f"{REPLICA_PREFIX}{origin}/"


class ReplicatingStore:
    """An L{IShardStore} wrapper that also writes session rows to the replica broker."""

    log = Logger()

    def __init__(self, store: Any, replicator: Any) -> None:
        self._store = store
        self._replicator = replicator
        self.durable = getattr(store, "durable", True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def upsert(
        self, shard: str, key: bytes, value: bytes, headers: Any = ()
    ) -> defer.Deferred[Any]:
        local = self._store.upsert(shard, key, value, headers)
        if shard not in REPLICATED:
            return local  # type: ignore[no-any-return]
        return self._both(local, self._replicator.op(wire.UPSERT, shard, key, value))

    def deleteKey(self, shard: str, key: bytes) -> defer.Deferred[Any]:
        local = self._store.deleteKey(shard, key)
        if shard not in REPLICATED:
            return local  # type: ignore[no-any-return]
        return self._both(local, self._replicator.op(wire.DELETE, shard, key, None))

    @staticmethod
    def _both(local: defer.Deferred[Any], remote: defer.Deferred[Any] | None) -> Any:
        if remote is None:
            return local
        d = defer.gatherResults([local, remote], consumeErrors=True)
        # Fail with the local write's own error (the remote side never fails; see Replicator).
        d.addErrback(lambda f: f.value.subFailure)
        return d


class Replicator:
    """The owner side's stream of rows to its replica broker.

    @ivar target: the replica's node id, or None (no other broker, or replication off).
    @ivar synced: the replica holds a full copy and receives every change.
    """

    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.target: str | None = None
        self.synced = False
        self._generation = 0

    def op(
        self, op: int, shard: str, key: bytes, value: bytes | None
    ) -> defer.Deferred[Any] | None:
        """Send one row change; a Deferred fired once the replica has it durably (or gave up)."""
        if not self.synced or self.target is None:
            return None
        link = self.node.links.get(self.target)
        if link is None:
            return None
        d = link.send("replicate", wire.encodeOp(op, shard, key, value), 1)
        if d is None:
            return None
        generation = self._generation
        d.addErrback(self._failed, generation)
        return d

    def _failed(self, failure: Any, generation: int) -> None:
        if generation == self._generation and self.synced:
            self.log.warn(
                "replication to {target} failed ({error}); going on unreplicated until a full copy",
                target=self.target,
                error=failure.getErrorMessage(),
            )
            self.synced = False
            self.node.reactor.callLater(1.0, self.node.chooseReplica, True)

    def retarget(self, target: str | None, force: bool = False) -> None:
        """Replicate to C{target} from now on, starting with a full copy if it changed."""
        if target == self.target and (self.synced or not force) and not force:
            return
        self._generation += 1
        self.target = target
        self.synced = False
        if target is None:
            return
        link = self.node.links.get(target)
        if link is None:
            return
        entries = [wire.encodeOp(RESET, "", b"", None)]
        entries.extend(wire.encodeOp(wire.UPSERT, s, k, v) for s, k, v in self.node.sessionRows())
        entries.extend(
            wire.encodeOp(wire.UPSERT, WILLS, cid.encode(), value)
            for cid, value in self.node.wills.items()
        )
        generation = self._generation
        waits = [link.send("replicate", entry, 1) for entry in entries]
        self.synced = True
        self.log.info(
            "replicating persistent sessions to {target} ({n} rows copied)",
            target=target,
            n=len(entries) - 1,
        )
        d = defer.gatherResults([w for w in waits if w is not None], consumeErrors=True)
        d.addCallback(lambda _: self._copied(target, generation))
        d.addErrback(lambda f: self._failed(f, generation))

    def _copied(self, target: str, generation: int) -> None:
        if generation == self._generation:
            self.node.announceReplica(target)


class ReplicaStore:
    """The replica side: rows of other brokers, kept until they are adopted or dropped."""

    log = Logger()

    def __init__(self, store: Any) -> None:
        self.store = store
        self._shards: set[str] = set()
        #: per origin, fires when its latest batch is applied (batches apply in order)
        self._tails: dict[str, defer.Deferred[Any]] = {}

    def _shard(self, origin: str, shard: str) -> str:
        name = replicaPrefix(origin) + shard
        if name not in self._shards:
            self._shards.add(name)
            self.store.createShard(name, {"compacted": True}).addErrback(
                lambda f: self.log.failure("creating replica shard {s} failed", f, s=name)
            )
        return name

    def apply(self, origin: str, entries: list[bytes]) -> defer.Deferred[Any]:
        """Apply a batch of row changes from C{origin}, after its earlier batches; fires
        once durable.  A reset in the batch completes before the rows after it."""
        previous = self._tails.get(origin)
        if previous is None:
            d = defer.ensureDeferred(self._apply(origin, entries))
        else:
            d = previous.addBoth(lambda _: defer.ensureDeferred(self._apply(origin, entries)))
        tail: defer.Deferred[Any] = defer.Deferred()
        self._tails[origin] = tail

        def settled(result: Any) -> Any:
            if self._tails.get(origin) is tail:
                del self._tails[origin]
            tail.callback(None)
            return result

        return d.addBoth(settled)

    async def _apply(self, origin: str, entries: list[bytes]) -> None:
        writes: list[defer.Deferred[Any]] = []
        for entry in entries:
            op, shard, key, value = wire.decodeOp(entry)
            if op == RESET:
                await defer.gatherResults(writes, consumeErrors=True)
                writes = []
                await self.reset(origin)
                continue
            if shard not in REPLICATED and shard != WILLS:
                raise ValueError(f"shard {shard!r} is not replicated")
            name = self._shard(origin, shard)
            if op == wire.UPSERT:
                assert value is not None
                writes.append(self.store.upsert(name, key, value))
            else:
                writes.append(self.store.deleteKey(name, key))
        await defer.gatherResults(writes, consumeErrors=True)

    async def reset(self, origin: str) -> None:
        """Forget every row of C{origin}."""
        prefix = replicaPrefix(origin)
        for name in list(await defer.maybeDeferred(self.store.listShards)):
            if name.startswith(prefix):
                self._shards.discard(name)
                await self.store.deleteShard(name)

    async def origins(self) -> set[str]:
        """The nodes this store holds rows of."""
        found = set()
        for name in await defer.maybeDeferred(self.store.listShards):
            if name.startswith(REPLICA_PREFIX):
                found.add(name[len(REPLICA_PREFIX) :].split("/", 1)[0])
        return found

    async def load(self, origin: str) -> tuple[list[dict[str, Any]], list[bytes]]:
        """C{origin}'s sessions (in L{SessionPersistence.loadSessions} form) and wills."""
        for shard in (SESSIONS, MESSAGES, INCOMING, WILLS):
            await self.store.createShard(replicaPrefix(origin) + shard, {"compacted": True})
        persistence = SessionPersistence(self.store, replicaPrefix(origin))
        records = await persistence.loadSessions()
        wills = list((await persistence._scan(replicaPrefix(origin) + WILLS)).values())
        return records, wills
