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

This module holds the node's identity, service lifecycle, placement pushes,
links and status; each concern above lives in a mixin of its own module:
L{robustmq.cluster.routing.Routing}, L{robustmq.cluster.handover.HandOver}
and L{robustmq.cluster.adoption.Adoption}.  MQTT sessions are reached
through the MQTT node service (L{robustmq.interfaces.ISessionDirectory}).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.addresses import isUnix, unixServerEndpoint
from robustmq.cluster import wire
from robustmq.cluster.adoption import ADOPTED_KEY, REPLICA_KEY, Adoption
from robustmq.cluster.handover import HandOver
from robustmq.cluster.metadata import PREFIX as META_PREFIX
from robustmq.cluster.metadata import ClusterMetadataStore
from robustmq.cluster.moves import Moves
from robustmq.cluster.peers import PeerLink, makePeerFactory
from robustmq.cluster.replication import (
    WILLS,
    ReplicaStore,
    ReplicatingStore,
    Replicator,
)
from robustmq.cluster.routes import LocalRoutes, RemoteRoutes
from robustmq.cluster.routing import Routing
from robustmq.cluster.services import ProtocolServices
from robustmq.config import Settings
from robustmq.core.persistence import (
    encodeMessage,
)
from robustmq.core.systopics import sysCounters
from robustmq.interfaces import IClusterRouting, IClusterServices, ISessionDirectory
from robustmq.placement.client import PlacementClient
from robustmq.placement.records import NodeInfo
from robustmq.placement.server import ClusterSecretChecker
from robustmq.transports.tls import serverCertificateOptions


@implementer(IClusterRouting, IClusterServices)
class ClusterNode(Routing, HandOver, Adoption, ProtocolServices, Service):
    """This broker in the cluster (see the module docstring)."""

    log = Logger()

    def __init__(self, settings: Settings, broker: Any, store: Any, reactor: Any) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.broker = broker
        self._mqtt: Any = None
        self._initServices()
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
        addresses.update(self._serviceAddresses())
        return NodeInfo(self.nodeId, tuple(self.settings.node.roles), addresses, self.startedAt)

    # Service

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        placement = self.settings.placement
        endpoint: Any
        if isUnix(self.cluster.advertise):
            # The workers of one node link over Unix sockets (docs/workers.md).
            endpoint = unixServerEndpoint(self.reactor, self.cluster.advertise)
        elif placement.tls_cert:
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
        tls = " (TLS)" if self.settings.placement.tls_cert and not isUnix(self.advertise()) else ""
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
        self._loadSnapshot(snapshot)
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
        self._nodeInfo(info)

    def routeChanged(self, entry: Any) -> None:
        self.remote.set(entry.filter, entry.nodeIds)

    def shardChanged(self, record: Any) -> None:
        self._shardRecord(record)

    def configChanged(self, entry: Any) -> None:
        self._configEntry(entry.key, entry.value)
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
        session = self.mqtt.sessions.get(record.clientId)
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

    @property
    def mqtt(self) -> Any:
        """The node's MQTT sessions (L{ISessionDirectory}) that this broker hands over,
        adopts and routes shared-group messages to."""
        directory = self._mqtt
        if directory is None:
            directory = self._mqtt = ISessionDirectory(self.broker.nodeService("mqtt"))
        return directory

    def aliveBrokers(self) -> list[str]:
        """Live broker node ids (this one included), sorted."""
        return sorted(
            n.nodeId for n in self.nodes.values() if n.state == "alive" and "broker" in n.roles
        )

    def _alive(self, nodeId: str) -> bool:
        info = self.nodes.get(nodeId)
        return info is not None and info.state == "alive"

    # Status

    def retainedSnapshot(self) -> list[bytes]:
        return wire.pack(encodeMessage(m) for m in self.broker.retained)

    def localStatus(self) -> dict[str, Any]:
        broker = self.broker
        return {
            "clients": len(broker.connections),
            "sessions": len(self.mqtt.sessions),
            "started_at": self.startedAt,
            "forwarded": self.forwarded,
            "received": self.received,
            "dropped": self.dropped,
            "redirected": self.redirected,
        }

    def sysCounters(self) -> dict[str, float]:
        """This broker's $SYS numbers, sampled now (the home worker of a node adds up
        its workers', docs/workers.md)."""
        self.broker.stats.sample(self.reactor.seconds())
        return sysCounters(self.broker)

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
