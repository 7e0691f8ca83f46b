"""A broker's membership in the cluster: routing across nodes, hand-over, adoption.

L{ClusterNode} is a service beside the L{Broker} (which calls it through
C{broker.cluster}).  It

- registers this node with the placement center and follows its pushes
  (L{PlacementClient}, this object is the handler);
- listens for the other brokers (C{[cluster] bind:port}) and keeps a
  L{PeerLink} to each live one;
- mirrors local subscriptions into the placement center's route table and
  routes every published message locally and to the nodes whose routes
  match: ordinary subscribers on every matching node, each shared group on
  one node chosen in turn among those with members, retained messages to
  every broker;
- claims each connecting client's session in the placement center and, if
  another node had it, takes it over from there (L{handOver});
- replicates persistent sessions and wills to one other broker, and adopts
  a dead broker's sessions when it holds their copy (L{adopt}).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.cluster import wire
from robustmq.cluster.metadata import PREFIX as META_PREFIX
from robustmq.cluster.metadata import ClusterMetadataStore
from robustmq.cluster.moves import AllBut, Moves, routeKeys
from robustmq.cluster.peers import FORWARD, FORWARD_FOR, PeerLink, makePeerFactory
from robustmq.cluster.replication import (
    WILLS,
    ReplicaStore,
    ReplicatingStore,
    Replicator,
)
from robustmq.cluster.routes import LocalRoutes, RemoteRoutes
from robustmq.config import Settings
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.persistence import (
    decodeMessage,
    deliveryValue,
    encodeMessage,
    sessionRows,
)
from robustmq.core.shared import SharedGroup
from robustmq.core.subscription import SubscriptionOptions, parseFilter
from robustmq.interfaces import IClusterRouting
from robustmq.placement.client import PlacementClient
from robustmq.placement.records import NodeInfo
from robustmq.placement.server import ClusterSecretChecker
from robustmq.transports.tls import serverCertificateOptions

REPLICA_KEY = "replica."
#: Shared groups whose round-robin turn is remembered (beyond it all turns restart).
MAX_SHARED_TURNS = 100_000
#: "adopted.<dead node>" = the adopter, set once the adopted sessions' routes are in place
ADOPTED_KEY = "adopted."


class TakeoverFailed(Exception):
    """A session could not be handed over from the node that had it."""


def packRecord(record: dict[str, Any]) -> list[bytes]:
    """A session record (L{SessionRegistry.export} form) as PB-safe chunks."""
    header = {k: v for k, v in record.items() if k != "messages"}
    held = [
        json.dumps([seq, h["pid"], h["dq"], h["st"]]).encode()
        + b"\n"
        + deliveryValue(message, h["dq"], sub, h["pid"], h["st"])
        for seq, message, h, sub in record["messages"]
    ]
    return wire.pack([json.dumps(header).encode(), *held])


def unpackRecord(chunks: list[bytes]) -> dict[str, Any]:
    """The inverse of L{packRecord}."""
    entries = wire.unpack(chunks)
    record: dict[str, Any] = json.loads(entries[0])
    messages = []
    for entry in entries[1:]:
        line, _, value = entry.partition(b"\n")
        seq, pid, dq, st = json.loads(line)
        message, header = decodeMessage(value)
        sub = SubscriptionOptions(
            qos=header["dq"], keepRetain=header["kr"], identifiers=tuple(header["ids"])
        )
        messages.append((seq, message, {"pid": pid, "dq": dq, "st": st}, sub))
    record["messages"] = messages
    return record


class _Drain:
    """Waits, like a paused publisher, for the sessions a forwarded batch congested."""

    def __init__(self, sessions: list[Any]) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.blockedOn: set[Any] = set()
        for session in sessions:
            if session.congested and session not in self.blockedOn:
                session.addWaiter(self)
                self.blockedOn.add(session)
        if not self.blockedOn:
            self.done.callback(None)

    def congestionCleared(self, session: Any) -> None:
        """A session drained (or gave up waiting: congestion_timeout)."""
        self.blockedOn.discard(session)
        if not self.blockedOn and not self.done.called:
            self.done.callback(None)


@implementer(IClusterRouting)
class ClusterNode(Service):
    """This broker in the cluster (see the module docstring)."""

    log = Logger()

    def __init__(self, settings: Settings, broker: Any, store: Any, reactor: Any) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.broker = broker
        self.reactor = reactor
        self.nodeId = settings.node.id
        self.secret = settings.placement.cluster_secret
        self.startedAt = time.time()
        self.nodes: dict[str, NodeInfo] = {}
        self.links: dict[str, PeerLink] = {}
        self.remote = RemoteRoutes(self.nodeId, settings.mqtt.route_cache_size)
        self.replicas = ReplicaStore(store)
        self.replicator = Replicator(self)
        #: origin node → the broker holding its replica (from the placement center's config)
        self.replicaOf: dict[str, str] = {}
        #: client id → (connection, stored will) of connected clients with a will
        self._wills: dict[str, tuple[Any, bytes]] = {}
        self._adoptions: dict[str, defer.Deferred[None]] = {}
        #: origin broker -> fires when its latest forwarded batch no longer holds the link
        self._inbound: dict[str, defer.Deferred[None]] = {}
        #: dead node -> its last routes, pointed at its adopter until the adopter's are in
        self._ghosts: dict[str, RemoteRoutes] = {}
        self._handingOver: set[str] = set()
        #: sessions that moved between brokers a moment ago (moves.py)
        self.moves = Moves(
            self.nodeId, self.cluster.handover_window, self.cluster.handover_track_limit, reactor
        )
        #: client id -> deliveries waiting for its session, being handed over to us
        self._arriving: dict[str, list[Callable[[], None]]] = {}
        #: the routing nodes of a message (encoded), per set of remote routing nodes
        self._targetNames: dict[frozenset[str], bytes] = {}
        self._roundRobin: dict[str, int] = {}
        self._registeredOnce = False
        #: the "adopted.<this node>" mark last seen: a new one means we were adopted
        self._adoptedMark: str | None = None
        self.forwarded = 0
        self.received = 0
        self.dropped = 0
        self.redirected = 0
        self.port: Any = None
        self.placement = PlacementClient(settings.placement, self._info(), self, reactor)
        self.routes = LocalRoutes(self.placement, reactor, self.cluster.takeover_timeout)
        #: users, ACL rules and bans shared through the placement center (or None)
        self.metadata = None
        security = getattr(broker, "security", None)
        if isinstance(getattr(security, "metadata", None), ClusterMetadataStore):
            self.metadata = security.metadata  # type: ignore[union-attr]
            self.metadata.node = self
        persistence = broker.persistence
        if persistence is not None and self.cluster.replication:
            persistence.store = ReplicatingStore(persistence.store, self.replicator)

    # Identity

    def advertise(self) -> str:
        """Where the other brokers reach this one."""
        if self.cluster.advertise:
            return self.cluster.advertise
        port = self.port.getHost().port if self.port is not None else self.cluster.port
        return f"{self.cluster.bind}:{port}"

    def _info(self) -> NodeInfo:
        addresses = {"cluster": self.advertise()}
        for listener in self.settings.listeners:
            if listener.protocol == "mqtt" and listener.transport == "tcp":
                addresses.setdefault("mqtt", f"{listener.bind}:{listener.port}")
        if self.settings.http.enabled:
            addresses["http"] = f"{self.settings.http.bind}:{self.settings.http.port}"
        return NodeInfo(self.nodeId, tuple(self.settings.node.roles), addresses, self.startedAt)

    # Service

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        placement = self.settings.placement
        endpoint: Any
        if placement.tls_cert:
            # The broker links use the cluster's certificate, like the placement service.
            options = serverCertificateOptions(
                placement.tls_cert, placement.tls_key, "placement.tls_cert", "placement.tls_key"
            )
            endpoint = SSL4ServerEndpoint(
                self.reactor, self.cluster.port, options, interface=self.cluster.bind
            )
        else:
            endpoint = TCP4ServerEndpoint(
                self.reactor, self.cluster.port, interface=self.cluster.bind
            )
        factory = makePeerFactory(self, ClusterSecretChecker(self.secret))
        failures: list[Any] = []
        endpoint.listen(factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.port = port
        tls = " (TLS)" if self.settings.placement.tls_cert else ""
        self.log.info("broker link listening on {address}{tls}", address=self.advertise(), tls=tls)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self.placement.info = self._info()
        # Register once storage is recovered: restored sessions' routes are known then.
        self.broker.whenReady().addCallback(lambda _: self.placement.startService())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # The broker (stopped just before us) is closing its clients: no will is
        # published on shutdown, so take the wills off the replica, let the links
        # carry what the closing caused, then leave: the placement center declares
        # this node dead now and its replica adopts the persistent sessions at once
        # (instead of after heartbeat_timeout).
        for clientId in list(self._wills):
            del self._wills[clientId]
            d = self.replicator.op(wire.DELETE, WILLS, clientId.encode(), None)
            if d is not None:
                d.addErrback(lambda f: None)
        await self._drainLinks(2.0)
        if self.placement.perspective is not None:
            try:
                call = defer.ensureDeferred(self.placement.call("leave"))
                call.addTimeout(3.0, self.reactor)
                await call
                self.log.info("left the cluster")
            except Exception as e:  # the connection closes as the leave completes
                self.log.info("leaving the cluster: {e}", e=str(e) or type(e).__name__)
        if self.placement.running:
            await self.placement.stopService()
        for link in list(self.links.values()):
            if link.running:
                await link.stopService()
        self.links.clear()
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    async def _drainLinks(self, timeout: float) -> None:
        """Wait (at most C{timeout}) until every link has sent and had answered all it holds."""
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05, lambda: None)
            if not any(
                link.queue or link.inflight
                for link in self.links.values()
                if link.perspective is not None
            ):
                return

    # Placement pushes (PlacementHandler)

    def registered(self, snapshot: dict[str, list[Any]]) -> None:
        fresh = {info.nodeId: info for info in snapshot["nodes"]}
        for nodeId, info in fresh.items():
            old = self.nodes.get(nodeId)
            if info.state == "alive" and old is not None and old.state == "dead":
                self._adoptions.pop(nodeId, None)
                self._ghosts.pop(nodeId, None)
        self.nodes = fresh
        self.remote.replace((entry.filter, entry.nodeIds) for entry in snapshot["routes"])
        for entry in snapshot["config"]:
            if not entry.key.startswith(META_PREFIX):
                self.configChanged(entry)
        if self.metadata is not None:
            self.metadata.resync(snapshot["config"])
        for info in self.nodes.values():
            self._follow(info)
        self.routes.resync()
        self.chooseReplica(force=True)
        mark = next(
            (e.value for e in snapshot["config"] if e.key == f"{ADOPTED_KEY}{self.nodeId}"), None
        )
        if self._registeredOnce and mark != self._adoptedMark:
            # Declared dead while we were away, and adopted: others own our sessions now.
            self.log.warn("this node was declared dead and its sessions adopted; dropping them")
            defer.ensureDeferred(self._dropSessionsOwnedElsewhere()).addErrback(
                lambda f: self.log.failure("dropping adopted sessions failed", f)
            )
        self._adoptedMark = mark
        if not self._registeredOnce:
            self._registeredOnce = True
            defer.ensureDeferred(self._afterFirstRegistration()).addErrback(
                lambda f: self.log.failure("syncing with the cluster after start failed", f)
            )

    def nodeChanged(self, info: NodeInfo) -> None:
        previous = self.nodes.get(info.nodeId)
        self.nodes[info.nodeId] = info
        if info.state == "alive" and previous is not None and previous.state == "dead":
            # Back (restarted): if it dies again, its new sessions are adopted again.
            self._adoptions.pop(info.nodeId, None)
            self._ghosts.pop(info.nodeId, None)
        self._follow(info)
        if info.state == "dead" and (previous is None or previous.state != "dead"):
            self.log.warn("broker {node} is dead", node=info.nodeId)
            ghost = RemoteRoutes("", 1000)
            for key, nodes in self.remote.items():
                if info.nodeId in nodes:
                    ghost.set(key, (info.nodeId,))
            if len(ghost):
                self._ghosts[info.nodeId] = ghost
                # Bounded in time even if the adopter never announces itself.
                self.reactor.callLater(
                    2 * self.cluster.takeover_timeout, self._ghosts.pop, info.nodeId, None
                )
            self.remote.dropNode(info.nodeId)
            defer.ensureDeferred(self._nodeDied(info.nodeId)).addErrback(
                lambda f: self.log.failure("handling the death of {n} failed", f, n=info.nodeId)
            )
        self.chooseReplica()

    def routeChanged(self, entry: Any) -> None:
        self.remote.set(entry.filter, entry.nodeIds)

    def configChanged(self, entry: Any) -> None:
        if entry.key.startswith(META_PREFIX):
            if self.metadata is not None:
                self.metadata.applyPushed(entry.key, entry.value)
            return
        if entry.key.startswith(ADOPTED_KEY):
            # The adopter's routes for that node's sessions are in place.
            self._ghosts.pop(entry.key[len(ADOPTED_KEY) :], None)
            return
        if entry.key.startswith(REPLICA_KEY):
            origin = entry.key[len(REPLICA_KEY) :]
            holder = entry.value
            old = self.replicaOf.get(origin)
            self.replicaOf[origin] = holder
            if old == self.nodeId and holder != self.nodeId and origin != self.nodeId:
                # Another broker holds that node's copy now: ours is stale.
                defer.ensureDeferred(self.replicas.reset(origin))

    def sessionTakenOver(self, record: Any) -> None:
        # The new owner normally asked us already (handOver); make sure the client is gone.
        session = self.broker.sessions.get(record.clientId)
        if session is not None and record.clientId not in self._handingOver:
            self._closeMovedConnection(session)

    # Links

    def _follow(self, info: NodeInfo) -> None:
        """Keep a link to every live broker but this one."""
        if info.nodeId == self.nodeId or "broker" not in info.roles:
            return
        address = info.addresses.get("cluster")
        link = self.links.get(info.nodeId)
        if info.state != "alive" or not address:
            return
        if link is None:
            link = PeerLink(
                self.nodeId,
                info.nodeId,
                address,
                self.secret,
                self.cluster.forward_batch_size,
                self.cluster.forward_max_pending,
                self.reactor,
                self._dropped,
                self.settings.placement.tls_ca,
            )
            self.links[info.nodeId] = link
            if self.running:
                link.startService()
        elif link.address != address:
            link.address = address

    def _dropped(self, count: int) -> None:
        self.dropped += count

    def aliveBrokers(self) -> list[str]:
        """Live broker node ids (this one included), sorted."""
        return sorted(
            n.nodeId for n in self.nodes.values() if n.state == "alive" and "broker" in n.roles
        )

    def _alive(self, nodeId: str) -> bool:
        info = self.nodes.get(nodeId)
        return info is not None and info.state == "alive"

    # Routing

    def routeAdded(self, key: str, outcome: Outcome) -> None:
        """A subscription C{key} is new here: the SUBACK waits for the placement route."""
        outcome.wait(self.routes.added(key))

    def routeRemoved(self, key: str) -> None:
        self.routes.removed(key)

    def route(self, message: Message, outcome: Outcome) -> int:
        """Deliver C{message} here and forward it to every other node that wants it."""
        broker = self.broker
        topic = message.topic
        if topic.startswith("$SYS/"):
            return broker.routeLocally(message, outcome)  # type: ignore[no-any-return]
        normal, sharedRemote = self.remote.match(topic)
        #: holder node -> the dead node whose sessions it must adopt before routing
        via: dict[str, str] = {}
        if self._ghosts:
            normal, sharedRemote, via = self._ghostTargets(topic, normal, sharedRemote)
            dead = via.get(self.nodeId)
            if dead is not None:
                # We are adopting subscribers of this topic: route once they are here.
                return self._routeAfterAdoption(dead, message, outcome)
        moves = self.moves
        if moves.arrived or moves.departed:
            routing = normal | {self.nodeId}
            count: int = broker.routeLocally(
                message, outcome, False, moves.answeredElsewhere(routing)
            )
            self._redirect(message, routing, outcome)
        else:
            count = broker.routeLocally(message, outcome, sharedGroups=False)
        local: dict[str, Any] = {}
        if broker.groups:
            for subscriber, _ in broker.router.match(topic):
                if subscriber.__class__ is SharedGroup:
                    local[f"$share/{subscriber.name}/{subscriber.topicFilter}"] = subscriber
        groups: dict[str, list[str]] = {}
        if sharedRemote or local:
            for key in set(sharedRemote) | set(local):
                holders = set(sharedRemote.get(key, ()))
                if key in local:
                    holders.add(self.nodeId)
                ordered = sorted(holders)
                turn = self._roundRobin.get(key, 0)
                if turn == 0 and len(self._roundRobin) >= MAX_SHARED_TURNS:
                    self._roundRobin.clear()  # bound: forget every group's turn
                self._roundRobin[key] = turn + 1
                chosen = ordered[turn % len(ordered)]
                if chosen == self.nodeId:
                    local[key].deliver(message, message.qos, None, outcome)
                else:
                    groups.setdefault(chosen, []).append(key)
                count += 1
        targets: Iterable[str] = normal
        if groups or message.retain:
            every = set(normal) | set(groups)
            if message.retain:
                every.update(n for n in self.aliveBrokers() if n != self.nodeId)
            targets = every
        names = self._targetsOf(normal) if normal else b""
        for nodeId in targets:
            if nodeId in normal:
                flags = wire.ROUTE | (wire.RETAIN if message.retain else 0)
                self._send(
                    nodeId, message, flags, groups.get(nodeId), outcome, via.get(nodeId), names
                )
            else:
                flags = wire.RETAIN if message.retain else 0
                self._send(nodeId, message, flags, groups.get(nodeId), outcome, via.get(nodeId))
        return count + len(normal)

    def _targetsOf(self, normal: frozenset[str]) -> bytes:
        """The brokers routing a message to their ordinary subscribers: this one and C{normal}."""
        names = self._targetNames.get(normal)
        if names is None:
            if len(self._targetNames) >= 1024:
                self._targetNames.clear()
            names = self._targetNames[normal] = wire.encodeTargets(normal | {self.nodeId})
        return names

    def _redirect(self, message: Message, routing: frozenset[str], outcome: Outcome) -> None:
        """Send C{message} on to the sessions that left here and that we answer for."""
        for nodeId, clientIds in self.moves.redirects(message.topic, routing).items():
            self.redirected += len(clientIds)
            self._send(nodeId, message, wire.SESSION, clientIds, outcome)

    def _afterArrivals(
        self,
        waiting: list[list[Callable[[], None]]],
        then: Callable[[Outcome], None],
        outcome: Outcome,
    ) -> None:
        """Run C{then} once the hand-overs to us behind C{waiting} have ended; what is
        being handled is acknowledged after that (and the writes C{then} causes)."""
        done: defer.Deferred[Any] = defer.Deferred()
        left = [len(waiting)]

        def one() -> None:
            left[0] -= 1
            if left[0]:
                return
            later = Outcome()
            then(later)
            # Nothing left to pause: the publisher's packet was handled long ago.
            later.allWritten().addBoth(done.callback)

        for callbacks in waiting:
            callbacks.append(one)
        outcome.wait(done)

    def _deliverMoved(self, clientId: str, message: Message, outcome: Outcome) -> None:
        """A message redirected to C{clientId}'s session only (it moved, see moves.py)."""
        broker = self.broker
        waiting = self._arriving.get(clientId)
        if waiting is not None:
            # Being handed over to us: deliver once it is here.
            self._afterArrivals(
                [waiting], lambda later: self._deliverMoved(clientId, message, later), outcome
            )
            return
        session = broker.sessions.get(clientId)
        if session is not None:
            broker.routeLocally(message, outcome, False, AllBut(session))
            return
        nodeId = self.moves.nextHop(clientId)
        if nodeId is not None and nodeId != self.nodeId:
            self.redirected += 1
            self._send(nodeId, message, wire.SESSION, [clientId], outcome)
            return
        self.dropped += 1
        self.log.info(
            "{clientId}: a message on {topic} sent on to its session found no session here",
            clientId=clientId,
            topic=message.topic,
        )

    def _deliverToGroup(
        self, key: str, message: Message, outcome: Outcome, wait: bool = True
    ) -> None:
        """A message for shared group C{key} (chosen here by the publishing broker).  With
        no member here: its last member moved away (send it on), or one is being handed
        over to us (wait for those hand-overs)."""
        name, real, _ = parseFilter(key)
        group = self.broker.groups.get((name, real))
        if group is not None:
            group.deliver(message, message.qos, None, outcome)
            return
        if not (self.moves or self._arriving):
            return  # its last member left: the route change is on its way to the publisher
        nodeId = self.moves.sharedRedirect(key)
        if nodeId is not None and nodeId != self.nodeId:
            self.redirected += 1
            self._send(nodeId, message, 0, [key], outcome)
            return
        if wait and self._arriving:
            # We do not know which arriving session brings the group: wait for them all.
            self._afterArrivals(
                list(self._arriving.values()),
                lambda later: self._deliverToGroup(key, message, later, wait=False),
                outcome,
            )
            return
        self.dropped += 1
        self.log.info("a message for shared group {key} found no member here", key=key)

    def _arrivalDone(self, clientId: str) -> None:
        """The hand-over of C{clientId}'s session to us ended: run what waited for it."""
        for deliver in self._arriving.pop(clientId, ()):
            deliver()

    def _ghostTargets(
        self, topic: str, normal: frozenset[str], shared: dict[str, set[str]]
    ) -> tuple[frozenset[str], dict[str, set[str]], dict[str, str]]:
        """Add the routes of dead nodes whose sessions are being adopted, pointed at the
        adopting nodes (until those announce that their own routes are in place)."""
        via: dict[str, str] = {}
        normalNodes = set(normal)
        sharedNodes = {key: set(nodes) for key, nodes in shared.items()}
        for dead, ghost in self._ghosts.items():
            ghostNormal, ghostShared = ghost.match(topic)
            if not ghostNormal and not ghostShared:
                continue
            holder = self.replicaOf.get(dead)
            if holder is None or not (holder == self.nodeId or self._alive(holder)):
                continue
            via[holder] = dead
            if ghostNormal:
                normalNodes.add(holder)
            for key in ghostShared:
                sharedNodes.setdefault(key, set()).add(holder)
        return frozenset(normalNodes), sharedNodes, via

    def _routeAfterAdoption(self, dead: str, message: Message, outcome: Outcome) -> int:
        """Route C{message} once the sessions of C{dead} are adopted here; the publisher's
        acknowledgement waits for that (and for the writes it causes)."""
        done: defer.Deferred[Any] = defer.Deferred()

        def routeNow(_: Any) -> None:
            later = Outcome()
            self.route(message, later)
            later.allWritten().addBoth(done.callback)

        self.adopt(dead).addCallback(routeNow)
        outcome.wait(done)
        return 1

    def _send(
        self,
        nodeId: str,
        message: Message,
        flags: int,
        groups: list[str] | None,
        outcome: Outcome,
        via: str | None = None,
        targets: bytes = b"",
    ) -> None:
        link = self.links.get(nodeId)
        if link is None:
            self.dropped += 1
            return
        entry = wire.encodeForward(message, flags, groups, targets)
        kind = FORWARD if via is None else FORWARD_FOR + via
        outcome.wait(link.send(kind, entry, message.qos))
        self.forwarded += 1
        if link.congested:
            outcome.congest(link)

    def receiveForward(self, origin: str, entries: list[bytes]) -> defer.Deferred[Any]:
        """Messages another broker routed here; the answer fires once their durable writes
        are done and the sessions they filled have drained.

        Back-pressure across the link: a batch that leaves local sessions
        congested holds its answer, and the origin's next batches wait
        (queued here, at most the sender's calls in flight) until those
        sessions drain — as a local publisher would stop being read.  The
        sender's PUBACKs wait for the answer, and its link fills up to
        C{forward_max_pending}, where its publishers pause.
        """
        answer: defer.Deferred[Any] = defer.Deferred()
        released: defer.Deferred[None] = defer.Deferred()
        previous = self._inbound.get(origin)
        self._inbound[origin] = released

        def run(_: Any = None) -> None:
            try:
                writes, drained = self._routeBatch(entries)
            except Exception:
                released.callback(None)
                answer.errback()
                return
            drained.addCallback(lambda _: released.callback(None))
            d = defer.gatherResults([*writes, drained], consumeErrors=True)
            d.addCallbacks(lambda _: answer.callback(None), answer.errback)

        def forget(_: Any) -> None:
            if self._inbound.get(origin) is released:
                del self._inbound[origin]

        released.addCallback(forget)
        if previous is None or previous.called:
            run()
        else:
            previous.addCallback(run)
        return answer

    def _routeBatch(
        self, entries: list[bytes]
    ) -> tuple[list[defer.Deferred[Any]], defer.Deferred[None]]:
        """Route forwarded entries here: (their durable writes, fired when what they
        congested has drained)."""
        broker = self.broker
        moves = self.moves
        outcome = Outcome()
        for entry in entries:
            message, flags, names, rawTargets = wire.decodeForward(entry)
            self.received += 1
            if flags & wire.SESSION:
                for clientId in names:
                    self._deliverMoved(clientId, message, outcome)
                continue
            if flags & wire.RETAIN:
                if broker.retained.update(message) and broker.persistence is not None:
                    outcome.wait(broker.persistence.saveRetained(message))
            if flags & wire.ROUTE:
                if moves:
                    routing = wire.decodeTargets(rawTargets)
                    broker.routeLocally(message, outcome, False, moves.answeredElsewhere(routing))
                    self._redirect(message, routing, outcome)
                else:
                    broker.routeLocally(message, outcome, sharedGroups=False)
            for key in names:
                self._deliverToGroup(key, message, outcome)
        writes = outcome.writes or []
        congested = [s for s in outcome.congested or () if s.congested]
        if not congested:
            return writes, defer.succeed(None)
        return writes, _Drain(congested).done

    async def receiveForwardFor(self, origin: str, dead: str, entries: list[bytes]) -> None:
        """Messages that were on their way to C{dead}: adopt its sessions first, then route."""
        await self.adopt(dead)
        await self.receiveForward(origin, entries)

    # Sessions

    def prepareSession(self, clientId: str, cleanStart: bool, expiry: int) -> defer.Deferred[None]:
        """Claim C{clientId}'s session; if another node had it, take it over from there."""
        d = defer.ensureDeferred(self._prepare(clientId, cleanStart, expiry))
        d.addTimeout(self.cluster.takeover_timeout, self.reactor)
        return d

    async def _prepare(self, clientId: str, cleanStart: bool, expiry: int) -> None:
        previous = await self.placement.call("claimSession", clientId, expiry)
        if previous is None or previous.nodeId == self.nodeId:
            return
        owner = previous.nodeId
        self._arriving.setdefault(clientId, [])
        try:
            await self._takeOver(clientId, cleanStart, owner)
        finally:
            self._arrivalDone(clientId)

    async def _takeOver(self, clientId: str, cleanStart: bool, owner: str) -> None:
        """Bring C{clientId}'s session here from C{owner} (or from its copy, if it died)."""
        while True:
            holder = owner if self._alive(owner) else self.replicaOf.get(owner)
            if holder is None:
                self.log.info(
                    "{clientId}: its node {owner} is gone and kept no copy; new session",
                    clientId=clientId,
                    owner=owner,
                )
                return
            if holder == self.nodeId:
                await self.adopt(owner)
                if cleanStart:
                    session = self.broker.sessions.get(clientId)
                    if session is not None:
                        self.broker.sessions.discard(session)
                return
            link = self.links.get(holder)
            if link is not None:
                try:
                    chunks = await link.call(
                        "handOver",
                        clientId,
                        cleanStart,
                        owner,
                        timeout=self.cluster.takeover_timeout,
                    )
                except Exception as e:
                    self.log.info(
                        "{clientId}: hand-over from {holder} failed ({e}); retrying",
                        clientId=clientId,
                        holder=holder,
                        e=str(e),
                    )
                else:
                    if chunks:
                        await self._install(unpackRecord(chunks))
                    self.log.info(
                        "{clientId}: session taken over from {holder}",
                        clientId=clientId,
                        holder=holder,
                    )
                    return
            await deferLater(self.reactor, 0.2, lambda: None)

    async def _install(self, record: dict[str, Any]) -> None:
        clientId = record["clientId"]
        outcome = Outcome()
        self.broker.sessions.adopt(record, outcome)
        self.moves.arrive(clientId, record.get("trail") or ())
        self._arrivalDone(clientId)
        await outcome.allWritten()

    async def handOver(
        self, caller: str, clientId: str, discard: bool, owner: str
    ) -> list[bytes] | None:
        """Give C{clientId}'s session to C{caller}: close its connection, export, forget it."""
        if owner != self.nodeId:
            await self.adopt(owner)
        sessions = self.broker.sessions
        session = sessions.get(clientId)
        if session is None:
            return None
        self._handingOver.add(clientId)
        try:
            self._closeMovedConnection(session)
            # The client connected there: a pending will is deleted (MQTT-3.1.2-8).
            session.pendingWill = session.willDueAt = None
            chunks = None
            if not discard:
                record = sessions.export(session)
                # What still reaches us for it goes on to the caller (moves.py).
                record["trail"] = self.moves.depart(clientId, caller, session.subscriptions)
                self._holdRoutes(session.subscriptions)
                chunks = packRecord(record)
            self.log.info(
                "{clientId}: session handed over to {caller}", clientId=clientId, caller=caller
            )
            outcome = Outcome()
            sessions.discard(session, outcome)
            await outcome.allWritten()
            return chunks
        finally:
            self._handingOver.discard(clientId)

    def _closeMovedConnection(self, session: Any) -> None:
        """Close the connection of a session another broker takes (0x8E): its client
        connected there, so a will with a delay is deleted (MQTT-3.1.2-8); one without
        is published as the connection closes."""
        delayed = getattr(session.connection, "willDelay", 0) > 0
        self.broker.sessions.takeOverConnection(session, keepWill=not delayed)

    def _holdRoutes(self, filters: Iterable[str]) -> None:
        """Keep our routes for a session that left for half the hand-over window, so that
        the route table never lacks both its old and its new broker."""
        normal, shared = routeKeys(filters)
        keys = normal + shared
        for key in keys:
            self.routes.added(key)
        self.reactor.callLater(self.cluster.handover_window / 2, self._releaseRoutes, keys)

    def _releaseRoutes(self, keys: list[str]) -> None:
        for key in keys:
            self.routes.removed(key)

    def sessionEnded(self, clientId: str) -> None:
        if clientId in self._handingOver or not self.running:
            return
        d = defer.ensureDeferred(self.placement.call("releaseSession", clientId))
        d.addErrback(lambda f: None)  # another node owns it now, or placement is away

    # Wills (kept on the replica while the client is connected)

    @property
    def wills(self) -> dict[str, bytes]:
        """Client id → stored will, of connected clients."""
        return {cid: value for cid, (_, value) in self._wills.items()}

    def connectionOpened(self, connection: Any) -> None:
        will = getattr(connection, "will", None)
        clientId = getattr(connection, "clientId", None)
        if will is None or clientId is None:
            return
        delay = getattr(connection, "willDelay", 0)
        value = encodeMessage(will, {"delay": delay} if delay else None)
        self._wills[clientId] = (connection, value)
        d = self.replicator.op(wire.UPSERT, WILLS, clientId.encode(), value)
        if d is not None:
            d.addErrback(lambda f: None)

    def connectionClosed(self, connection: Any) -> None:
        clientId = getattr(connection, "clientId", None)
        held = self._wills.get(clientId) if clientId is not None else None
        if held is None or held[0] is not connection:
            return
        del self._wills[clientId]  # type: ignore[arg-type]
        d = self.replicator.op(wire.DELETE, WILLS, clientId.encode(), None)  # type: ignore[union-attr]
        if d is not None:
            d.addErrback(lambda f: None)

    # Replication and adoption

    def sessionRows(self) -> Iterable[tuple[str, bytes, bytes]]:
        """Every stored row of this node's persistent sessions (for a full copy)."""
        for session in self.broker.sessions:
            if session.expiryInterval:
                yield from sessionRows(session)

    def chooseReplica(self, force: bool = False) -> None:
        """Replicate to the next live broker after this one (in node-id order)."""
        if not self.cluster.replication or self.broker.persistence is None:
            return
        ring = self.aliveBrokers()
        target = None
        if self.nodeId in ring and len(ring) > 1:
            target = ring[(ring.index(self.nodeId) + 1) % len(ring)]
        if target != self.replicator.target or force:
            self.replicator.retarget(target, force=True)

    def announceReplica(self, target: str) -> None:
        d = defer.ensureDeferred(
            self.placement.call("setConfig", f"{REPLICA_KEY}{self.nodeId}", target)
        )
        d.addErrback(lambda f: self.log.warn("announcing the replica failed: {e}", e=str(f.value)))

    async def _nodeDied(self, nodeId: str) -> None:
        link = self.links.pop(nodeId, None)
        pending = []
        if link is not None:
            pending = link.abandon()
            await link.stopService()
        holder = self.replicaOf.get(nodeId)
        if holder == self.nodeId or (holder is None and nodeId in await self.replicas.origins()):
            await self.adopt(nodeId)
        # What was on its way to the dead node goes to whoever adopts its sessions.
        target = self.links.get(holder) if holder and holder != self.nodeId else None
        for entry in pending:
            waiter = entry.waiter
            if entry.kind == "replicate":
                if waiter is not None and not waiter.called:
                    waiter.callback(None)  # the replica is gone; a new one gets a full copy
                continue
            if holder == self.nodeId:
                d: Any = self.receiveForward(nodeId, [entry.data])
            elif target is not None:
                d = target.send(f"{FORWARD_FOR}{nodeId}", entry.data, 1)
            else:
                d = defer.succeed(None)  # no copy of its sessions anywhere: nobody to deliver to
            if waiter is not None and d is not None:
                d.chainDeferred(waiter)

    def adopt(self, origin: str) -> defer.Deferred[None]:
        """Take over the sessions (and publish the wills) of dead C{origin} from our copy, once."""
        d = self._adoptions.get(origin)
        if d is None:
            d = self._adoptions[origin] = defer.ensureDeferred(self._adopt(origin))
            d.addErrback(self._adoptionFailed, origin)
        result: defer.Deferred[None] = defer.Deferred()
        d.addBoth(lambda r: (result.callback(None), r)[1])
        return result

    def _adoptionFailed(self, failure: Any, origin: str) -> None:
        self.log.failure("adopting the sessions of {origin} failed", failure, origin=origin)
        self._adoptions.pop(origin, None)

    async def _adopt(self, origin: str) -> None:
        deadline = self.reactor.seconds() + self.cluster.takeover_timeout
        while self._alive(origin) or origin not in self.nodes:
            if self.reactor.seconds() > deadline:
                raise TakeoverFailed(f"{origin} is not declared dead")
            await deferLater(self.reactor, 0.1, lambda: None)
        if origin not in await self.replicas.origins():
            self._ghosts.pop(origin, None)
            await self.placement.call(
                "setConfig", f"{ADOPTED_KEY}{origin}", f"{self.nodeId} {time.time()!r}"
            )
            return
        records, wills = await self.replicas.load(origin)
        broker = self.broker
        adopted = []
        for record in records:
            if broker.sessions.get(record["clientId"]) is not None:
                continue  # its client is back here already
            await self._install(record)
            adopted.append(record)
        for value in wills:
            will, header = decodeMessage(value)
            delay = header.get("delay", 0)
            session = broker.sessions.get(will.origin) if delay and will.origin else None
            if session is not None and session.connection is None and session.expiryInterval:
                # Its connection ended with the node: the delay runs from now.
                broker.sessions.deferWill(session, will, delay)
            else:
                broker.publishWill(will)
        for record in adopted:
            clientId = record["clientId"]
            current = await self.placement.call("lookupSession", clientId)
            if current is None or current.nodeId == origin:
                await self.placement.call("claimSession", clientId, record["expiry"])
        self.log.warn(
            "adopted {n} persistent sessions and published {w} wills of dead broker {origin}",
            n=len(adopted),
            w=len(wills),
            origin=origin,
        )
        await self.replicas.reset(origin)
        self._ghosts.pop(origin, None)
        await self.placement.call(
            "setConfig", f"{ADOPTED_KEY}{origin}", f"{self.nodeId} {time.time()!r}"
        )

    async def _dropSessionsOwnedElsewhere(self) -> None:
        """Local sessions that another node took (adopted while this one was away or
        declared dead) are dropped, without their wills; their clients, if connected,
        are closed with the takeover reason and reconnect to the owner."""
        broker = self.broker
        for session in list(broker.sessions):
            current = await self.placement.call("lookupSession", session.clientId)
            if broker.sessions.get(session.clientId) is not session:
                continue  # gone or replaced meanwhile
            if current is not None and current.nodeId != self.nodeId:
                self.log.info(
                    "{clientId}: session now lives on {node}; dropping the local copy",
                    clientId=session.clientId,
                    node=current.nodeId,
                )
                session.pendingWill = None
                self._handingOver.add(session.clientId)
                try:
                    broker.sessions.takeOverConnection(session, keepWill=False)
                    broker.sessions.discard(session)
                finally:
                    self._handingOver.discard(session.clientId)
            elif current is None:
                await self.placement.call("claimSession", session.clientId, session.expiryInterval)

    async def _afterFirstRegistration(self) -> None:
        """Sessions restored from disk that another node took meanwhile are dropped; retained
        messages are fetched from a live peer."""
        await self._dropSessionsOwnedElsewhere()
        broker = self.broker
        for nodeId in self.aliveBrokers():
            link = self.links.get(nodeId)
            if link is None:
                continue
            try:
                chunks = await link.call("retainedSnapshot", timeout=5.0)
            except Exception as e:
                self.log.info("no retained messages from {n}: {e}", n=nodeId, e=str(e))
                continue
            fetched = 0
            for value in wire.unpack(chunks):
                message, _ = decodeMessage(value)
                if broker.retained.get(message.topic) is None and broker.retained.update(message):
                    fetched += 1
                    if broker.persistence is not None:
                        stored = Outcome()
                        stored.wait(broker.persistence.saveRetained(message))
                        stored.background()
            self.log.info("fetched {n} retained messages from {node}", n=fetched, node=nodeId)
            break

    # Status

    def retainedSnapshot(self) -> list[bytes]:
        return wire.pack(encodeMessage(m) for m in self.broker.retained)

    def localStatus(self) -> dict[str, Any]:
        broker = self.broker
        return {
            "clients": len(broker.connections),
            "sessions": len(broker.sessions),
            "started_at": self.startedAt,
            "forwarded": self.forwarded,
            "received": self.received,
            "dropped": self.dropped,
            "redirected": self.redirected,
        }

    async def _remoteStatus(self, info: NodeInfo) -> dict[str, Any] | None:
        if info.nodeId == self.nodeId:
            return self.localStatus()
        link = self.links.get(info.nodeId)
        if link is None or info.state != "alive":
            return None
        try:
            return await link.call("status", timeout=2.0)  # type: ignore[no-any-return]
        except Exception:
            return None

    def status(self) -> defer.Deferred[list[dict[str, Any]]]:
        """Every node the placement center knows, with this broker's view of it."""
        return defer.ensureDeferred(self._status())

    async def _status(self) -> list[dict[str, Any]]:
        now = time.time()
        infos = sorted(self.nodes.values(), key=lambda n: n.nodeId)
        # Ask every broker at once: one slow node must not hold up the rest.
        answers = await defer.gatherResults(
            [
                defer.ensureDeferred(self._remoteStatus(info))
                if "broker" in info.roles
                else defer.succeed(None)
                for info in infos
            ]
        )
        rows = []
        for info, remote in zip(infos, answers, strict=True):
            alive = info.state == "alive"
            address = (
                info.addresses.get("mqtt")
                or info.addresses.get("cluster")
                or info.addresses.get("placement")
                or ""
            )
            rows.append(
                {
                    "node": info.nodeId,
                    "roles": list(info.roles),
                    "state": info.state,
                    "address": address,
                    "started_at": info.startedAt,
                    "uptime": (now - info.startedAt) if alive and info.startedAt else None,
                    "clients": None if remote is None else remote["clients"],
                }
            )
        return rows
