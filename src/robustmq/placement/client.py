"""A broker's connection to the placement center.

L{PlacementClient} is a L{ClientService}: it connects to the placement
nodes of C{[placement] servers}, and in C{prepareConnection} logs in over PB
with the node id and cluster secret and registers (L{NodeInfo} plus a
L{PlacementListener} for pushed updates).  When the connection drops it
reconnects with exponential back-off (up to C{reconnect_max_delay}) and
registers again, receiving a fresh snapshot.  A follower placement node
answers with L{NotLeaderError} naming the leader; the next attempt goes
there.  Heartbeats run every C{heartbeat_interval} while connected; a
heartbeat refused with L{NotRegisteredError} (declared dead meanwhile)
registers again at once.

With C{[placement] tls_ca} set, every connection is TLS and the placement
node's certificate must chain to that CA and be valid for the host part of
the address connected to (a C{servers} entry or a leader's C{advertise}).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as _Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb

from robustmq.addresses import clientEndpoint
from robustmq.config import ConfigError, PlacementSettings
from robustmq.placement.errors import NotLeaderError, NotRegisteredError, isRemote
from robustmq.placement.pbclient import dropFailedConnection, failLoginOnDisconnect
from robustmq.placement.records import NodeInfo, decodeBatch
from robustmq.transports.tls import clientTLSOptions


class PlacementHandler(Protocol):
    """What a broker implements to follow the cluster (every method optional)."""

    def registered(self, snapshot: dict[str, list[Any]]) -> None: ...
    def nodeChanged(self, info: Any) -> None: ...
    def routeChanged(self, entry: Any) -> None: ...
    def shardChanged(self, record: Any) -> None: ...
    def configChanged(self, entry: Any) -> None: ...
    def sessionTakenOver(self, record: Any) -> None: ...


class PlacementListener(pb.Referenceable):
    """The reference a broker hands over; pushes become handler calls."""

    log = Logger()

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        #: pushes received while a registration's snapshot is not yet handed over
        self._held: list[tuple[str, Any]] | None = None

    def hold(self) -> None:
        """Keep pushes back until L{release}: they are newer than the snapshot coming."""
        self._held = []

    def release(self) -> None:
        """Hand over the pushes held since L{hold}, in order (after the snapshot)."""
        held, self._held = self._held, None
        for name, record in held or ():
            self._call(name, record)

    def _call(self, name: str, record: Any) -> None:
        if self._held is not None:
            self._held.append((name, record))
            return
        method = getattr(self.handler, name, None)
        if method is not None:
            try:
                method(record)
            except Exception:
                self.log.failure("placement handler {name} failed", name=name)

    def remote_nodeChanged(self, info: Any) -> None:
        self._call("nodeChanged", info)

    def remote_routeChanged(self, entry: Any) -> None:
        self._call("routeChanged", entry)

    def remote_shardChanged(self, record: Any) -> None:
        self._call("shardChanged", record)

    def remote_configChanged(self, entry: Any) -> None:
        self._call("configChanged", entry)

    def remote_sessionTakenOver(self, record: Any) -> None:
        self._call("sessionTakenOver", record)

    #: The handler method each pushed record type goes to.
    PUSHES = {
        "NodeInfo": "nodeChanged",
        "RouteEntry": "routeChanged",
        "ShardRecord": "shardChanged",
        "ConfigEntry": "configChanged",
        "SessionRecord": "sessionTakenOver",
    }

    def remote_updates(self, chunks: Any) -> None:
        """A batch of pushes (L{robustmq.placement.records.encodeBatch}), handled in order."""
        records = decodeBatch(
            chunks, lambda t: getattr(self.handler, self.PUSHES.get(t, ""), None) is not None
        )
        for record in records:
            self._call(self.PUSHES[record.typeName], record)


class _AwaitGreeting(_Protocol):
    """Holds a new connection back from the PB client until the placement node speaks.

    A PB server speaks first (it offers its dialects).  A connection lost
    before that (a failed TLS handshake or certificate check, a TLS service
    dropping a plain-TCP client) fails the connection attempt instead of
    reaching the PB client, so the ClientService retries with back-off.
    """

    def __init__(self, inner: Any, ready: Deferred[Any]) -> None:
        self.inner = inner
        self.ready = ready
        self.greeted = False

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted:
            self.greeted = True
            self.inner.makeConnection(self.transport)
            self.inner.dataReceived(data)
            if not self.ready.called:
                self.ready.callback(self.inner)
            return
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.greeted:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(reason)


class _AwaitGreetingFactory(Factory):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.protocols: list[_AwaitGreeting] = []
        self.ready: Deferred[Any] = Deferred(self._cancel)

    def buildProtocol(self, addr: Any) -> _AwaitGreeting:
        protocol = _AwaitGreeting(self.inner.buildProtocol(addr), self.ready)
        self.protocols.append(protocol)
        return protocol

    def _cancel(self, ready: Deferred[Any]) -> None:
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()


class _PlacementEndpoint:
    """Connects to the configured placement nodes in turn, or to the leader named last.

    @param cafile: with a CA bundle, connect with TLS and verify the node's
        certificate against it and against the host connected to.
    """

    log = Logger()

    def __init__(self, reactor: Any, servers: tuple[str, ...], cafile: str = "") -> None:
        self.reactor = reactor
        self.servers = list(servers)
        self.index = 0
        self.hint = ""
        self.cafile = cafile
        if cafile:
            self._tlsOptions("localhost")  # a missing or bad CA file fails at start-up

    def _tlsOptions(self, host: str) -> Any:
        # Read per connection: a replaced CA bundle is used from the next one on.
        try:
            return clientTLSOptions(host, cafile=self.cafile)
        except (OSError, ValueError) as e:
            raise ConfigError(f"placement.tls_ca: {self.cafile}: {e}") from None

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.hint:
            address, self.hint = self.hint, ""
        else:
            address = self.servers[self.index % len(self.servers)]
            self.index += 1
        endpoint, host = clientEndpoint(self.reactor, address)
        if self.cafile and host:
            try:
                endpoint = wrapClientTLS(self._tlsOptions(host), endpoint)
            except ConfigError:
                return fail()
        greeting = _AwaitGreetingFactory(factory)

        def dropped(f: Any) -> Any:
            if not f.check(CancelledError):
                self.log.warn(
                    "placement node {address} closed the connection before speaking PB "
                    "(TLS refused, or TLS on one side only?): {error}",
                    address=address,
                    error=f.getErrorMessage(),
                )
            return f

        d: Deferred[Any] = endpoint.connect(greeting)
        return d.addCallback(lambda _: greeting.ready.addErrback(dropped))


class _ConnectionFactory(Factory):
    """A fresh L{pb.PBClientFactory} per connection (its state is per connection)."""

    def buildProtocol(self, addr: Any) -> pb.Broker:
        return pb.PBClientFactory().buildProtocol(addr)  # type: ignore[no-any-return]


class PlacementClient(ClientService):
    """Keeps a broker logged in, registered and heartbeating with the placement leader.

    @param info: this node (its C{nodeId} is the login name).
    @param handler: receives pushed updates (see L{PlacementHandler}).
    """

    log = Logger()

    def __init__(
        self, settings: PlacementSettings, info: NodeInfo, handler: Any, reactor: Any
    ) -> None:
        if not settings.cluster_secret:
            from robustmq.config import ConfigError

            raise ConfigError("placement.cluster_secret: must be set to join a cluster")
        self.settings = settings
        self.info = info
        self.handler = handler
        self.reactor = reactor
        self.listener = PlacementListener(handler)
        self.endpoint = _PlacementEndpoint(reactor, settings.servers, settings.tls_ca)
        self.perspective: Any = None
        self.registrations = 0
        self._waiting: list[Deferred[Any]] = []
        self._heartbeat: LoopingCall | None = None
        super().__init__(
            self.endpoint,
            _ConnectionFactory(),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=settings.reconnect_max_delay),
            clock=reactor,
            prepareConnection=self._prepare,
        )

    # Connection set-up (ClientService's prepareConnection)

    def _prepare(self, broker: pb.Broker) -> Deferred[Any]:
        d = ensureDeferred(self._login(broker))

        def failed(f: Any) -> Any:
            self.log.warn("placement login/registration failed: {error}", error=f.getErrorMessage())
            dropFailedConnection(broker)
            return f

        return d.addErrback(failed)

    async def _login(self, broker: pb.Broker) -> None:
        factory: pb.PBClientFactory = broker.factory
        creds = UsernamePassword(self.info.nodeId.encode(), self.settings.cluster_secret.encode())
        lost = failLoginOnDisconnect(broker)
        perspective = await factory.login(creds, client=self.listener)
        broker.dontNotifyOnDisconnect(lost)
        broker.notifyOnDisconnect(self._disconnected)
        await self._register(perspective)

    async def _register(self, perspective: Any) -> None:
        # Pushes that arrive before the snapshot reaches the handler are newer than
        # it: hold them, or the snapshot would overwrite them (see _announce).
        self.listener.hold()
        try:
            snapshot = await perspective.callRemote("register", self.info, self.listener)
        except Exception as e:
            self.listener.release()
            leader = _leaderHint(e)
            if leader is not None:
                self.log.info(
                    "placement node is a follower; leader is {leader}", leader=leader or "?"
                )
                self.endpoint.hint = leader
            raise
        self.perspective = perspective
        self.registrations += 1
        self.log.info("registered with the placement center as {node}", node=self.info.nodeId)
        if self._heartbeat is None or not self._heartbeat.running:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.reactor
            self._heartbeat.start(self.settings.heartbeat_interval, now=False)
        # Tell the handler and waiters on the next turn: ClientService must
        # first see prepareConnection finish (else a waiter that stops the
        # service at once finds it still connecting).
        self.reactor.callLater(0, self._announce, perspective, snapshot)

    def _announce(self, perspective: Any, snapshot: dict[str, list[Any]]) -> None:
        if self.perspective is not perspective:
            self.listener.release()
            return  # lost again meanwhile
        registered = getattr(self.handler, "registered", None)
        if registered is not None:
            try:
                registered(snapshot)
            except Exception:
                self.log.failure("placement handler registered() failed")
        self.listener.release()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(perspective)

    def _disconnected(self) -> None:
        self.perspective = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()

    def _beat(self) -> Deferred[None] | None:
        perspective = self.perspective
        if perspective is None:
            return None
        d = perspective.callRemote("heartbeat")

        def failed(f: Any) -> None:
            if isRemote(f, NotRegisteredError) or f.check(NotRegisteredError):
                self.log.warn("declared dead by the placement center; registering again")
                ensureDeferred(self._register(perspective)).addErrback(
                    lambda f2: self.log.warn("re-registration failed: {e}", e=f2.getErrorMessage())
                )
            elif not f.check(pb.PBConnectionLost, pb.DeadReferenceError):
                self.log.warn("placement heartbeat failed: {error}", error=f.getErrorMessage())

        return d.addCallbacks(lambda _: None, failed)

    # Calls

    def whenRegistered(self) -> Deferred[Any]:
        """Fires with the perspective once registered (at once if it is)."""
        if self.perspective is not None:
            return Deferred.fromCoroutine(_value(self.perspective))
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    async def call(self, method: str, *args: Any) -> Any:
        """Call a placement method once registered (see L{NodeAvatar})."""
        perspective = await self.whenRegistered()
        return await perspective.callRemote(method, *args)

    def stopService(self) -> Deferred[None]:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()
        return super().stopService()  # type: ignore[no-any-return]


async def _value(value: Any) -> Any:
    return value


def _leaderHint(e: Exception) -> str | None:
    """The leader address in a (remote) L{NotLeaderError}, or None if it is not one."""
    if isinstance(e, NotLeaderError):
        return e.leader
    if isRemote(e, NotLeaderError):
        return str(e.args[0]) if e.args else ""
    return None


__all__ = ["PlacementClient", "PlacementHandler", "PlacementListener"]
