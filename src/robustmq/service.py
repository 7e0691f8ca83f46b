"""Builds the node's MultiService from settings: storage, broker, listeners."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from robustmq.config import ConfigError, ListenerSettings, Settings
from robustmq.core.auth import AuthChain
from robustmq.core.broker import Broker
from robustmq.core.security import Security
from robustmq.core.systopics import SysTopicsService
from robustmq.interfaces import (
    IAuthenticatorPlugin,
    IAuthMechanismPlugin,
    IProtocolPlugin,
    IShardStore,
    IShardStorePlugin,
)
from robustmq.registry import findPlugin, findPlugins
from robustmq.startup import listenFailure
from robustmq.transports import CertificateReloader, serverEndpoint


class ListenerService(Service):
    """Listens on one endpoint with one protocol factory.

    Binding happens in C{privilegedStartService} and a failure (port in use,
    bad address) is raised there, so a node that cannot listen does not start.
    """

    log = Logger()

    def __init__(
        self, listener: ListenerSettings, endpoint: IStreamServerEndpoint, factory: Any
    ) -> None:
        self.listener = listener
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.setName(f"listener:{listener.label}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Any] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            ls = self.listener
            raise listenFailure(
                f"listener {ls.label}",
                ls.bind,
                ls.port,
                failures[0].value,
                f"change `port` of this [[listeners]] entry ({ls.protocol} over {ls.transport})",
            )

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        self.log.info(
            "listening for {protocol} over {transport} on {host}:{port}",
            protocol=self.listener.protocol,
            transport=self.listener.transport,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


class StoreService(Service):
    """Opens the shard store at start; the broker closes it after its clients."""

    def __init__(self, store: IShardStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        d = defer.maybeDeferred(self.store.open)
        failures: list[Any] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()


def makeService(
    settings: Settings,
    reactor: Any = None,
    configPath: str | None = None,
    worker: Any = None,
) -> IService:
    """The whole node: shard store, broker, $SYS publisher and one service per listener.

    Services stop in reverse order: listeners first (no new clients), then
    the broker (closes clients, then flushes and closes the store).

    With C{[node] workers} other than 1 this process is the node's
    supervisor instead (L{robustmq.workers.makeNodeService}: placement
    center, shared sockets, worker processes, the node's admin API), and
    each worker process builds its broker here from the same settings and
    its L{robustmq.workers.WorkerContext} C{worker}.

    @param configPath: the config file, which worker processes read too.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    fds: list[int | None] = [None] * len(settings.listeners)
    if worker is None:
        from robustmq.workers import makeNodeService, resolvedWorkers

        if resolvedWorkers(settings) > 1:
            return makeNodeService(settings, reactor, configPath)
    else:
        from robustmq.workers import workerSettings

        fds = [worker.fds[i] for i in sorted(worker.fds)]
        settings = workerSettings(settings, worker)
    top = MultiService()
    roles = settings.node.roles
    cluster = settings.cluster
    if cluster.enabled and "placement" in roles:
        # First, so it stops last: brokers of this process still reach it while stopping.
        from robustmq.placement.server import makePlacementService

        makePlacementService(settings, reactor).setServiceParent(top)
    if "broker" not in roles:
        _placementMembership(settings, reactor).setServiceParent(top)
        return top
    storePlugin = findPlugin(IShardStorePlugin, settings.storage.backend, "storage.backend")
    store = storePlugin.build(settings, reactor)
    if settings.http.enabled:
        # Times append/read/upsert/deleteKey for the storage histograms of /metrics.
        from robustmq.storage.timing import TimedShardStore

        store = TimedShardStore(store)
    # Users, ACL rules and bans (docs/security.md); the chain runs in [auth] chain order.
    shardMetadata = None
    if cluster.enabled:
        # Users, ACL rules and bans shared through the placement center.
        import os

        from robustmq.cluster.metadata import ClusterMetadataStore

        path = os.path.join(settings.node.data_dir, "metadata", "security.sqlite3")
        security = Security(settings, reactor, ClusterMetadataStore(path))
    elif getattr(store, "stateless", False):
        # A store any node can read (s3): keep them with the shards, not in node.data_dir.
        from robustmq.core.security.metadata import ShardMetadataStore

        shardMetadata = ShardMetadataStore(store)
        security = Security(settings, reactor, shardMetadata)
    else:
        security = Security.forNode(settings, reactor)
    auth = AuthChain(
        [
            findPlugin(IAuthenticatorPlugin, name, f"auth.chain[{i}]").build(settings, security)
            for i, name in enumerate(settings.auth.chain)
        ]
    )
    mechanisms = {
        name: plugin.build(settings, security)
        for name, plugin in findPlugins(IAuthMechanismPlugin).items()
    }
    broker = Broker(settings, reactor, store=store, auth=auth, authMechanisms=mechanisms)
    broker.security = security  # type: ignore[attr-defined]
    if shardMetadata is not None:
        broker.recoveryHooks.append(shardMetadata.load)

    # A new ban (made here, or pushed from the cluster) closes the clients it covers.
    def banned(kind: str, key: str, value: Any) -> None:
        if value is None:
            return
        if value.get("kind") == "clientid":
            # One client id: look its connection up instead of scanning every one.
            mqtt = broker.nodeServices.get("mqtt")
            session = mqtt.sessions.get(value.get("value", "")) if mqtt is not None else None
            connection = session.connection if session is not None else None
            security.disconnectBanned([connection] if connection is not None else [])
        else:
            security.disconnectBanned(broker.connections)

    security.metadata.watch("bans", banned)
    broker.setName("broker")
    if cluster.enabled:
        # Before the broker, so it is told to stop after it (MultiService stops in
        # reverse order): the broker closes its clients first, then the node leaves.
        from robustmq.cluster.node import ClusterNode

        node = ClusterNode(settings, broker, store, reactor)
        if worker is not None:
            # The workers are one node: its $SYS topics reach subscribers on every worker.
            node.sysNodeWide = True
        broker.cluster = node
        node.setName("cluster")
        node.setServiceParent(top)
    broker.setServiceParent(top)
    if settings.mqtt.sys_interval > 0:
        if worker is not None:
            # The home worker publishes the node's $SYS values, summed over its workers.
            from robustmq.workers import NodeSysTopics

            NodeSysTopics(broker, settings.mqtt.sys_interval).setServiceParent(top)
        else:
            SysTopicsService(broker, settings.mqtt.sys_interval).setServiceParent(top)
    # Re-reads the certificates of tls, wss and quic listeners on SIGHUP.
    reloader = CertificateReloader(reactor)
    reloader.setServiceParent(top)
    if settings.acl.file and "file" in settings.acl.sources:
        reloader.register(_AclFile(security))
    plugins = []
    for i, listener in enumerate(settings.listeners):
        plugin = findPlugin(IProtocolPlugin, listener.protocol, f"listeners[{i}].protocol")
        if listener.transport not in plugin.transports:
            raise ConfigError(
                f"listeners[{i}].transport: protocol {listener.protocol!r} does not support "
                f"{listener.transport!r} (supported: {list(plugin.transports)})"
            )
        plugins.append(plugin)
    # Node-wide protocol state: after the broker (started once it is), before the
    # listeners (stopped after the last one has closed its connections).  Kafka
    # topics mapped to MQTT topics need the Kafka service without a Kafka listener.
    served = {p.name: p for p in plugins}
    if settings.mappings and "kafka" not in served:
        served["kafka"] = findPlugin(IProtocolPlugin, "kafka", "mappings")
    if cluster.enabled and "mqtt" not in served:
        # The cluster hands MQTT sessions over and adopts them (ISessionDirectory).
        served["mqtt"] = findPlugin(IProtocolPlugin, "mqtt", "cluster.enabled")
    for plugin in served.values():
        nodeService = plugin.buildNodeService(broker, reactor)
        if nodeService is not None:
            broker.nodeServices[plugin.name] = nodeService
            nodeService.setServiceParent(top)
    for i, (listener, plugin) in enumerate(zip(settings.listeners, plugins, strict=True)):
        factory = plugin.buildFactory(broker, listener, reactor)
        endpoint = serverEndpoint(
            reactor, listener, reloader, f"listeners[{i}]", settings.mqtt.connect_timeout, fds[i]
        )
        ListenerService(listener, endpoint, factory).setServiceParent(top)
    if settings.http.enabled:
        # Last, so it stops first: the admin API (docs/operations.md) reports the listeners.
        from robustmq.admin import AdminService

        unixPath = worker.httpPath() if worker is not None else ""
        AdminService(settings, broker, top, reactor, unixPath).setServiceParent(top)
    if worker is not None:
        from robustmq.workers import ParentWatch

        ParentWatch(reactor).setServiceParent(top)
    return top


def _placementMembership(settings: Settings, reactor: Any) -> IService:
    """A placement-only node registers too, so that cluster listings show it."""
    import time

    from robustmq.placement.client import PlacementClient
    from robustmq.placement.records import NodeInfo

    placement = settings.placement
    address = placement.advertise or f"{placement.bind}:{placement.port}"
    info = NodeInfo(
        settings.node.id, tuple(settings.node.roles), {"placement": address}, time.time()
    )
    return PlacementClient(placement, info, None, reactor)


class _AclFile:
    """Re-reads the ACL rule file on SIGHUP, with the certificates."""

    def __init__(self, security: Security) -> None:
        self.security = security

    def reload(self) -> None:
        self.security.reloadAclFile()
