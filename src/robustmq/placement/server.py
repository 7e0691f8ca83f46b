"""The placement service on the wire: Perspective Broker behind twisted.cred.

A node logs in with its node id as the user name and the cluster secret as
the password (PB's challenge-response: the secret itself never crosses the
wire).  L{ClusterSecretChecker} refuses a wrong secret or a malformed node
id; L{PlacementRealm} hands out one L{NodeAvatar} per connection, bound to
the node id that logged in, and every remote method acts as that node (a
node cannot register, release or claim on behalf of another).

L{makePlacementService} builds the service a placement node runs: open the
backend, join the leader election, listen for PB on C{[placement] bind:port}
(over TLS when C{[placement] tls_cert} is set).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from twisted.application.service import Service
from twisted.cred import checkers, credentials, portal
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.spread import banana, pb
from zope.interface import implementer

from robustmq.addresses import unixServerEndpoint
from robustmq.config import ConfigError, Settings
from robustmq.interfaces import IPlacementBackendPlugin
from robustmq.placement.center import PlacementCenter
from robustmq.placement.errors import LoginRefusedError
from robustmq.placement.records import NODE_ID
from robustmq.transports.tls import serverCertificateOptions


@implementer(checkers.ICredentialsChecker)
class ClusterSecretChecker:
    """Accepts any well-formed node id that proves it knows the cluster secret."""

    credentialInterfaces = (credentials.IUsernameHashedPassword, credentials.IUsernamePassword)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ConfigError("placement.cluster_secret: must be set to run the placement service")
        self.secret = secret.encode()

    def requestAvatarId(self, creds: Any) -> Deferred[bytes]:
        username = creds.username
        name = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
        if not NODE_ID.match(name):
            return fail(LoginRefusedError("not a node id"))
        if credentials.IUsernamePassword.providedBy(creds):
            ok = hmac.compare_digest(creds.password, self.secret)
        else:
            ok = bool(creds.checkPassword(self.secret))
        if not ok:
            return fail(LoginRefusedError("wrong cluster secret"))
        return succeed(name.encode())


def _remote(method: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
    """A perspective method that runs C{center.<name>(nodeId, ...)} as a Deferred."""
    name = method.__name__[len("perspective_") :]

    def call(self: NodeAvatar, *args: Any) -> Deferred[Any]:
        return ensureDeferred(getattr(self.center, name)(self.nodeId, *args))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class NodeAvatar(pb.Avatar):
    """What one logged-in node may do; every call acts as C{nodeId}."""

    def __init__(self, nodeId: str, center: PlacementCenter) -> None:
        self.nodeId = nodeId
        self.center = center

    def perspective_register(self, info: Any, listener: Any) -> Deferred[Any]:
        """Register this node (a L{NodeInfo} for itself) and the listener for pushes."""
        return ensureDeferred(self.center.register(self.nodeId, info, listener, self))

    @_remote
    def perspective_heartbeat(self) -> None:
        """Keep this node alive."""

    @_remote
    def perspective_leave(self) -> None:
        """This node stops cleanly: declare it dead at once."""

    @_remote
    def perspective_listNodes(self) -> None:
        """Every known node, alive or dead."""

    @_remote
    def perspective_setConfig(self, key: str, value: str) -> None:
        """Set a cluster-wide config value (pushed to every node)."""

    @_remote
    def perspective_getConfig(self, key: str) -> None:
        """A cluster-wide config value, or None."""

    @_remote
    def perspective_claimSession(self, clientId: str, expiryInterval: int) -> None:
        """Own C{clientId}'s session; returns the previous owner's record."""

    @_remote
    def perspective_releaseSession(self, clientId: str) -> None:
        """Forget a session this node owns."""

    @_remote
    def perspective_lookupSession(self, clientId: str) -> None:
        """Who owns C{clientId}'s session."""

    @_remote
    def perspective_addRoute(self, topicFilter: str) -> None:
        """This node has subscribers for C{topicFilter} (pushed to the others)."""

    @_remote
    def perspective_removeRoute(self, topicFilter: str) -> None:
        """This node no longer has subscribers for C{topicFilter}."""

    @_remote
    def perspective_listRoutes(self) -> None:
        """The whole route table."""

    @_remote
    def perspective_assignShard(self, shard: str, pinned: bool = False) -> None:
        """The shard's leader, chosen among live brokers if it has none (C{pinned}: it
        keeps a dead leader, its data living only there)."""

    @_remote
    def perspective_moveShard(self, shard: str, to: str) -> None:
        """Move the shard's leadership to live broker C{to}."""

    @_remote
    def perspective_allocateIds(self, name: str, count: int) -> None:
        """Reserve C{count} cluster-unique ids of sequence C{name}; the first one."""

    @_remote
    def perspective_getShard(self, shard: str) -> None:
        """The shard's record, or None."""

    @_remote
    def perspective_commitOffset(self, group: str, shard: str, offset: int, metadata: str) -> None:
        """Store a consumer group's offset."""

    @_remote
    def perspective_fetchOffset(self, group: str, shard: str) -> None:
        """A consumer group's offset, or None."""

    def logout(self) -> None:
        self.center.detach(self.nodeId, self)


