"""Broker-to-broker links over Perspective Broker.

Every broker listens on C{[cluster] bind:port} (L{makePeerFactory}); other
brokers log in there with their node id and the cluster secret (the same
challenge-response as the placement center) and call the avatar's methods:
C{forward} (a batch of messages to route), C{replicate} / C{replicaReset}
(a copy of the caller's persistent-session store), C{handOver} (give a
session to the caller), C{status} and C{retainedSnapshot}.

L{PeerLink} is one broker's connection to another: a L{ClientService} that
reconnects with back-off, with an ordered outbound queue that it sends in
batches of at most C{forward_batch_size} entries, up to L{MAX_CALLS} calls
in flight.  Entries of a call lost with the connection go back to the front
of the queue (order kept) and are sent again after reconnecting, except
QoS 0 messages, which are dropped.  Unacknowledged forwarded messages are
bounded by C{forward_max_pending}: at the bound the link is I{congested} and
publishers feeding it are paused, exactly as for a full session queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.cred import portal
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from robustmq.addresses import clientEndpoint
from robustmq.cluster import wire
from robustmq.interfaces import StorageClosedError
from robustmq.placement.pbclient import dropFailedConnection, failLoginOnDisconnect
from robustmq.transports.tls import clientTLSOptions

#: Batches one link may have in flight at once.
MAX_CALLS = 4

FORWARD = "forward"
REPLICATE = "replicate"
#: Kind prefix of messages re-sent for a dead node's sessions: "forwardFor:<dead node>".
FORWARD_FOR = "forwardFor:"


class PeerAvatar(pb.Avatar):
    """What a logged-in broker may ask of this one; every call names the caller."""

    def __init__(self, nodeId: str, node: Any) -> None:
        self.nodeId = nodeId
        self.node = node

    def perspective_forward(self, chunks: list[bytes]) -> Deferred[Any]:
        return maybeDeferred(self.node.receiveForward, self.nodeId, wire.decodeForwards(chunks))

    def perspective_forwardFor(self, dead: str, chunks: list[bytes]) -> Deferred[Any]:
        if not isinstance(dead, str):
            raise ValueError("forwardFor(dead: str, chunks)")
        return ensureDeferred(
            self.node.receiveForwardFor(self.nodeId, dead, wire.decodeForwards(chunks))
        )

    def perspective_replicate(self, chunks: list[bytes]) -> Deferred[Any]:
        d = maybeDeferred(self.node.replicas.apply, self.nodeId, wire.unpack(chunks))
        return d.addErrback(_refuseWhileStopping)

    def perspective_replicaReset(self) -> Deferred[Any]:
        return ensureDeferred(self.node.replicas.reset(self.nodeId))

    def perspective_handOver(self, clientId: str, discard: bool, owner: str) -> Deferred[Any]:
        if not isinstance(clientId, str) or not isinstance(owner, str):
            raise ValueError("handOver(clientId: str, discard: bool, owner: str)")
        return ensureDeferred(self.node.handOver(self.nodeId, clientId, bool(discard), owner))

    def perspective_status(self) -> dict[str, Any]:
        return self.node.localStatus()  # type: ignore[no-any-return]

    def perspective_sysCounters(self) -> dict[str, float]:
        return self.node.sysCounters()  # type: ignore[no-any-return]

    def perspective_retainedSnapshot(self) -> list[bytes]:
        return self.node.retainedSnapshot()  # type: ignore[no-any-return]

    def perspective_call(self, name: str, method: str, args: list[Any]) -> Deferred[Any]:
        """A protocol's call (IClusterServices.callBroker) to the handler it serves."""
        if not isinstance(name, str) or not isinstance(method, str) or not isinstance(args, list):
            raise ValueError("call(name: str, method: str, args: list)")
        return maybeDeferred(self.node.callHandler, self.nodeId, name, method, args)


def _refuseWhileStopping(failure: Failure) -> Failure:
    """A batch that found this broker's store closed (it is stopping) is refused with a
    plain PB error: the sender keeps going without this copy, and no traceback is logged
    for what is no fault."""
    inner = failure
    if failure.check(FirstError):
        inner = failure.value.subFailure
    if inner.check(StorageClosedError):
        raise pb.Error("this broker is stopping: its store is closed")
    return failure


