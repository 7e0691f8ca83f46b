"""The AMQP broker model: virtual hosts, exchanges, bindings, queues, messages.

Protocol-free: channels (L{robustmq.protocols.amqp._channel}) call into it
and it calls back into consumers' channels to deliver.  Durable queues,
exchanges and bindings, and persistent messages in durable queues, are
written to the node's L{robustmq.interfaces.IShardStore} by
L{robustmq.protocols.amqp._store.QueueStore}.
"""

from __future__ import annotations

import heapq
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.core.droplog import DropLog
from robustmq.core.outcome import Outcome
from robustmq.core.topics import TopicTrie
from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._exceptions import preconditionFailed
from robustmq.protocols.amqp._types import encodeShortstr

if TYPE_CHECKING:
    from robustmq.config import AMQPSettings

__all__ = ["Consumer", "Exchange", "Message", "Queue", "VirtualHost"]

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
OVERFLOW_POLICIES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum")
#: RabbitMQ 4's default delivery-limit of quorum queues
QUORUM_DELIVERY_LIMIT = 20
REPLY_TO = "amq.rabbitmq.reply-to"

_now = time.time
_CONTENT_HEADER = struct.Struct(">HHQ")


class Message:
    """One published message as queues hold it.

    The body and the encoded properties are shared by every queue the
    message is routed to; per-queue state (redelivered, delivery count,
    storage key) lives in L{QueuedMessage}.
    """

    __slots__ = (
        "exchange",
        "routingKey",
        "properties",
        "propsRaw",
        "body",
        "persistent",
        "size",
        "tail",
        "header",
    )

    def __init__(
        self,
        exchange: str,
        routingKey: str,
        properties: _spec.BasicProperties,
        body: bytes,
        propsRaw: bytes | None = None,
    ) -> None:
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.propsRaw = properties.encode() if propsRaw is None else propsRaw
        self.body = body
        self.persistent = properties.delivery_mode == 2
        self.size = len(body)
        #: exchange and routing key as encoded shortstrs (the end of Basic.Deliver)
        self.tail = encodeShortstr(exchange) + encodeShortstr(routingKey)
        #: the content header frame's payload, sent as is to every consumer
        self.header = _CONTENT_HEADER.pack(60, 0, self.size) + self.propsRaw


class QueuedMessage:
    """A message's place in one queue."""

    __slots__ = ("message", "seq", "expiresAt", "redelivered", "deliveryCount", "stored")

    def __init__(self, message: Message, seq: int, expiresAt: float | None) -> None:
        self.message = message
        self.seq = seq
        self.expiresAt = expiresAt
        self.redelivered = False
        self.deliveryCount = 0
        #: True while the message is written in the queue's shard
        self.stored = False


class Consumer:
    """A Basic.Consume subscription of a channel on a queue."""

    __slots__ = (
        "channel",
        "tag",
        "queue",
        "noAck",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "tagEncoded",
    )

    def __init__(
        self,
        channel: Any,
        tag: str,
        queue: Queue | None,
        noAck: bool,
        exclusive: bool,
        prefetch: int,
    ) -> None:
        self.channel = channel
        self.tag = tag
        self.queue = queue
        self.noAck = noAck
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        #: the consumer tag as an encoded shortstr, for Basic.Deliver
        self.tagEncoded = encodeShortstr(tag)

    def hasCapacity(self) -> bool:
        """True when the consumer's and its channel's prefetch windows allow a delivery."""
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return self.channel.canDeliver()


def _argInt(args: dict[str, Any], name: str, low: int = 0) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise preconditionFailed(
            f"invalid arg '{name}' for queue: {value!r} is not an integer >= {low}"
        )
    return value


