"""Per-node AMQP state shared by every AMQP listener: virtual hosts, memory alarm, recovery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from robustmq.protocols.amqp import _describe
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

    # -- operators' views and actions (admin API, ctl, metrics) ---------

    def _vhostsShown(self) -> None:
        # The configured vhosts exist from the start (as in RabbitMQ), not on first use.
        for name in self.settings.vhosts:
            self.vhost(name)

    def describeVhosts(self) -> list[dict[str, Any]]:
        """Virtual hosts with queue, exchange, message and connection counts."""
        self._vhostsShown()
        return _describe.describeVhosts(self)

    def describeQueues(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Queues: messages ready and unacknowledged, consumers, arguments, rates, drops."""
        return _describe.describeQueues(self, self.reactor.seconds(), vhost)

    def describeQueue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """One queue as L{describeQueues} shows it, or None."""
        for q in _describe.describeQueues(self, self.reactor.seconds(), vhost):
            if q["name"] == name:
                return q
        return None

    def describeExchanges(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Exchanges with type, flags, arguments and their count of bindings."""
        self._vhostsShown()
        return _describe.describeExchanges(self, vhost)

    def describeBindings(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Bindings, the default exchange's implicit ones included."""
        return _describe.describeBindings(self, vhost)

    def describeConnections(self) -> list[dict[str, Any]]:
        """Open AMQP connections."""
        return _describe.describeConnections(self)

    def describeChannels(self) -> list[dict[str, Any]]:
        """Open channels of every AMQP connection."""
        return _describe.describeChannels(self)

    def metricRows(self, limit: int) -> dict[str, Any]:
        """Per-queue depth and counters for /metrics (at most C{limit} queues)."""
        return _describe.metricRows(self, limit)

    def purgeQueue(self, vhost: str, name: str) -> int | None:
        """Drop a queue's ready messages (Queue.Purge); how many, or None if no such queue."""
        v = self.vhosts.get(vhost)
        q = v.queues.get(name) if v is not None else None
        if q is None:
            return None
        with self.batch():
            n = q.purge()
        self.log.info(
            "AMQP queue {queue} in vhost {vhost} purged through the admin API: {n} messages",
            queue=name,
            vhost=vhost,
            n=n,
        )
        return n

    def deleteQueue(
        self, vhost: str, name: str, ifEmpty: bool = False, ifUnused: bool = False
    ) -> int | str | None:
        """Delete a queue (Queue.Delete): its message count, None if unknown, or why not."""
        v = self.vhosts.get(vhost)
        q = v.queues.get(name) if v is not None else None
        if v is None or q is None:
            return None
        if ifUnused and q.consumers:
            return f"queue '{name}' in vhost '{vhost}' in use"
        if ifEmpty and q.count:
            return f"queue '{name}' in vhost '{vhost}' is not empty"
        owner = q.exclusiveOwner
        with self.batch():
            n = v.deleteQueue(q)
        if owner is not None:
            owner.exclusiveQueues.discard(q)
        self.log.info(
            "AMQP queue {queue} in vhost {vhost} deleted through the admin API",
            queue=name,
            vhost=vhost,
        )
        return n

    def deleteBinding(
        self, vhost: str, source: str, destination: str, destinationType: str, routingKey: str
    ) -> int | None:
        """Remove the bindings from exchange C{source} to C{destination} (a queue or an
        exchange) with C{routingKey}, whatever their arguments (Queue.Unbind /
        Exchange.Unbind); how many, or None if the vhost, source or destination is unknown."""
        v = self.vhosts.get(vhost)
        if v is None or source == "":
            return None
        ex = v.exchanges.get(source)
        dest: Any = (v.queues if destinationType == "queue" else v.exchanges).get(destination)
        if ex is None or dest is None:
            return None
        gone = [args for (d, key, args) in list(ex.bindings) if d is dest and key == routingKey]
        with self.batch():
            for frozen in gone:
                args = dict(ex.bindings.get((dest, routingKey, frozen)) or {})
                ex.unbind(dest, routingKey, args)
                if destinationType == "queue":
                    dest.bindings.discard((ex, routingKey, frozen))
                else:
                    dest.incoming.discard((ex, routingKey, frozen))
                self.persistence.bindingRemoved(v, ex, dest, routingKey, args)
            if gone:
                v.maybeAutoDeleteExchange(ex)
        self.log.info(
            "AMQP binding {source} -> {destination} ({key}) in vhost {vhost} deleted through "
            "the admin API",
            source=source,
            destination=destination,
            key=routingKey,
            vhost=vhost,
        )
        return len(gone)

    def deleteExchange(self, vhost: str, name: str, ifUnused: bool = False) -> str | None:
        """Delete an exchange (Exchange.Delete): None when deleted, else why not."""
        v = self.vhosts.get(vhost)
        ex = v.exchanges.get(name) if v is not None else None
        if v is None or ex is None:
            return "unknown"
        if name == "" or name.startswith("amq."):
            return f"operation not permitted on the exchange '{name}'"
        if ifUnused and (ex.bindings or ex.incoming):
            return f"exchange '{name}' in vhost '{vhost}' in use"
        v.deleteExchange(ex)
        self.log.info(
            "AMQP exchange {exchange} in vhost {vhost} deleted through the admin API",
            exchange=name,
            vhost=vhost,
        )
        return None