@implementer(portal.IRealm)
class PlacementRealm:
    """Makes a L{NodeAvatar} for each node that logs in."""

    def __init__(self, center: PlacementCenter) -> None:
        self.center = center

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("the placement realm only serves PB perspectives")
        nodeId = avatarId.decode() if isinstance(avatarId, bytes) else str(avatarId)
        avatar = NodeAvatar(nodeId, self.center)
        return pb.IPerspective, avatar, avatar.logout


@implementer(IHandshakeListener)
class PlacementBroker(pb.Broker):
    """The server side of one PB connection; over TLS, its handshake has a deadline.

    A peer that never completes the TLS handshake (a plain-TCP client waits
    for PB's greeting, which TLS holds back until the handshake) is dropped
    when the deadline passes, so its client sees the failure and retries.
    A peer that does not speak PB at all is dropped with a warning rather
    than an unhandled error.
    """

    log = Logger()
    #: The pending handshake deadline (an IDelayedCall), None once met or with plain TCP.
    deadline: Any = None
    tls = False
    handshakeDone = False

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True
        self._cancelDeadline()

    def handshakeTimedOut(self) -> None:
        self.deadline = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancelDeadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def dataReceived(self, chunk: bytes) -> None:
        try:
            super().dataReceived(chunk)
        except (banana.BananaError, NotImplementedError) as e:
            # Not PB at all: a TLS client at a plain-TCP service, a port scanner.
            peer = self.transport.getPeer()
            self.log.warn(
                "placement: dropping {peer}, which does not speak PB: {error}",
                peer=getattr(peer, "host", peer),
                error=str(e),
            )
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancelDeadline()
        if self.tls and not self.handshakeDone:
            peer = self.transport.getPeer() if self.transport is not None else None
            self.log.info(
                "placement: TLS handshake with {peer} failed: {error}",
                peer=getattr(peer, "host", peer),
                error=reason.getErrorMessage(),
            )
        super().connectionLost(reason)


class PlacementServerFactory(pb.PBServerFactory):
    """A PB server factory that remembers its connections, to drop them on stop.

    @param handshakeTimeout: with TLS, seconds a connection may take to
        complete its handshake (None: plain TCP, no deadline).
    """

    protocol = PlacementBroker

    def __init__(
        self, root: Any, reactor: Any = None, handshakeTimeout: float | None = None
    ) -> None:
        super().__init__(root)
        self.reactor = reactor
        self.handshakeTimeout = handshakeTimeout
        self.connections: WeakSet[pb.Broker] = WeakSet()

    def buildProtocol(self, addr: Any) -> PlacementBroker:
        broker: PlacementBroker = super().buildProtocol(addr)
        if self.handshakeTimeout is not None:
            broker.tls = True
            broker.deadline = self.reactor.callLater(
                self.handshakeTimeout, broker.handshakeTimedOut
            )
        self.connections.add(broker)
        return broker

    def dropAll(self) -> None:
        for broker in list(self.connections):
            if broker.transport is not None:
                broker.transport.loseConnection()


