"""The broker: the protocol-neutral hub that protocols publish into."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from robustmq import __version__
from robustmq.config import Settings
from robustmq.core.auth import AllowAll, AuthChain
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.persistence import SessionPersistence
from robustmq.core.retained import RetainedMessages
from robustmq.core.router import Router
from robustmq.core.shared import SharedGroup
from robustmq.core.stats import Stats
from robustmq.core.subscription import SubscriptionOptions
from robustmq.core.timers import TimerHeap
from robustmq.interfaces import IClusterRouting, IShardStore


class Broker(Service):
    """The protocol-neutral core: routes messages to delivery targets, keeps retained
    messages, counters and the shard store.

    Protocols call L{publish}, L{subscribeTarget} and L{unsubscribeTarget};
    what each call caused (deliveries, durable writes to wait for, congested
    targets) comes back in an L{Outcome}.  What a protocol means beyond that
    (MQTT sessions and wills, AMQP queues, Kafka partitions) lives in its node
    service (L{nodeService}).  Connections register with
    L{connectionOpened}/L{connectionClosed} so that shutdown can close them
    and operators can list them.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        store: IShardStore | None = None,
        auth: AuthChain | None = None,
        authMechanisms: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.store = store
        self.auth = auth or AuthChain([AllowAll()])
        #: enhanced-authentication method name → factory of per-connection exchanges
        self.authMechanisms = authMechanisms or {}
        self.version = __version__
        self.stats = Stats()
        self.router = Router(settings.mqtt.route_cache_size)
        self.retained = RetainedMessages(
            settings.mqtt.max_retained_messages, settings.mqtt.max_retained_payload
        )
        self.persistence: SessionPersistence | None = None
        if store is not None and getattr(store, "durable", True):
            self.persistence = SessionPersistence(store)
        self._waiting: list[defer.Deferred[None]] = []
        self.ready = False
        #: awaited after storage is open and recovered, before the broker is ready
        #: (e.g. security records kept in the shard store, see robustmq.service)
        self.recoveryHooks: list[Callable[[], Awaitable[None]]] = []
        #: connections with bytes queued this turn, and whether a read is in progress
        self.dirty: list[Any] = []
        self.reading = 0
        self._flushScheduled = False
        self.connections: set[Any] = set()
        #: accepted sockets on every listener, counted against [limits] max_connections
        self.openSockets = 0
        #: connections a protocol closed that still read what their peer sends for a
        #: bounded time (robustmq.protocols._linger), at most [limits] max_lingering
        self.lingering: set[Any] = set()
        #: the node's part in a broker cluster (IClusterRouting), or None
        self.cluster: IClusterRouting | None = None
        #: long-lived per-connection timers (keep-alive) on one reactor timer
        self.timers = TimerHeap(reactor)
        #: each served protocol's node-wide service, by protocol name (see L{nodeService})
        self.nodeServices: dict[str, Any] = {}

    def nodeService(self, name: str) -> Any:
        """The node-wide service of protocol C{name} (IProtocolPlugin.buildNodeService).

        @raise KeyError: the node does not serve that protocol.
        """
        try:
            return self.nodeServices[name]
        except KeyError:
            raise KeyError(f"this node runs no {name!r} protocol service") from None

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        """Schedule C{f} on the broker's reactor (used by sessions)."""
        return self.reactor.callLater(delay, f, *args)  # type: ignore[attr-defined]

    def markDirty(self, connection: Any) -> None:
        """C{connection} queued bytes: flush them after the current read, or next turn.

        Writing each connection's bytes once per network read (instead of once
        per packet) is where most of the per-message transport cost goes.
        """
        self.dirty.append(connection)
        if not self.reading and not self._flushScheduled:
            self._flushScheduled = True
            self.reactor.callLater(0, self.flushWrites)  # type: ignore[attr-defined]

    def flushWrites(self) -> None:
        """Hand every connection's queued bytes to its transport."""
        self._flushScheduled = False
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for connection in dirty:
                connection.flushWrites()

    def now(self) -> float:
        """The reactor's clock."""
        return self.reactor.seconds()

    # Publishing

    def publish(self, message: Message, outcome: Outcome | None = None) -> Outcome:
        """Retain (if flagged) and route C{message}.

        @param outcome: where to record the effects (a new one if None).
        @return: the outcome: C{delivered} counts the subscribers reached,
            C{writes} the durable writes an acknowledgement must wait for,
            C{congested} the targets whose full queues a publisher that can
            pause should wait for (see L{Outcome}).
        """
        if outcome is None:
            outcome = Outcome()
        self.stats.mqttReceived[message.qos] += 1
        if message.retain:
            if self.retained.update(message) and self.persistence is not None:
                outcome.wait(self.persistence.saveRetained(message))
        outcome.delivered += self.route(message, outcome)
        return outcome

    def route(self, message: Message, outcome: Outcome) -> int:
        """Deliver C{message} to every matching subscriber at min(publish QoS, granted QoS).

        RETAIN travels as published; each connection clears it unless the
        subscription keeps it (MQTT-3.3.1-9, Retain As Published).  In a
        cluster the cluster node routes (locally and to the other brokers).
        Returns how many targets the message reached.
        """
        if self.cluster is not None:
            return self.cluster.route(message, outcome)  # type: ignore[no-any-return]
        return self.routeLocally(message, outcome)

    def routeLocally(
        self,
        message: Message,
        outcome: Outcome,
        sharedGroups: bool = True,
        skip: Container[Any] | None = None,
    ) -> int:
        """Deliver C{message} to this node's subscribers (shared groups only if asked),
        except those in C{skip}; returns how many it reached."""
        matches = self.router.match(message.topic)
        mqos = message.qos
        origin = message.origin
        for subscriber, options in matches:
            if not sharedGroups and subscriber.__class__ is SharedGroup:
                continue
            if skip is not None and subscriber in skip:
                continue
            if options.noLocal and origin is not None and subscriber.clientId == origin:
                # MQTT-3.8.3-3: not to the publishing client's own No Local subscriptions.
                local = options.local
                if local is None:
                    continue
                options = local
            granted = options.qos
            subscriber.deliver(message, mqos if mqos < granted else granted, options, outcome)
        return len(matches)

    def publishInternal(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish a broker-originated message (e.g. $SYS) at QoS 0, not counted as received."""
        message = Message(topic, payload, 0, retain, self.reactor.seconds())
        if retain:
            self.retained.update(message)
        # No connection to pause (or acknowledgement to hold) for a broker-originated message.
        outcome = Outcome()
        self.route(message, outcome)
        outcome.background()

    # Subscriptions of delivery targets

    def subscribeTarget(
        self, topicFilter: str, target: Any, options: SubscriptionOptions, outcome: Outcome
    ) -> bool:
        """Route messages matching C{topicFilter} to C{target} (an L{IDeliveryTarget}).

        For what is not an MQTT session: an AMQP queue bound to the MQTT topic
        exchange, a Kafka topic mapped to MQTT topics.  The filter is in the
        MQTT topic space and may hold an inner C{#} (an AMQP binding key such
        as C{a.#.c}).  In a cluster the route is announced like a session's,
        so messages published on other brokers reach the target too.

        @return: True if the target is new under this filter.
        """
        isNew = self.router.subscribe(topicFilter, target, options)
        if isNew and self.cluster is not None:
            self.cluster.routeAdded(topicFilter, outcome)
        return isNew

    def unsubscribeTarget(self, topicFilter: str, target: Any) -> bool:
        """Stop routing C{topicFilter} to C{target}; True if it was routed."""
        removed = self.router.unsubscribe(topicFilter, target)
        if removed and self.cluster is not None:
            self.cluster.routeRemoved(topicFilter)
        return removed

    # Connections

    def connectionOpened(self, connection: Any) -> None:
        """A client completed its handshake."""
        self.connections.add(connection)
        self.stats.clientConnected()
        if self.cluster is not None:
            self.cluster.connectionOpened(connection)

    def connectionClosed(self, connection: Any) -> None:
        """A connection counted by L{connectionOpened} ended."""
        if connection in self.connections:
            self.connections.discard(connection)
            self.stats.clientDisconnected()
            if self.cluster is not None:
                self.cluster.connectionClosed(connection)

    # Service

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once storage is open and durable state is recovered."""
        if self.ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._recover())
        d.addErrback(self._recoveryFailed)

    async def _recover(self) -> None:
        store = self.store
        if store is not None:
            await defer.maybeDeferred(store.open)
        persistence = self.persistence
        if persistence is not None:
            await persistence.open()
            now = self.now()
            retained = 0
            for message in await persistence.loadRetained():
                if message.expiresAt is None or message.expiresAt > now:
                    self.retained.update(message)
                    retained += 1
            self.log.info("recovered {retained} retained messages from storage", retained=retained)
        for hook in self.recoveryHooks:
            await hook()
        self.ready = True
        self.log.info("broker {version} started", version=self.version)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _recoveryFailed(self, failure: Any) -> None:
        self.log.failure("could not open storage or recover state; stopping", failure)
        from twisted.internet import reactor

        reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        for connection in list(self.connections):
            connection.shutdown()
        if self.store is not None:
            await defer.maybeDeferred(self.store.close)

    def stopService(self) -> defer.Deferred[None]:
        """Close every client connection, then flush and close storage."""
        super().stopService()
        self.log.info("broker stopping: closing {n} connections", n=len(self.connections))
        return defer.ensureDeferred(self._stop())