class Queue:
    """A queue: ordered messages, consumers served round-robin, and its arguments.

    Bounds: C{x-max-length}/C{x-max-length-bytes} from the declaration,
    capped by C{[amqp] max_queue_length}/C{max_queue_bytes}; at the bound
    the overflow policy applies (drop-head dead-letters the oldest,
    reject-publish refuses the new message).  A message that leaves this way,
    or expires, without being dead-lettered is counted as dropped (by
    reason, in the broker's L{robustmq.core.stats.Stats} and in L{dropped});
    overflow drops are logged, the first at once and then a summary at most
    every ten seconds (L{robustmq.core.droplog.DropLog}).

    @ivar published: messages accepted into the queue since it was declared
        (or recovered); L{delivered}: handed to a consumer or Basic.Get.
    """

    log = Logger()

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        durable: bool,
        exclusiveOwner: Any,
        autoDelete: bool,
        arguments: dict[str, Any],
    ) -> None:
        settings = vhost.settings
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusiveOwner = exclusiveOwner
        self.autoDelete = autoDelete
        self.arguments = dict(arguments or {})
        args = self.arguments
        self.queueType = args.get("x-queue-type", "classic")
        if self.queueType not in QUEUE_TYPES:
            raise preconditionFailed(
                f"invalid arg 'x-queue-type' for queue '{name}' in vhost '{vhost.name}': "
                f"{self.queueType!r} (supported: classic, quorum)"
            )
        if self.queueType == "quorum" and (not durable or exclusiveOwner is not None or autoDelete):
            raise preconditionFailed(
                f"invalid property 'durable/exclusive/auto-delete' for queue '{name}' in vhost "
                f"'{vhost.name}': quorum queues must be durable, non-exclusive, non-auto-delete"
            )
        ttl = _argInt(args, "x-message-ttl")
        self.ttl = ttl / 1000.0 if ttl is not None else None
        expires = _argInt(args, "x-expires", 1)
        self.expires = expires / 1000.0 if expires is not None else None
        maxLength = _argInt(args, "x-max-length")
        self.maxLength = min(
            maxLength if maxLength is not None else settings.max_queue_length,
            settings.max_queue_length,
        )
        maxBytes = _argInt(args, "x-max-length-bytes")
        self.maxBytes = min(
            maxBytes if maxBytes is not None else settings.max_queue_bytes,
            settings.max_queue_bytes,
        )
        self.overflow = args.get("x-overflow", "drop-head")
        if self.overflow not in OVERFLOW_POLICIES:
            raise preconditionFailed(
                f"invalid arg 'x-overflow' for queue '{name}' in vhost '{vhost.name}': "
                f"{self.overflow!r}"
            )
        self.dlx = args.get("x-dead-letter-exchange")
        self.dlrk = args.get("x-dead-letter-routing-key")
        priority = _argInt(args, "x-max-priority")
        if priority is not None and priority > 255:
            raise preconditionFailed(f"invalid arg 'x-max-priority' for queue '{name}': > 255")
        self.maxPriority = priority or 0
        limit = _argInt(args, "x-delivery-limit")
        if limit is None and self.queueType == "quorum":
            limit = QUORUM_DELIVERY_LIMIT
        self.deliveryLimit = limit
        self.levels: list[deque[QueuedMessage]] = [deque() for _ in range(self.maxPriority + 1)]
        self.count = 0
        self.bytes = 0
        self.consumers: list[Consumer] = []
        self.rr = 0
        self.nextSeq = 0
        self.deleted = False
        self.hadConsumers = False
        self._dispatching = False
        self._expiryCall: Any = None
        self._idleCall: Any = None
        self.bindings: set[tuple[Exchange, str, Any]] = set()
        self.store: Any = None  # QueueStore for durable queues
        self.published = 0
        self.delivered = 0
        #: messages lost (not dead-lettered), by reason
        self.dropped: dict[str, int] = {}
        self.drops: DropLog | None = None
        self.touch()

    # -- properties compared on redeclare -------------------------------

    def checkEquivalent(
        self, durable: bool, exclusive: bool, autoDelete: bool, args: dict[str, Any]
    ) -> None:
        """RabbitMQ's 406 'inequivalent arg' check of a redeclaration."""
        v = self.vhost.name
        mine: Any
        theirs: Any
        for prop, mine, theirs in (
            ("durable", self.durable, durable),
            ("auto_delete", self.autoDelete, autoDelete),
        ):
            if mine != theirs:
                raise preconditionFailed(
                    f"inequivalent arg '{prop}' for queue '{self.name}' in vhost '{v}': "
                    f"received '{str(theirs).lower()}' but current is '{str(mine).lower()}'"
                )
        for key in (
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-priority",
            "x-overflow",
            "x-queue-type",
        ):
            mine = self.arguments.get(key)
            theirs = (args or {}).get(key)
            if key == "x-queue-type" and theirs is None:
                continue
            if mine != theirs:
                raise preconditionFailed(
                    f"inequivalent arg '{key}' for queue '{self.name}' in vhost '{v}': "
                    f"received {_show(theirs)} but current is {_show(mine)}"
                )

    # -- messages -------------------------------------------------------

    def _level(self, message: Message) -> deque[QueuedMessage]:
        if not self.maxPriority:
            return self.levels[0]
        p = message.properties.priority or 0
        return self.levels[min(p, self.maxPriority)]

    def expiryFor(self, message: Message, now: float) -> float | None:
        """When C{message} expires in this queue (queue TTL or per-message expiration)."""
        expiresAt = None
        if self.ttl is not None:
            expiresAt = now + self.ttl
        exp = message.properties.expiration
        if exp is not None:
            try:
                ms = int(exp)
            except ValueError:
                ms = None
            if ms is not None and ms >= 0:
                t = now + ms / 1000.0
                expiresAt = t if expiresAt is None else min(expiresAt, t)
        return expiresAt

    def push(
        self,
        message: Message,
        fromStore: QueuedMessage | None = None,
        outcome: Outcome | None = None,
    ) -> QueuedMessage | None:
        """Enqueue C{message}; None when the overflow policy refused it.

        A persistent message in a durable queue is written to the queue's
        shard; the write goes to C{outcome} (a publisher confirm waits for
        it), or runs in the background without one.
        """
        if self.count + 1 > self.maxLength or self.bytes + message.size > self.maxBytes:
            if self.overflow != "drop-head":
                if not (
                    self.overflow == "reject-publish-dlx"
                    and self.vhost.deadLetter(self, message, "maxlen")
                ):
                    self._lost("overflow")
                return None
            while self.count and (
                self.count + 1 > self.maxLength or self.bytes + message.size > self.maxBytes
            ):
                old = self._popHead()
                if old is None:
                    break
                self._dropped(old, "maxlen")
            if self.maxLength == 0 or message.size > self.maxBytes:
                if not self.vhost.deadLetter(self, message, "maxlen"):
                    self._lost("overflow")
                return None
        if fromStore is not None:
            qm = fromStore
        else:
            qm = QueuedMessage(message, self.nextSeq, self.expiryFor(message, _now()))
            self.published += 1
        self.nextSeq = max(self.nextSeq, qm.seq) + 1
        self._level(message).append(qm)
        self.count += 1
        self.bytes += message.size
        self.vhost.server.accountBytes(message.size)
        if fromStore is None and self.store is not None and message.persistent:
            write = self.store.write(qm)
            if outcome is not None:
                outcome.wait(write)
        if qm.expiresAt is not None and self._expiryCall is None:
            self._scheduleExpiry()
        return qm

    def _popHead(self) -> QueuedMessage | None:
        for level in reversed(self.levels):
            if level:
                qm = level.popleft()
                self.count -= 1
                self.bytes -= qm.message.size
                self.vhost.server.accountBytes(-qm.message.size)
                return qm
        return None

    def popLive(self) -> QueuedMessage | None:
        """The next unexpired message, dead-lettering expired ones on the way."""
        now = _now()
        while True:
            qm = self._popHead()
            if qm is None:
                return None
            if qm.expiresAt is not None and qm.expiresAt <= now:
                self._dropped(qm, "expired")
                continue
            return qm

    def _dropped(self, qm: QueuedMessage, reason: str) -> None:
        """A message leaves the queue without being acknowledged by a consumer."""
        self.forget(qm)
        if not self.vhost.deadLetter(self, qm.message, reason, qm):
            self._lost("overflow" if reason == "maxlen" else reason)

    def _lost(self, reason: str) -> None:
        """A message is gone for good (no dead-letter exchange took it): count and log."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        server = self.vhost.server
        server.broker.stats.dropped("amqp", reason)
        if reason != "overflow":
            return
        if self.drops is None:
            reactor = server.reactor
            self.drops = DropLog(self._logDrops, reactor.callLater, reactor.seconds)
        self.drops.dropped()

    def _logDrops(self, first: bool, count: int, total: int) -> None:
        if first:
            self.log.warn(
                "AMQP queue {queue} in vhost {vhost} is full ({limit} messages, "
                "{limitBytes} bytes): dropping messages (x-overflow = {policy}); "
                "a summary follows while drops go on",
                queue=self.name,
                vhost=self.vhost.name,
                limit=self.maxLength,
                limitBytes=self.maxBytes,
                policy=self.overflow,
            )
        else:
            self.log.warn(
                "AMQP queue {queue} in vhost {vhost}: {count} more messages dropped "
                "(x-overflow = {policy}, {total} since the first)",
                queue=self.name,
                vhost=self.vhost.name,
                count=count,
                policy=self.overflow,
                total=total,
            )

    def forget(self, qm: QueuedMessage) -> None:
        """A message left the queue for good (acked, dropped, purged): unstore it."""
        if qm.stored and self.store is not None:
            self.store.remove(qm)

    def requeue(self, items: Iterable[QueuedMessage]) -> None:
        """Put unacknowledged messages back in their original order within their priority.

        Requeued messages were published before anything still waiting in
        their level, so they go to its head, ordered by publish sequence with
        one another, also across separate rejects (a reject of the first
        message after one of the third puts the first back in front).
        """
        byLevel: dict[int, list[QueuedMessage]] = {}
        for qm in items:
            if self.deleted:
                self.forget(qm)
                continue
            qm.redelivered = True
            qm.deliveryCount += 1
            if self.deliveryLimit is not None and qm.deliveryCount > self.deliveryLimit:
                self._dropped(qm, "delivery_limit")
                continue
            p = (
                min(qm.message.properties.priority or 0, self.maxPriority)
                if self.maxPriority
                else 0
            )
            byLevel.setdefault(p, []).append(qm)
            self.count += 1
            self.bytes += qm.message.size
            self.vhost.server.accountBytes(qm.message.size)
        for p, batch in byLevel.items():
            batch.sort(key=lambda q: q.seq)
            level = self.levels[p]
            # Back to their original places within the level (RabbitMQ keeps
            # requeued messages in publish order): the batch merges with the
            # messages at the head of the level that were published before
            # the last of it, e.g. ones requeued by an earlier reject.
            last = batch[-1].seq
            head: list[QueuedMessage] = []
            while level and level[0].seq < last:
                head.append(level.popleft())
            if head:
                batch = list(heapq.merge(head, batch, key=lambda q: q.seq))
            level.extendleft(reversed(batch))
        self.dispatch()

    def purge(self) -> int:
        """Drop every ready message; returns how many."""
        n = self.count
        for level in self.levels:
            for qm in level:
                self.vhost.server.accountBytes(-qm.message.size)
                self.forget(qm)
            level.clear()
        self.count = 0
        self.bytes = 0
        return n

    # -- expiry ---------------------------------------------------------

    def _scheduleExpiry(self) -> None:
        head = None
        for level in reversed(self.levels):
            if level:
                head = level[0]
                break
        if self._expiryCall is not None:
            if self._expiryCall.active():
                self._expiryCall.cancel()
            self._expiryCall = None
        if head is None or head.expiresAt is None or self.deleted:
            return
        delay = max(0.0, head.expiresAt - _now())
        self._expiryCall = self.vhost.server.reactor.callLater(delay + 0.001, self._expireHead)

    def _expireHead(self) -> None:
        self._expiryCall = None
        now = _now()
        changed = True
        while changed:
            changed = False
            for level in reversed(self.levels):
                if level and level[0].expiresAt is not None and level[0].expiresAt <= now:
                    qm = level.popleft()
                    self.count -= 1
                    self.bytes -= qm.message.size
                    self.vhost.server.accountBytes(-qm.message.size)
                    self._dropped(qm, "expired")
                    changed = True
        self._scheduleExpiry()

    def touch(self) -> None:
        """The queue was used: restart its C{x-expires} idle timer."""
        if self.expires is None or self.deleted:
            return
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = self.vhost.server.reactor.callLater(self.expires, self._idleExpired)

    def _idleExpired(self) -> None:
        self._idleCall = None
        if self.consumers:
            self.touch()
            return
        self.log.debug("queue {name} expired (x-expires)", name=self.name)
        self.vhost.deleteQueue(self)

    # -- consumers ------------------------------------------------------

    def addConsumer(self, consumer: Consumer) -> None:
        """Start delivering to C{consumer}."""
        self.consumers.append(consumer)
        self.hadConsumers = True
        self.touch()
        self.dispatch()

    def removeConsumer(self, consumer: Consumer) -> None:
        """Stop delivering to C{consumer}; auto-delete the queue after its last consumer."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        self.touch()
        if self.autoDelete and self.hadConsumers and not self.consumers and not self.deleted:
            self.vhost.deleteQueue(self)

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with capacity, round-robin."""
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            consumers = self.consumers
            while self.count and consumers:
                n = len(consumers)
                chosen = None
                for i in range(n):
                    c = consumers[(self.rr + i) % n]
                    if c.hasCapacity():
                        chosen = c
                        self.rr = (self.rr + i + 1) % n
                        break
                if chosen is None:
                    break
                qm = self.popLive()
                if qm is None:
                    break
                self.delivered += 1
                chosen.channel.deliver(chosen, self, qm)
        finally:
            self._dispatching = False
        if self.count and self._expiryCall is None:
            self._scheduleExpiry()

    def close(self) -> None:
        """The queue is deleted: cancel timers."""
        self.deleted = True
        if self.drops is not None:
            self.drops.cancel()
        for call in (self._expiryCall, self._idleCall):
            if call is not None and call.active():
                call.cancel()
        self._expiryCall = self._idleCall = None


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"'{value}'"
    return f"'{value}'"


def headersMatch(args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """RabbitMQ's headers-exchange rule (x-match all / any / all-with-x / any-with-x)."""
    mode = args.get("x-match", "all")
    headers = headers or {}
    withX = mode.endswith("-with-x")
    items = [
        (k, v) for k, v in args.items() if k != "x-match" and (withX or not k.startswith("x-"))
    ]
    if mode.startswith("any"):
        return any(k in headers and (v is None or headers[k] == v) for k, v in items)
    return all(k in headers and (v is None or headers[k] == v) for k, v in items)


