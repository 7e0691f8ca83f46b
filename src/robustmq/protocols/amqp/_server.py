"""Per-node AMQP state shared by every AMQP listener: virtual hosts, memory alarm, recovery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from robustmq.protocols.amqp._model import VirtualHost
from robustmq.protocols.amqp._store import Persistence
from robustmq.protocols.amqp._topicspace import TopicSpace

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

__all__ = ["AMQPServer"]


class AMQPServer(Service):
    """Virtual hosts, the byte count of queued messages and the memory alarm.

    The node's AMQP service (L{IProtocolPlugin.buildNodeService}): every
    AMQP listener (TCP and TLS) shares it; it recovers durable queues when
    started, once the broker has opened its store.

    @ivar blocked: True while queued message bytes exceed
        C{[amqp] memory_high_watermark}; publishing connections are then
        paused (and told with Connection.Blocked) until the count falls
        below C{memory_low_watermark}.
    """

    log = Logger()
    name = "amqp"  # type: ignore[assignment]

    def __init__(self, broker: Broker, reactor: Any) -> None:
        self.broker = broker
        self.reactor = reactor
        self.settings = broker.settings.amqp
        #: the MQTT topic exchange of [amqp] mqtt_vhost (docs/topic-space.md)
        self.topicSpace = TopicSpace(self)
        self.vhosts: dict[str, VirtualHost] = {}
        self.connections: set[Any] = set()
        self.bytes = 0
        self.blocked = False
        self.persistence = Persistence(self, broker.store)
        self.ready: defer.Deferred[None] | None = None
        #: nesting depth of L{batch}; while above 0, connections hold their writes
        self.batching = 0
        #: connections holding writes of the current batch
        self.dirty: list[Any] = []
        #: durable queues' stores holding records of the current batch
        self.dirtyStores: list[Any] = []

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold every connection's writes until the outermost batch ends, then write each once.

        Every read is a batch (L{AMQPServerProtocol.dataReceived}); so are
        resumed deliveries and confirms fired by the shard store.
        """
        self.batching += 1
        try:
            yield
        finally:
            self.batching -= 1
            if not self.batching:
                self.flushWrites()

    def storeDirty(self, queueStore: Any) -> None:
        """C{queueStore} holds records: write them when the batch ends (next turn outside one)."""
        if self.batching:
            self.dirtyStores.append(queueStore)
        else:
            self.reactor.callLater(0, queueStore.flush)

    def flushWrites(self) -> None:
        """Write what each connection and queue store held during the batch that just ended."""
        stores = self.dirtyStores
        if stores:
            self.dirtyStores = []
            for qs in stores:
                qs.flush()
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for conn in dirty:
                conn.flushWrites()
            dirty = self.dirty

    def vhost(self, name: str) -> VirtualHost:
        """The virtual host C{name}, created on first use."""
        v = self.vhosts.get(name)
        if v is None:
            v = self.vhosts[name] = VirtualHost(self, name)
        return v

    def startService(self) -> None:
        super().startService()
        self.start()

    def start(self) -> defer.Deferred[None]:
        """Recover durable state from the shard store (once), after L{Broker.whenReady}.

        Connections finish their handshake (Connection.Tune) only once this
        has fired, so no client sees a durable queue before its messages.
        """
        if self.ready is None:
            self.ready = defer.ensureDeferred(self._start())
        return self.ready

    async def _start(self) -> None:
        # The store opens asynchronously (the segment store recovers on a
        # thread); the broker tells us when it is open and MQTT state is back.
        await self.broker.whenReady()
        try:
            await self.persistence.recover()
        except Exception:
            self.log.failure("AMQP: recovery of durable queues failed")

    def accountBytes(self, delta: int) -> None:
        """Queued message bytes changed by C{delta}: raise or clear the memory alarm."""
        self.bytes += delta
        if not self.blocked:
            if self.bytes > self.settings.memory_high_watermark:
                self.blocked = True
                self.log.warn(
                    "AMQP memory alarm: {bytes} queued bytes above {mark}; blocking publishers",
                    bytes=self.bytes,
                    mark=self.settings.memory_high_watermark,
                )
        elif self.bytes < self.settings.memory_low_watermark:
            self.blocked = False
            self.log.info("AMQP memory alarm cleared")
            self.reactor.callLater(0, self._unblockAll)

    def _unblockAll(self) -> None:
        if self.blocked:
            return
        for conn in list(self.connections):
            conn.unblock()