@implementer(portal.IRealm)
class PeerRealm:
    """Makes a L{PeerAvatar} for each broker that logs in."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("the broker link only serves PB perspectives")
        nodeId = avatarId.decode() if isinstance(avatarId, bytes) else str(avatarId)
        return pb.IPerspective, PeerAvatar(nodeId, self.node), lambda: None


def makePeerFactory(node: Any, checker: Any) -> pb.PBServerFactory:
    """The server factory of the broker-to-broker listener."""
    factory = pb.PBServerFactory(portal.Portal(PeerRealm(node), [checker]))
    factory.noisy = False
    return factory


class _Endpoint:
    """Connects to the peer's current address (it may change when the peer re-registers).

    With a CA bundle the connection is TLS and the peer's certificate must be
    issued by that CA for the host connected to.
    """

    def __init__(self, reactor: Any, address: str, cafile: str = "") -> None:
        self.reactor = reactor
        self.address = address
        self.cafile = cafile

    def connect(self, factory: Any) -> Deferred[Any]:
        endpoint, host = clientEndpoint(self.reactor, self.address)
        if self.cafile and host:
            endpoint = wrapClientTLS(clientTLSOptions(host, cafile=self.cafile), endpoint)
        return endpoint.connect(factory)  # type: ignore[no-any-return]


class _ConnectionFactory(Factory):
    noisy = False

    def buildProtocol(self, addr: Any) -> pb.Broker:
        factory = pb.PBClientFactory()
        factory.noisy = False
        return factory.buildProtocol(addr)  # type: ignore[no-any-return]


#: One queued item: (kind, packed bytes, who waits for its reply or None, whether a lost
#: connection may drop it) -- a plain tuple: one is made per forwarded message.
_Entry = tuple[str, bytes, "Deferred[Any] | None", bool]
KIND, DATA, WAITER, DROPPABLE = 0, 1, 2, 3


class PeerLink(ClientService):
    """This broker's connection to one other broker (see the module docstring).

    Also behaves as a congested session for the protocols' back-pressure:
    C{congested}, C{connection} (always None), C{waiters}, C{addWaiter},
    C{removeWaiter}; waiters get C{congestionCleared(self)}.
    """

    log = Logger()

    def __init__(
        self,
        localId: str,
        peerId: str,
        address: str,
        secret: str,
        batchSize: int,
        maxPending: int,
        reactor: Any,
        onDrop: Callable[[int], None] = lambda n: None,
        cafile: str = "",
    ) -> None:
        self.localId = localId
        self.peerId = peerId
        self.secret = secret
        self.batchSize = batchSize
        self.maxPending = maxPending
        self.reactor = reactor
        self.onDrop = onDrop
        self.endpoint = _Endpoint(reactor, address, cafile)
        self.perspective: Any = None
        self.queue: deque[_Entry] = deque()
        #: call number -> entries of a batch in flight
        self.inflight: dict[int, list[_Entry]] = {}
        self.calls = 0
        #: forwarded messages queued or in flight (the bounded quantity)
        self.pending = 0
        self.congested = False
        self.connection = None
        self.waiters: set[Any] = set()
        self._flushing = False
        self._ready: list[Deferred[Any]] = []
        super().__init__(
            self.endpoint,
            _ConnectionFactory(),
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=2.0),
            clock=reactor,
            prepareConnection=self._prepare,
        )

    def __repr__(self) -> str:
        return f"<PeerLink {self.localId}->{self.peerId} pending={self.pending}>"

    @property
    def address(self) -> str:
        return self.endpoint.address

    @address.setter
    def address(self, value: str) -> None:
        self.endpoint.address = value

    # Connection

    def _prepare(self, broker: pb.Broker) -> Deferred[Any]:
        d = ensureDeferred(self._login(broker))

        def failed(f: Any) -> Any:
            self.log.warn(
                "login to broker {peer} failed: {error}",
                peer=self.peerId,
                error=f.getErrorMessage(),
            )
            dropFailedConnection(broker)
            return f

        return d.addErrback(failed)

    async def _login(self, broker: pb.Broker) -> None:
        creds = UsernamePassword(self.localId.encode(), self.secret.encode())
        lost = failLoginOnDisconnect(broker)
        perspective = await broker.factory.login(creds)
        broker.dontNotifyOnDisconnect(lost)
        broker.notifyOnDisconnect(lambda: self._lost(perspective))
        self.perspective = perspective
        self.log.info(
            "linked to broker {peer} at {address}", peer=self.peerId, address=self.address
        )
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(perspective)
        self.reactor.callLater(0, self._flush)

    def _lost(self, perspective: Any) -> None:
        if self.perspective is not perspective:
            return
        self.perspective = None
        self._requeueInflight()
        self.log.info(
            "link to broker {peer} lost; {n} entries wait for it",
            peer=self.peerId,
            n=len(self.queue),
        )

    def _requeueInflight(self) -> None:
        """Entries of calls that will never be answered go back to the front, in order."""
        requeue: list[_Entry] = []
        for call in sorted(self.inflight):
            requeue.extend(self.inflight[call])
        self.inflight.clear()
        dropped = 0
        for entry in reversed(requeue):
            if entry[DROPPABLE]:
                dropped += 1
                self._settle(entry, None)
            else:
                self.queue.appendleft(entry)
        if dropped:
            self.onDrop(dropped)

    def whenConnected(self) -> Deferred[Any]:  # type: ignore[override]
        """Fires with the peer's perspective once logged in."""
        if self.perspective is not None:
            d: Deferred[Any] = Deferred()
            d.callback(self.perspective)
            return d
        d = Deferred()
        self._ready.append(d)
        return d

    async def call(self, method: str, *args: Any, timeout: float = 10.0) -> Any:
        """Call C{method} on the peer once connected (bounded by C{timeout})."""
        d = self.whenConnected()
        timer = self.reactor.callLater(timeout, d.cancel)
        try:
            perspective = await d
        finally:
            if timer.active():
                timer.cancel()
        call = perspective.callRemote(method, *args)
        call.addTimeout(timeout, self.reactor)
        return await call

    # Queue

    def send(self, kind: str, data: bytes, qos: int) -> Deferred[Any] | None:
        """Queue one entry; for QoS > 0 (and replication) returns a Deferred fired on the reply.

        A QoS 0 entry is dropped (None) when the link is down.
        """
        isForward = kind != REPLICATE
        if isForward and qos == 0:
            if self.perspective is None:
                self.onDrop(1)
                return None
            self.queue.append((kind, data, None, True))
            waiter = None
        else:
            waiter = Deferred()
            self.queue.append((kind, data, waiter, False))
        if isForward:
            self.pending += 1
            if self.pending >= self.maxPending and not self.congested:
                self.congested = True
                self.log.warn(
                    "{n} messages for broker {peer} unacknowledged: pausing their publishers",
                    n=self.pending,
                    peer=self.peerId,
                )
        if not self._flushing:
            self._flushing = True
            self.reactor.callLater(0, self._flush)
        return waiter

    def _flush(self) -> None:
        self._flushing = False
        perspective = self.perspective
        queue = self.queue
        while perspective is not None and queue and len(self.inflight) < MAX_CALLS:
            kind = queue[0][KIND]
            batch: list[_Entry] = []
            while queue and len(batch) < self.batchSize and queue[0][KIND] == kind:
                batch.append(queue.popleft())
            self.calls += 1
            number = self.calls
            self.inflight[number] = batch
            chunks = wire.pack([e[DATA] for e in batch])
            if kind.startswith(FORWARD_FOR):
                d = perspective.callRemote("forwardFor", kind[len(FORWARD_FOR) :], chunks)
            else:
                d = perspective.callRemote(kind, chunks)
            d.addCallbacks(self._answered, self._failed, (number,), None, (number,))

    def _answered(self, result: Any, number: int) -> None:
        batch = self.inflight.pop(number, None)
        if batch is None:
            return  # requeued after the connection was lost
        # A batch holds entries of one kind: settle them together.
        if batch[0][KIND] != REPLICATE:
            self.pending -= len(batch)
            if self.congested and self.pending <= self.maxPending // 2:
                self._endCongestion()
        for entry in batch:
            waiter = entry[WAITER]
            if waiter is not None and not waiter.called:
                waiter.callback(None)
        self._flush()

    def _failed(self, failure: Any, number: int) -> None:
        batch = self.inflight.pop(number, None)
        if batch is None:
            return
        if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
            # The connection is going: _lost requeues every batch in order.
            self.inflight[number] = batch
            if self.perspective is None:
                self._requeueInflight()
            return
        self.log.warn(
            "broker {peer} refused a {kind} batch: {error}",
            peer=self.peerId,
            kind=batch[0][KIND],
            error=failure.getErrorMessage(),
        )
        for entry in batch:
            self._settle(entry, failure)
        self._flush()

    def _settle(self, entry: _Entry, failure: Any) -> None:
        if entry[KIND] != REPLICATE:
            self.pending -= 1
            if self.congested and self.pending <= self.maxPending // 2:
                self._endCongestion()
        waiter = entry[WAITER]
        if waiter is not None and not waiter.called:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    def abandon(self) -> list[_Entry]:
        """The peer is gone for good: stop, and return the entries nobody will answer.

        Their waiters are not fired; the caller re-routes or fails them.
        """
        entries: list[_Entry] = []
        for call in sorted(self.inflight):
            entries.extend(self.inflight[call])
        self.inflight.clear()
        entries.extend(self.queue)
        self.queue.clear()
        kept = []
        for entry in entries:
            if entry[KIND] != REPLICATE:
                self.pending -= 1
            if entry[DROPPABLE]:
                continue
            kept.append(entry)
        if self.congested:
            self._endCongestion()
        ready, self._ready = self._ready, []
        for d in ready:
            d.cancel()
        return kept

    # Congestion (the protocols' view of a full session)

    def _endCongestion(self) -> None:
        self.congested = False
        waiters, self.waiters = self.waiters, set()
        for publisher in waiters:
            publisher.congestionCleared(self)

    def addWaiter(self, publisher: Any) -> None:
        self.waiters.add(publisher)

    def removeWaiter(self, publisher: Any) -> None:
        self.waiters.discard(publisher)


__all__ = ["PeerAvatar", "PeerLink", "PeerRealm", "makePeerFactory"]
