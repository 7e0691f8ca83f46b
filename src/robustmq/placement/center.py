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
over at registration), never polled: C{nodeChanged}, C{routeChanged},
C{shardChanged}, C{configChanged}, C{sessionTakenOver}.  Unacknowledged
pushes per node are bounded by C{max_pending_pushes}; at the bound the node
is disconnected, and re-registering gives it a fresh snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb

from robustmq.config import PlacementSettings
from robustmq.placement.errors import (
    LeaseNotFoundError,
    LimitError,
    NotLeaderError,
    NotRegisteredError,
    PermissionDeniedError,
)
from robustmq.placement.kv import keyOf, lastPart
from robustmq.placement.records import (
    ConfigEntry,
    GroupOffset,
    NodeInfo,
    RouteEntry,
    SessionRecord,
    ShardRecord,
    decodeRecord,
    encodeRecord,
)

ELECTION = "placement"
#: Attempts of one read-modify-write before giving up (contention bound).
CAS_ATTEMPTS = 32


class _Member:
    """A registered node as the leader sees it."""

    __slots__ = ("info", "listener", "lease", "pending", "avatar")

    def __init__(self, info: NodeInfo, listener: Any, lease: int, avatar: Any) -> None:
        self.info = info
        self.listener = listener
        self.lease = lease
        self.pending = 0
        self.avatar = avatar


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
        self._campaign.addCallbacks(
            lambda _: ensureDeferred(self._lead()), lambda f: f.trap(Exception) and None
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

    async def _lead(self) -> None:
        if self._stopping:
            return
        self.leading = True
        self.leaderAddress = self.advertise
        self.log.info("placement node {address} is the leader", address=self.advertise)
        self._watches.append(await self.backend.watch("alive/", lambda kv: None, self._aliveGone))
        # Nodes that went silent while nobody led: their lease is gone.
        alive = {lastPart(kv.key) for kv in await self.backend.list("alive/")}
        for kv in await self.backend.list("nodes/"):
            info = decodeRecord(kv.value, NodeInfo)
            if info.state == "alive" and info.nodeId not in alive:
                await self._declareDead(info.nodeId)
        if not self.becameLeader.called:
            self.becameLeader.callback(None)

    async def _stepDown(self, again: bool) -> None:
        wasLeading, self.leading = self.leading, False
        for watch in self._watches[1:]:
            watch.stop()
        del self._watches[1:]
        if self._keeper is not None and self._keeper.running:
            self._keeper.stop()
        if self._campaign is not None and not self._campaign.called:
            self._campaign.cancel()
        self.members.clear()
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

    # Pushes

    def _push(self, method: str, record: Any, exclude: str | None = None) -> None:
        for nodeId, member in list(self.members.items()):
            if nodeId == exclude or member.listener is None:
                continue
            if member.pending >= self.settings.max_pending_pushes:
                self.log.warn(
                    "node {node} has {count} unacknowledged placement updates; disconnecting it",
                    node=nodeId,
                    count=member.pending,
                )
                self._disconnect(member)
                continue
            member.pending += 1
            d = member.listener.callRemote(method, record)
            d.addBoth(self._pushed, member, nodeId, method)

    def _pushed(self, result: Any, member: _Member, nodeId: str, method: str) -> None:
        member.pending -= 1
        if hasattr(result, "check") and not result.check(
            pb.PBConnectionLost, pb.DeadReferenceError
        ):
            self.log.warn(
                "push {method} to node {node} failed: {error}",
                method=method,
                node=nodeId,
                error=result.getErrorMessage(),
            )

    def _disconnect(self, member: _Member) -> None:
        listener, member.listener = member.listener, None
        broker = getattr(listener, "broker", None)
        if broker is not None and broker.transport is not None:
            broker.transport.loseConnection()

    def detach(self, nodeId: str, avatar: Any) -> None:
        """The node's PB connection closed: stop pushing to it (its lease decides liveness)."""
        member = self.members.get(nodeId)
        if member is not None and member.avatar is avatar:
            member.listener = None

    # Registration and liveness

    async def register(
        self, nodeId: str, info: NodeInfo, listener: Any, avatar: Any = None
    ) -> dict[str, list[Any]]:
        """Add or re-add a node; fires with a snapshot of nodes, routes, shards and config."""
        self._requireLeader()
        if not isinstance(info, NodeInfo) or info.nodeId != nodeId:
            raise PermissionDeniedError(f"node {nodeId} may only register itself")
        if nodeId not in self.members and len(self.members) >= self.settings.max_nodes:
            raise LimitError(f"{self.settings.max_nodes} nodes registered (max_nodes)")
        info = NodeInfo(info.nodeId, info.roles, info.addresses, info.startedAt, "alive")
        lease = await self.backend.grantLease(self.settings.heartbeat_timeout)
        await self.backend.put(keyOf("nodes", nodeId), encodeRecord(info))
        # Re-attach the liveness key to the new lease before ending the old one,
        # so a re-registration never looks like a death.
        await self.backend.put(keyOf("alive", nodeId), b"", lease)
        old = self.members.get(nodeId)
        self.members[nodeId] = _Member(info, listener, lease, avatar)
        if old is not None and old.lease != lease:
            await self.backend.revokeLease(old.lease)
        self.log.info("node {node} registered", node=nodeId)
        self._push("nodeChanged", info, exclude=nodeId)
        return {
            "nodes": await self.listNodes(),
            "routes": await self._list("routes/", RouteEntry),
            "shards": await self._list("shards/", ShardRecord),
            "config": await self._list("config/", ConfigEntry),
        }

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
        ensureDeferred(self._declareDead(lastPart(key), check=True)).addErrback(
            lambda f: self.log.failure("declaring a node dead failed", f)
        )

    async def _declareDead(self, nodeId: str, check: bool = False) -> None:
        if check and await self.backend.get(keyOf("alive", nodeId)) is not None:
            return  # re-registered meanwhile
        kv = await self.backend.get(keyOf("nodes", nodeId))
        member = self.members.pop(nodeId, None)
        if kv is None:
            return
        info = decodeRecord(kv.value, NodeInfo)
        dead = NodeInfo(info.nodeId, info.roles, info.addresses, info.startedAt, "dead")
        await self.backend.put(keyOf("nodes", nodeId), encodeRecord(dead))
        self.log.warn("node {node} declared dead (no heartbeat)", node=nodeId)
        self._push("nodeChanged", dead)
        if member is not None:
            self._disconnect(member)
        for entry in await self._list("routes/", RouteEntry):
            if nodeId in entry.nodeIds:
                await self._changeRoute(entry.filter, nodeId, add=False)
        for shard in await self._list("shards/", ShardRecord):
            if shard.leader == nodeId:
                await self._moveShard(shard.shard, shard)

    async def listNodes(self, nodeId: str | None = None) -> list[NodeInfo]:
        if nodeId is not None:
            self._member(nodeId)
        return await self._list("nodes/", NodeInfo)

    async def _list(self, prefix: str, cls: Any) -> list[Any]:
        return [decodeRecord(kv.value, cls) for kv in await self.backend.list(prefix)]

    async def _get(self, key: str, cls: Any) -> Any:
        kv = await self.backend.get(key)
        return None if kv is None else decodeRecord(kv.value, cls)

    async def _update(
        self, key: str, change: Callable[[bytes | None], Awaitable[bytes | None] | bytes | None]
    ) -> bool:
        """Read-modify-write C{key} with compare-and-set; True if it changed."""
        for _ in range(CAS_ATTEMPTS):
            kv = await self.backend.get(key)
            current = None if kv is None else kv.value
            new = change(current)
            if hasattr(new, "__await__"):
                new = await new  # type: ignore[misc]
            if new == current:
                return False
            if await self.backend.compareAndSet(key, current, new):
                return True
        raise LimitError(f"{key}: too much contention ({CAS_ATTEMPTS} attempts)")

    # Cluster config

    async def setConfig(self, nodeId: str, key: str, value: str) -> ConfigEntry:
        self._member(nodeId)
        entry = ConfigEntry(key, value)
        await self.backend.put(keyOf("config", key), encodeRecord(entry))
        self._push("configChanged", entry)
        return entry

    async def getConfig(self, nodeId: str, key: str) -> ConfigEntry | None:
        self._member(nodeId)
        return await self._get(keyOf("config", key), ConfigEntry)

    # Sessions

    async def claimSession(
        self, nodeId: str, clientId: str, expiryInterval: int
    ) -> SessionRecord | None:
        """Make C{nodeId} the owner of C{clientId}'s session; fires with the previous record."""
        self._member(nodeId)
        record = SessionRecord(clientId, nodeId, expiryInterval, time.time())
        previous: list[SessionRecord | None] = [None]

        def change(current: bytes | None) -> bytes:
            previous[0] = None if current is None else decodeRecord(current, SessionRecord)
            return encodeRecord(record)

        await self._update(keyOf("sessions", clientId), change)
        old = previous[0]
        if old is not None and old.nodeId != nodeId and old.nodeId in self.members:
            member = self.members[old.nodeId]
            if member.listener is not None:
                member.pending += 1
                member.listener.callRemote("sessionTakenOver", record).addBoth(
                    self._pushed, member, old.nodeId, "sessionTakenOver"
                )
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
        return await self._get(keyOf("sessions", clientId), SessionRecord)

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

        if await self._update(keyOf("routes", topicFilter), change):
            self._push("routeChanged", result[0], exclude=nodeId)
        return result[0]

    async def listRoutes(self, nodeId: str) -> list[RouteEntry]:
        self._member(nodeId)
        return await self._list("routes/", RouteEntry)

    # Shards

    async def _liveBrokers(self) -> list[str]:
        alive = {lastPart(kv.key) for kv in await self.backend.list("alive/")}
        return sorted(
            info.nodeId
            for info in await self._list("nodes/", NodeInfo)
            if info.nodeId in alive and "broker" in info.roles
        )

    async def assignShard(self, nodeId: str, shard: str) -> ShardRecord:
        """The shard's leader: kept if alive, else the live broker leading fewest shards."""
        self._member(nodeId)
        return await self._moveShard(shard, None)

    async def _moveShard(self, shard: str, current: ShardRecord | None) -> ShardRecord:
        result: list[ShardRecord] = []

        async def change(raw: bytes | None) -> bytes | None:
            record = None if raw is None else decodeRecord(raw, ShardRecord)
            live = await self._liveBrokers()
            if record is not None and record.leader in live:
                result[:] = [record]
                return raw
            load = dict.fromkeys(live, 0)
            for other in await self._list("shards/", ShardRecord):
                if other.leader in load:
                    load[other.leader] += 1
            leader = min(live, key=lambda n: (load[n], n)) if live else ""
            epoch = 0 if record is None else record.epoch + 1
            new = ShardRecord(shard, leader, epoch)
            result[:] = [new]
            return encodeRecord(new)

        if await self._update(keyOf("shards", shard), change):
            self.log.info(
                "shard {shard} led by {leader} (epoch {epoch})",
                shard=shard,
                leader=result[0].leader or "nobody",
                epoch=result[0].epoch,
            )
            self._push("shardChanged", result[0])
        return result[0]

    async def getShard(self, nodeId: str, shard: str) -> ShardRecord | None:
        self._member(nodeId)
        return await self._get(keyOf("shards", shard), ShardRecord)

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
        return await self._get(keyOf("offsets", group, shard), GroupOffset)


__all__ = ["ELECTION", "PlacementCenter"]