class Exchange:
    """An exchange and its outgoing bindings."""

    def __init__(
        self,
        name: str,
        type: str,
        durable: bool,
        autoDelete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.name = name
        self.type = type
        self.durable = durable
        self.autoDelete = autoDelete
        self.internal = internal
        self.arguments = dict(arguments or {})
        #: (destination, routing key, frozen arguments) -> arguments
        self.bindings: dict[tuple[Any, str, Any], dict[str, Any]] = {}
        self.direct: dict[str, list[Any]] = {}
        #: a topic exchange's binding keys → destinations, in the core's topic trie
        self.topics: TopicTrie[Any, None] | None = (
            TopicTrie(".", "*", "#", dollarRule=False) if type == "topic" else None
        )
        self.incoming: set[tuple[Exchange, str, Any]] = set()
        self.deleted = False

    def bind(self, dest: Any, key: str, args: dict[str, Any]) -> bool:
        """Add a binding; False if it already existed."""
        ident = (dest, key, _freeze(args))
        if ident in self.bindings:
            return False
        self.bindings[ident] = dict(args or {})
        if self.type == "direct":
            self.direct.setdefault(key, []).append(dest)
        elif self.topics is not None:
            self.topics.add(key, dest, None)
        return True

    def unbind(self, dest: Any, key: str, args: dict[str, Any]) -> bool:
        """Remove a binding; False if there was none."""
        ident = (dest, key, _freeze(args))
        if self.bindings.pop(ident, None) is None:
            return False
        if self.type == "direct":
            lst = self.direct.get(key)
            if lst is not None and dest in lst:
                lst.remove(dest)
                if not lst:
                    del self.direct[key]
        elif self.topics is not None and not any(
            d is dest and k == key for (d, k, _a) in self.bindings
        ):
            # Topic exchanges ignore binding arguments: the key goes with the last binding.
            self.topics.remove(key, dest)
        return True

    def unbindAll(self, dest: Any) -> list[tuple[str, Any]]:
        """Remove every binding to C{dest}."""
        gone = [(k, a) for (d, k, a) in list(self.bindings) if d is dest]
        for k, a in gone:
            self.unbind(dest, k, dict(a))
        return gone

    def destinations(self, key: str, headers: dict[str, Any] | None) -> Iterable[Any]:
        """Where a message with routing key C{key} goes from this exchange."""
        t = self.type
        if t == "direct":
            return self.direct.get(key, ())
        if t == "fanout":
            return [d for (d, _k, _a) in self.bindings]
        if self.topics is not None:
            return {d for d, _ in self.topics.match(key)}
        return [d for (d, _k, _a), args in self.bindings.items() if headersMatch(args, headers)]


def _freeze(args: dict[str, Any] | None) -> Any:
    if not args:
        return ()
    return tuple(sorted((k, repr(v)) for k, v in args.items()))


class VirtualHost:
    """Exchanges and queues of one virtual host."""

    log = Logger()

    def __init__(self, server: Any, name: str) -> None:
        self.server = server
        self.name = name
        self.settings: AMQPSettings = server.settings
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        #: direct reply-to pseudo-queues: token -> Consumer
        self.replyTo: dict[str, Consumer] = {}
        for name_, type_ in (
            ("", "direct"),
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            ("amq.topic", "topic"),
            ("amq.headers", "headers"),
            ("amq.match", "headers"),
        ):
            self.exchanges[name_] = Exchange(name_, type_, True, False, False, {})
        space = getattr(server, "topicSpace", None)
        if space is not None and name == space.vhostName:
            # The MQTT topic space (docs/topic-space.md): amq.topic unless configured.
            self.exchanges[space.exchangeName] = space.exchangeFor(self)

    # -- routing --------------------------------------------------------

    def route(self, exchange: Exchange, key: str, headers: dict[str, Any] | None) -> set[Queue]:
        """Every queue a message reaches from C{exchange}, following exchange-to-exchange bindings."""
        if exchange.name == "":
            q = self.queues.get(key)
            return {q} if q is not None else set()
        queues: set[Queue] = set()
        seen = {exchange}
        todo = [exchange]
        while todo:
            ex = todo.pop()
            for dest in ex.destinations(key, headers):
                if isinstance(dest, Queue):
                    queues.add(dest)
                elif dest not in seen:
                    seen.add(dest)
                    todo.append(dest)
            if not queues and len(seen) == 1 and "alternate-exchange" in ex.arguments:
                alt = self.exchanges.get(ex.arguments["alternate-exchange"])
                if alt is not None and alt not in seen:
                    seen.add(alt)
                    todo.append(alt)
        return queues

    def deadLetter(
        self, queue: Queue, message: Message, reason: str, qm: QueuedMessage | None = None
    ) -> bool:
        """Republish C{message} to the queue's dead-letter exchange, with an x-death entry.

        Returns False when the message went nowhere (no dead-letter exchange,
        or it routes the message to no queue): the caller counts it as lost.
        """
        if queue.dlx is None:
            return False
        ex = self.exchanges.get(queue.dlx)
        if ex is None:
            return False
        props = message.properties
        headers = dict(props.headers or {})
        deaths = list(headers.get("x-death") or [])
        keys = [message.routingKey]
        for d in deaths:
            if isinstance(d, dict) and d.get("queue") == queue.name and d.get("reason") == reason:
                d["count"] = int(d.get("count", 1)) + 1
                d["time"] = _dt()
                deaths.remove(d)
                deaths.insert(0, d)
                break
        else:
            entry: dict[str, Any] = {
                "count": 1,
                "reason": reason,
                "queue": queue.name,
                "time": _dt(),
                "exchange": message.exchange,
                "routing-keys": keys,
            }
            if props.expiration is not None:
                entry["original-expiration"] = props.expiration
            deaths.insert(0, entry)
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", message.exchange)
        headers["x-last-death-reason"] = reason
        headers["x-last-death-queue"] = queue.name
        headers["x-last-death-exchange"] = message.exchange
        newProps = _spec.BasicProperties(
            **{f: getattr(props, f) for f in _spec.BasicProperties.FIELDS}
        )
        newProps.headers = headers
        newProps.expiration = None
        key = queue.dlrk if queue.dlrk is not None else message.routingKey
        dead = Message(ex.name, key, newProps, message.body)
        targets = self.route(ex, key, headers)
        reached = False
        for target in targets:
            if target is queue and reason == "expired" and queue.dlrk is None:
                continue
            reached = target.push(dead) is not None or reached
            target.dispatch()
        return reached

    # -- deletion -------------------------------------------------------

    def deleteQueue(self, queue: Queue) -> int:
        """Delete C{queue}: unbind it, cancel its consumers, drop its messages."""
        if queue.deleted:
            return 0
        n = queue.purge()
        queue.close()
        self.queues.pop(queue.name, None)
        for ex, key, args in list(queue.bindings):
            ex.unbind(queue, key, dict(args))
            self.maybeAutoDeleteExchange(ex)
        queue.bindings.clear()
        for consumer in list(queue.consumers):
            consumer.channel.consumerGone(consumer)
        queue.consumers.clear()
        if queue.store is not None:
            queue.store.dropQueue()
        return n

    def maybeAutoDeleteExchange(self, ex: Exchange) -> None:
        """Delete an auto-delete exchange that lost its last binding."""
        if ex.autoDelete and not ex.bindings and not ex.deleted:
            self.deleteExchange(ex)

    def deleteExchange(self, ex: Exchange) -> None:
        """Delete C{ex} with every binding from and to it."""
        ex.deleted = True
        self.exchanges.pop(ex.name, None)
        for dest, key, args in list(ex.bindings):
            ex.unbind(dest, key, dict(args))
            if isinstance(dest, Queue):
                dest.bindings.discard((ex, key, args))
            else:
                dest.incoming.discard((ex, key, args))
        for src, key, args in list(ex.incoming):
            src.unbind(ex, key, dict(args))
        ex.incoming.clear()
        if ex.durable:
            self.server.persistence.exchangeDeleted(self, ex)


def _dt() -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(_now()), UTC)


def packSeq(seq: int) -> bytes:
    """The storage key of a queued message."""
    return struct.pack(">Q", seq)


Callback = Callable[..., Any]