class PlacementService(Service):
    """One placement node: backend, election, PB listener.

    @ivar port: the listening port (useful when configured as 0).
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        backend: Any | None = None,
        address: str = "",
    ) -> None:
        """@param address: C{unix:PATH} to listen on a Unix socket instead of
        C{[placement] bind:port} (a node's private placement center for its
        worker processes, docs/workers.md)."""
        self.settings = settings
        self.address = address
        self.reactor = reactor
        placement = settings.placement
        self.checker = ClusterSecretChecker(placement.cluster_secret)
        # Read (and checked) now: bad files are a ConfigError at start-up.
        self.tlsOptions: Any = None
        if placement.tls_cert:
            self.tlsOptions = serverCertificateOptions(
                placement.tls_cert, placement.tls_key, "placement.tls_cert", "placement.tls_key"
            )
        if backend is None:
            from robustmq.registry import findPlugin

            plugin = findPlugin(IPlacementBackendPlugin, placement.backend, "placement.backend")
            backend = plugin.build(settings, reactor)
        self.backend = backend
        self.center: PlacementCenter | None = None
        self.factory: PlacementServerFactory | None = None
        self.listening: Any = None
        self.port = placement.port
        self.ready: Deferred[None] = Deferred()

    def advertise(self) -> str:
        if self.address:
            return self.address
        placement = self.settings.placement
        return placement.advertise or f"{placement.bind}:{self.port}"

    async def _start(self) -> None:
        placement = self.settings.placement
        await self.backend.open()
        endpoint: Any
        handshakeTimeout = None
        if self.address:
            endpoint = unixServerEndpoint(self.reactor, self.address)
        elif self.tlsOptions is not None:
            endpoint = SSL4ServerEndpoint(
                self.reactor, placement.port, self.tlsOptions, interface=placement.bind
            )
            # A node that cannot finish TLS within the time it may go silent
            # is not going to: drop it, so its client sees the failure.
            handshakeTimeout = placement.heartbeat_timeout
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, placement.port, interface=placement.bind)
        # The PB root needs the center, the center needs the advertised port:
        # listen first with a factory whose portal is filled in right after.
        self.factory = PlacementServerFactory(
            portal.Portal(PlacementRealm(None), [self.checker]),  # type: ignore[arg-type]
            self.reactor,
            handshakeTimeout,
        )
        self.listening = await endpoint.listen(self.factory)
        self.port = getattr(self.listening.getHost(), "port", 0)
        self.center = PlacementCenter(self.backend, placement, self.reactor, self.advertise())
        self.factory.root.portal.realm.center = self.center
        self.center.onStepDown = self.factory.dropAll
        await self.center.start()
        if self.backend.name == "embedded":
            await self.center.becameLeader  # the only placement node: leads at once
        self.log.info(
            "placement service ({backend}) on {address}{tls}",
            backend=self.backend.name,
            address=self.advertise() if self.address else f"{placement.bind}:{self.port}",
            tls=" (TLS)" if self.tlsOptions is not None and not self.address else "",
        )
        self.ready.callback(None)

    def startService(self) -> None:
        super().startService()
        d = ensureDeferred(self._start())
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        self.log.failure("placement service failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)

    async def _stop(self) -> None:
        if self.listening is not None:
            await self.listening.stopListening()
            self.listening = None
        if self.factory is not None:
            self.factory.dropAll()
        if self.center is not None:
            await self.center.stop()
        await self.backend.close()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())


def makePlacementService(settings: Settings, reactor: Any) -> PlacementService:
    """The service of a placement node configured by C{settings} (not yet started)."""
    return PlacementService(settings, reactor)


def embeddedDirectory(settings: Settings) -> str:
    """Where the embedded backend keeps its file: C{<node.data_dir>/placement}."""
    return os.path.join(settings.node.data_dir, "placement")


__all__ = [
    "ClusterSecretChecker",
    "NodeAvatar",
    "PlacementBroker",
    "PlacementRealm",
    "PlacementServerFactory",
    "PlacementService",
    "embeddedDirectory",
    "makePlacementService",
]
