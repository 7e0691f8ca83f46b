"""One AMQP channel: its methods (C{handle_<class>_<method>}), deliveries, acks, confirms and tx.

A channel is its own little endpoint over the connection, in the way
C{twisted.web._http2.H2Stream} is over an HTTP/2 connection: it writes
frames through L{AMQPChannel.sendMethod}/L{sendContent}, knows its own
flow state (L{canDeliver}) and is torn down on its own (Channel.Close)
without the connection noticing beyond its channel table.
"""

from __future__ import annotations

import secrets
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.core.outcome import Outcome
from robustmq.core.topics import InvalidTopic, validateTopicName
from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._exceptions import (
    AMQPError,
    ChannelError,
    ConnectionError,
    accessRefused,
    notFound,
    preconditionFailed,
    resourceLocked,
)
from robustmq.protocols.amqp._frames import encodeDeliver
from robustmq.protocols.amqp._model import (
    EXCHANGE_TYPES,
    REPLY_TO,
    Consumer,
    Exchange,
    Message,
    Queue,
    QueuedMessage,
    _freeze,
)
from robustmq.protocols.amqp._topicspace import (
    TopicSpaceExchange,
    mqttFilterOf,
    mqttTopicOf,
    toCoreMessage,
)

if TYPE_CHECKING:
    from robustmq.protocols.amqp._connection import AMQPServerProtocol

__all__ = ["AMQPChannel"]


def _token(n: int = 16) -> str:
    return secrets.token_urlsafe(n).replace("-", "_")


class AMQPChannel:
    """State and method handlers of one open channel."""

    log = Logger()

    def __init__(self, conn: AMQPServerProtocol, number: int) -> None:
        self.conn = conn
        self.number = number
        self.vhost = conn.vhost
        self.closing = False
        self.nextTag = 1
        #: delivery tag -> (queued message, queue, consumer or None for Basic.Get)
        self.unacked: dict[int, tuple[QueuedMessage, Queue | None, Consumer | None]] = {}
        self.unackedBytes = 0
        self.consumers: dict[str, Consumer] = {}
        self.prefetchCount = 0  # channel-wide (qos global=true)
        self.prefetchSize = 0
        self.consumerPrefetch = 0  # for new consumers (qos global=false)
        self.flowActive = True
        self.confirm = False
        self.publishSeq = 0
        #: publish sequence numbers waiting for store writes -> writes still outstanding
        self.confirmWaiting: dict[int, int] = {}
        self._ackThrough = 0
        self._flushCall: Any = None
        self.tx = False
        self.txOps: list[Any] = []
        self.lastQueue = ""
        self.replyToken: str | None = None
        # content assembly
        self._publish: _spec.BasicPublish | None = None
        self._props: _spec.BasicProperties | None = None
        self._propsRaw = b""
        self._bodySize = 0
        self._body: list[bytes] = []
        self._received = 0

    # -- output ---------------------------------------------------------

    def sendMethod(self, method: _spec.Method) -> None:
        """Write one method frame on this channel."""
        self.conn.sendMethod(self.number, method)

    def canDeliver(self) -> bool:
        """True when a consumer on this channel may be sent another message."""
        if not self.flowActive or self.closing or self.conn.paused:
            return False
        if self.prefetchCount and len(self.unacked) >= self.prefetchCount:
            return False
        if self.prefetchSize and self.unackedBytes >= self.prefetchSize:
            return False
        return True

    def deliver(self, consumer: Consumer, queue: Queue | None, qm: QueuedMessage) -> None:
        """Send C{qm} to C{consumer} as Basic.Deliver."""
        tag = self.nextTag
        self.nextTag = tag + 1
        m = qm.message
        if consumer.noAck:
            if queue is not None and qm.stored:
                queue.forget(qm)
        else:
            self.unacked[tag] = (qm, queue, consumer)
            self.unackedBytes += m.size
            consumer.unacked += 1
        conn = self.conn
        conn.server.broker.stats.amqpSent += 1
        conn.write(
            encodeDeliver(
                self.number,
                consumer.tagEncoded,
                tag,
                qm.redelivered,
                m.tail,
                m.header,
                m.body,
                conn.frameMax,
            )
        )

    # -- dispatch -------------------------------------------------------

    def dispatch(self, frame: Any) -> None:
        """Handle one frame addressed to this channel."""
        kind = frame.kind
        if kind == _spec.FRAME_BODY and self._props is not None and not self.closing:
            # The hot path: the body of a publish, usually in one frame.
            data = frame.data
            self._received += len(data)
            if self._received == self._bodySize and not self._body:
                self._contentDone(data)
                return
            self._body.append(data)
            if self._received > self._bodySize:
                raise ConnectionError(
                    _spec.FRAME_ERROR, "FRAME_ERROR - content body larger than its header said"
                )
            if self._received == self._bodySize:
                self._contentDone(b"".join(self._body))
            return
        if kind == _spec.FRAME_METHOD:
            method = frame.method
            if self._publish is not None:
                raise ConnectionError(
                    _spec.UNEXPECTED_FRAME,
                    f"UNEXPECTED_FRAME - expected content header for class 60, got {method.NAME}",
                    method.CLASS_ID,
                    method.METHOD_ID,
                )
            if self.closing:
                if isinstance(method, _spec.ChannelClose):
                    self.sendMethod(_spec.ChannelCloseOk())
                elif isinstance(method, _spec.ChannelCloseOk):
                    self.conn.channelClosed(self)
                return
            handler = _HANDLERS.get(type(method))
            if handler is None:
                raise ConnectionError(
                    _spec.COMMAND_INVALID
                    if not method.NAME.endswith("_ok")
                    else _spec.CHANNEL_ERROR,
                    f"COMMAND_INVALID - unexpected method {method.NAME} on a channel",
                    method.CLASS_ID,
                    method.METHOD_ID,
                )
            try:
                handler(self, method)
            except AMQPError as e:
                if not e.classId:
                    e.classId, e.methodId = method.CLASS_ID, method.METHOD_ID
                raise
            return
        if self.closing:
            return
        if kind == _spec.FRAME_HEADER:
            if self._publish is None or self._props is not None:
                raise ConnectionError(
                    _spec.UNEXPECTED_FRAME, "UNEXPECTED_FRAME - content header without a method"
                )
            limit = self.conn.settings.max_message_size
            if frame.bodySize > limit:
                _pub, self._publish = self._publish, None
                raise ChannelError(
                    _spec.PRECONDITION_FAILED,
                    f"PRECONDITION_FAILED - message size {frame.bodySize} is larger than "
                    f"configured max size {limit}",
                    60,
                    40,
                )
            self._props = frame.properties
            self._propsRaw = frame.raw
            self._bodySize = frame.bodySize
            self._received = 0
            self._body = []
            if frame.bodySize == 0:
                self._contentDone(b"")
            return
        if kind == _spec.FRAME_BODY:
            raise ConnectionError(
                _spec.UNEXPECTED_FRAME, "UNEXPECTED_FRAME - content body without a header"
            )

    def _contentDone(self, body: bytes) -> None:
        method, props = self._publish, self._props
        self._publish = self._props = None
        self._body = []
        assert method is not None and props is not None
        try:
            self.publish(method, props, body)
        except AMQPError as e:
            if not e.classId:
                e.classId, e.methodId = 60, 40
            raise

    # -- channel --------------------------------------------------------

    def handle_channel_open(self, method: _spec.ChannelOpen) -> None:
        raise ConnectionError(
            _spec.CHANNEL_ERROR, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10
        )

    def handle_channel_close(self, method: _spec.ChannelClose) -> None:
        self.sendMethod(_spec.ChannelCloseOk())
        self.conn.channelClosed(self)

    def handle_channel_flow(self, method: _spec.ChannelFlow) -> None:
        self.flowActive = method.active
        self.sendMethod(_spec.ChannelFlowOk(method.active))
        if method.active:
            self.kick()

    def handle_channel_flow_ok(self, method: _spec.ChannelFlowOk) -> None:
        pass

    def handle_access_request(self, method: _spec.AccessRequest) -> None:
        self.sendMethod(_spec.AccessRequestOk(1))

    # -- permissions (RabbitMQ's configure / write / read) ---------------

    def _permit(self, permission: str, kind: str, name: str) -> None:
        """Raise RabbitMQ's 403 unless the user has C{permission} on the named resource."""
        access = self.conn.access
        if access is not None and not access.allowed(permission, name):
            shown = name or "amq.default"
            raise accessRefused(
                f"{permission} access to {kind} '{shown}' in vhost '{self.vhost.name}' "
                f"refused for user '{self.conn.user}'"
            )

    # -- exchanges ------------------------------------------------------

    def _exchange(self, name: str) -> Exchange:
        ex = self.vhost.exchanges.get(name)
        if ex is None:
            raise notFound("exchange", name, self.vhost.name)
        return ex

    def handle_exchange_declare(self, m: _spec.ExchangeDeclare) -> None:
        v = self.vhost
        name = m.exchange
        if m.passive:
            self._exchange(name) if name else None
        else:
            if name:
                self._permit("configure", "exchange", name)
            if name == "" or name.startswith("amq."):
                raise accessRefused(
                    f"exchange name '{name}' contains reserved prefix 'amq.*'"
                    if name
                    else "operation not permitted on the default exchange"
                )
            _checkName("exchange", name)
            if m.type not in EXCHANGE_TYPES:
                # RabbitMQ 4 (rabbit_exchange:check_type): a channel error, 406;
                # RabbitMQ 3 closed the connection with 503 COMMAND_INVALID.
                raise preconditionFailed(f"unknown exchange type '{m.type}'")
            ex = v.exchanges.get(name)
            if ex is not None:
                for prop, mine, theirs in (
                    ("type", ex.type, m.type),
                    ("durable", ex.durable, m.durable),
                    ("auto_delete", ex.autoDelete, m.auto_delete),
                    ("internal", ex.internal, m.internal),
                ):
                    if mine != theirs:

                        def show(x):
                            return str(x).lower() if isinstance(x, bool) else x

                        raise preconditionFailed(
                            f"inequivalent arg '{prop}' for exchange '{name}' in vhost "
                            f"'{v.name}': received '{show(theirs)}' but current is '{show(mine)}'"
                        )
            else:
                if len(v.exchanges) >= self.conn.settings.max_exchanges:
                    raise preconditionFailed(
                        f"cannot declare exchange '{name}' in vhost '{v.name}': exchange limit "
                        f"({self.conn.settings.max_exchanges}) is reached"
                    )
                ex = Exchange(name, m.type, m.durable, m.auto_delete, m.internal, m.arguments or {})
                v.exchanges[name] = ex
                if ex.durable:
                    v.server.persistence.exchangeDeclared(v, ex)
        if not m.nowait:
            self.sendMethod(_spec.ExchangeDeclareOk())

    def handle_exchange_delete(self, m: _spec.ExchangeDelete) -> None:
        name = m.exchange
        if name == "" or name.startswith("amq."):
            raise accessRefused(f"operation not permitted on the exchange '{name}'")
        self._permit("configure", "exchange", name)
        ex = self.vhost.exchanges.get(name)
        if ex is not None:
            if m.if_unused and (ex.bindings or ex.incoming):
                raise preconditionFailed(f"exchange '{name}' in vhost '{self.vhost.name}' in use")
            self.vhost.deleteExchange(ex)
        if not m.nowait:
            self.sendMethod(_spec.ExchangeDeleteOk())

    def handle_exchange_bind(self, m: _spec.ExchangeBind) -> None:
        self._permit("write", "exchange", m.destination)
        self._permit("read", "exchange", m.source)
        dest = self._exchange(m.destination)
        src = self._exchange(m.source)
        if src.name == "" or dest.name == "":
            raise accessRefused("operation not permitted on the default exchange")
        self._checkTopicRead(src, m.routing_key)
        if src.bind(dest, m.routing_key, m.arguments or {}):
            dest.incoming.add((src, m.routing_key, _freeze(m.arguments)))
            self.vhost.server.persistence.bindingAdded(
                self.vhost, src, dest, m.routing_key, m.arguments
            )
        if not m.nowait:
            self.sendMethod(_spec.ExchangeBindOk())

    def handle_exchange_unbind(self, m: _spec.ExchangeUnbind) -> None:
        self._permit("write", "exchange", m.destination)
        self._permit("read", "exchange", m.source)
        dest = self.vhost.exchanges.get(m.destination)
        src = self.vhost.exchanges.get(m.source)
        if src is not None and dest is not None and src.unbind(dest, m.routing_key, m.arguments):
            dest.incoming.discard((src, m.routing_key, _freeze(m.arguments)))
            self.vhost.server.persistence.bindingRemoved(
                self.vhost, src, dest, m.routing_key, m.arguments
            )
            self.vhost.maybeAutoDeleteExchange(src)
        if not m.nowait:
            self.sendMethod(_spec.ExchangeUnbindOk())

    # -- queues ---------------------------------------------------------

    def _queueName(self, name: str) -> str:
        if name == "":
            if not self.lastQueue:
                raise ChannelError(_spec.NOT_FOUND, "NOT_FOUND - no previously declared queue")
            return self.lastQueue
        return name

    def _queue(self, name: str) -> Queue:
        name = self._queueName(name)
        q = self.vhost.queues.get(name)
        if q is None:
            raise notFound("queue", name, self.vhost.name)
        if q.exclusiveOwner is not None and q.exclusiveOwner is not self.conn:
            raise resourceLocked(name, self.vhost.name)
        return q

    def handle_queue_declare(self, m: _spec.QueueDeclare) -> None:
        v = self.vhost
        name = m.queue
        if m.passive:
            q = self._queue(name)
        else:
            if name.startswith("amq."):
                raise accessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
            _checkName("queue", name)
            if name == "":
                name = "amq.gen-" + _token(16)
            self._permit("configure", "queue", name)
            q = v.queues.get(name)
            args = m.arguments or {}
            if q is not None:
                if q.exclusiveOwner is not None and q.exclusiveOwner is not self.conn:
                    raise resourceLocked(name, v.name)
                if (q.exclusiveOwner is not None) != bool(m.exclusive):
                    raise resourceLocked(name, v.name)
                q.checkEquivalent(m.durable, m.exclusive, m.auto_delete, args)
                q.touch()
            else:
                if len(v.queues) >= self.conn.settings.max_queues:
                    raise preconditionFailed(
                        f"cannot declare queue '{name}' in vhost '{v.name}': queue limit "
                        f"({self.conn.settings.max_queues}) is reached"
                    )
                q = Queue(
                    v, name, m.durable, self.conn if m.exclusive else None, m.auto_delete, args
                )
                v.queues[name] = q
                if m.exclusive:
                    self.conn.exclusiveQueues.add(q)
                if q.durable and not m.exclusive:
                    v.server.persistence.queueDeclared(q)
        self.lastQueue = q.name
        if not m.nowait:
            self.sendMethod(_spec.QueueDeclareOk(q.name, q.count, len(q.consumers)))

    def _checkTopicRead(self, ex: Exchange, key: str) -> None:
        """A binding on the MQTT topic exchange subscribes to an MQTT filter: the MQTT ACL
        must let this user read every topic under it (403 otherwise; messages are not
        filtered one by one once bound)."""
        if isinstance(ex, TopicSpaceExchange) and not self.conn.topicAccess().canReadAll(
            mqttFilterOf(key)
        ):
            raise accessRefused(
                f"read access to topic '{key}' in exchange '{ex.name}' in vhost "
                f"'{self.vhost.name}' refused for user '{self.conn.user}'"
            )

    def handle_queue_bind(self, m: _spec.QueueBind) -> None:
        self._permit("write", "queue", self._queueName(m.queue))
        self._permit("read", "exchange", m.exchange)
        q = self._queue(m.queue)
        ex = self._exchange(m.exchange)
        if ex.name == "":
            raise accessRefused("operation not permitted on the default exchange")
        key = m.routing_key
        if m.routing_key == "" and m.queue == "":
            key = q.name
        self._checkTopicRead(ex, key)
        if ex.bind(q, key, m.arguments or {}):
            q.bindings.add((ex, key, _freeze(m.arguments)))
            self.vhost.server.persistence.bindingAdded(self.vhost, ex, q, key, m.arguments)
        if not m.nowait:
            self.sendMethod(_spec.QueueBindOk())

    def handle_queue_unbind(self, m: _spec.QueueUnbind) -> None:
        self._permit("write", "queue", self._queueName(m.queue))
        self._permit("read", "exchange", m.exchange)
        q = self._queue(m.queue)
        ex = self.vhost.exchanges.get(m.exchange)
        if ex is not None and ex.unbind(q, m.routing_key, m.arguments):
            q.bindings.discard((ex, m.routing_key, _freeze(m.arguments)))
            self.vhost.server.persistence.bindingRemoved(
                self.vhost, ex, q, m.routing_key, m.arguments
            )
            self.vhost.maybeAutoDeleteExchange(ex)
        self.sendMethod(_spec.QueueUnbindOk())

    def handle_queue_purge(self, m: _spec.QueuePurge) -> None:
        self._permit("read", "queue", self._queueName(m.queue))
        q = self._queue(m.queue)
        n = q.purge()
        if not m.nowait:
            self.sendMethod(_spec.QueuePurgeOk(n))

    def handle_queue_delete(self, m: _spec.QueueDelete) -> None:
        name = self._queueName(m.queue)
        self._permit("configure", "queue", name)
        q = self.vhost.queues.get(name)
        n = 0
        if q is not None:
            if q.exclusiveOwner is not None and q.exclusiveOwner is not self.conn:
                raise resourceLocked(name, self.vhost.name)
            if m.if_unused and q.consumers:
                raise preconditionFailed(f"queue '{name}' in vhost '{self.vhost.name}' in use")
            if m.if_empty and q.count:
                raise preconditionFailed(
                    f"queue '{name}' in vhost '{self.vhost.name}' is not empty"
                )
            n = self.vhost.deleteQueue(q)
            self.conn.exclusiveQueues.discard(q)
        if not m.nowait:
            self.sendMethod(_spec.QueueDeleteOk(n))

    # -- basic: consumers ----------------------------------------------

    def handle_basic_qos(self, m: _spec.BasicQos) -> None:
        if m.global_:
            self.prefetchCount = m.prefetch_count
            self.prefetchSize = m.prefetch_size
        else:
            self.consumerPrefetch = m.prefetch_count
            self.prefetchSize = m.prefetch_size
        self.sendMethod(_spec.BasicQosOk())
        self.kick()

    def handle_basic_consume(self, m: _spec.BasicConsume) -> None:
        tag = m.consumer_tag or "amq.ctag-" + _token(16)
        if tag in self.consumers:
            raise ConnectionError(
                _spec.NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"
            )
        if m.queue == REPLY_TO:
            if not m.no_ack:
                raise preconditionFailed("reply consumer cannot acknowledge")
            consumer = Consumer(self, tag, None, True, False, 0)
            self.replyToken = _token(24)
            self.vhost.replyTo[self.replyToken] = consumer
            self.consumers[tag] = consumer
            if not m.nowait:
                self.sendMethod(_spec.BasicConsumeOk(tag))
            return
        self._permit("read", "queue", self._queueName(m.queue))
        q = self._queue(m.queue)
        if q.consumers and (m.exclusive or any(c.exclusive for c in q.consumers)):
            raise accessRefused(f"queue '{q.name}' in vhost '{self.vhost.name}' in exclusive use")
        prefetch = self.consumerPrefetch
        args = m.arguments or {}
        if isinstance(args.get("x-priority"), int):
            pass  # accepted; consumers are served round-robin regardless of priority
        consumer = Consumer(self, tag, q, m.no_ack, m.exclusive, prefetch)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.sendMethod(_spec.BasicConsumeOk(tag))
        q.addConsumer(consumer)

    def handle_basic_cancel(self, m: _spec.BasicCancel) -> None:
        consumer = self.consumers.pop(m.consumer_tag, None)
        if consumer is not None:
            self._dropConsumer(consumer)
        if not m.nowait:
            self.sendMethod(_spec.BasicCancelOk(m.consumer_tag))

    def _dropConsumer(self, consumer: Consumer) -> None:
        if consumer.queue is not None:
            consumer.queue.removeConsumer(consumer)
        elif self.replyToken is not None:
            self.vhost.replyTo.pop(self.replyToken, None)

    def consumerGone(self, consumer: Consumer) -> None:
        """The queue of C{consumer} was deleted: tell the client (consumer_cancel_notify)."""
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if self.conn.clientCapabilities.get("consumer_cancel_notify") and not self.closing:
            self.sendMethod(_spec.BasicCancel(consumer.tag, True))

    def handle_basic_cancel_ok(self, m: _spec.BasicCancelOk) -> None:
        pass

    def kick(self) -> None:
        """Capacity may have freed up: let this channel's queues deliver."""
        for consumer in list(self.consumers.values()):
            if consumer.queue is not None:
                consumer.queue.dispatch()

    # -- basic: publishing ---------------------------------------------

    def handle_basic_publish(self, m: _spec.BasicPublish) -> None:
        self._publish = m

    def publish(self, m: _spec.BasicPublish, props: _spec.BasicProperties, body: bytes) -> None:
        """Route a complete message (after its content header and body)."""
        v = self.vhost
        self._permit("write", "exchange", m.exchange)
        ex = v.exchanges.get(m.exchange)
        if ex is None:
            raise notFound("exchange", m.exchange, v.name)
        if ex.internal:
            raise accessRefused(
                f"cannot publish to internal exchange '{m.exchange}' in vhost '{v.name}'"
            )
        if props.reply_to == REPLY_TO:
            if self.replyToken is None:
                raise preconditionFailed("fast reply consumer does not exist")
            props.reply_to = f"{REPLY_TO}.{self.replyToken}"
            message = Message(m.exchange, m.routing_key, props, body)
        else:
            message = Message(m.exchange, m.routing_key, props, body, self._propsRaw or None)
        self.conn.server.broker.stats.amqpReceived += 1
        route = self._route
        if isinstance(ex, TopicSpaceExchange):
            topic = self._topicSpaceTopic(ex, m.routing_key)
            if topic is not None:
                route = partial(self._publishToTopicSpace, topic)  # type: ignore[assignment]
        if self.tx:
            self.txOps.append(lambda: route(m, ex, message, None))
            return
        seq = None
        if self.confirm:
            self.publishSeq += 1
            seq = self.publishSeq
        route(m, ex, message, seq)
        self.conn.checkMemory()

    def _topicSpaceTopic(self, ex: Exchange, routingKey: str) -> str | None:
        """The MQTT topic a publish to the MQTT topic exchange goes to; None: not a topic
        name (routed to the exchange's AMQP bindings only).

        @raise ChannelError: 403 when the MQTT ACL refuses this user the topic.
        """
        topic = mqttTopicOf(routingKey)
        try:
            validateTopicName(topic, self.conn.server.broker.settings.mqtt.max_topic_levels)
        except InvalidTopic:
            return None
        if not self.conn.topicAccess().canPublish(topic):
            raise accessRefused(
                f"write access to topic '{routingKey}' in exchange '{ex.name}' in vhost "
                f"'{self.vhost.name}' refused for user '{self.conn.user}'"
            )
        return topic

    def _publishToTopicSpace(
        self, topic: str, m: _spec.BasicPublish, ex: Exchange, message: Message, seq: int | None
    ) -> None:
        """Publish through the broker's router: MQTT subscribers, mapped Kafka topics and
        this exchange's AMQP bindings all get it (docs/topic-space.md)."""
        server = self.vhost.server
        broker = server.broker
        outcome = broker.publish(toCoreMessage(message, topic, server.reactor.seconds()))
        if not outcome.delivered:
            if m.mandatory:
                self._return(m, message)
            else:
                broker.stats.dropped("amqp", "unroutable")
        if outcome.congested:
            self.conn.gate.waitFor(outcome.congested)
        if seq is not None:
            self._confirmAfter(seq, outcome, not outcome.refused)
        elif outcome.writes:
            outcome.background()

    def _route(
        self, m: _spec.BasicPublish, ex: Exchange, message: Message, seq: int | None
    ) -> None:
        v = self.vhost
        key = m.routing_key
        if ex.name == "" and key.startswith(REPLY_TO + "."):
            consumer = v.replyTo.get(key[len(REPLY_TO) + 1 :])
            if consumer is not None and not consumer.channel.closing:
                consumer.channel.deliver(consumer, None, QueuedMessage(message, 0, None))
            elif m.mandatory:
                self._return(m, message)
            if seq is not None:
                self._confirmed(seq, True)
            return
        queues = v.route(ex, key, message.properties.headers)
        if not queues:
            if m.mandatory:
                self._return(m, message)
            else:
                v.server.broker.stats.dropped("amqp", "unroutable")
            if seq is not None:
                self._confirmed(seq, True)
            return
        outcome = Outcome()
        accepted = True
        for q in queues:
            if q.push(message, outcome=outcome) is None:
                accepted = False
        for q in queues:
            q.dispatch()
        if seq is None:
            return
        self._confirmAfter(seq, outcome, accepted)

    def _confirmAfter(self, seq: int, outcome: Outcome, accepted: bool) -> None:
        """Confirm publish C{seq} once C{outcome}'s durable writes are done (nack: refused)."""
        writes = outcome.writes
        if writes and accepted:
            # Confirm once every queue's batch holding the message is durable.
            self.confirmWaiting[seq] = len(writes)
            for d in writes:
                d.addBoth(self._stored, seq)
        else:
            self._confirmed(seq, accepted)

    def _return(self, m: _spec.BasicPublish, message: Message) -> None:
        self.conn.sendContent(
            self.number,
            _spec.BasicReturn(_spec.NO_ROUTE, "NO_ROUTE", m.exchange, m.routing_key),
            message.propsRaw,
            message.body,
        )

    def _stored(self, result: Any, seq: int) -> Any:
        """A store batch holding message C{seq} was written (or failed); passes C{result} on."""
        left = self.confirmWaiting.get(seq)
        if left is None:
            return result  # already nacked after another queue's failure
        ok = not isinstance(result, Failure)
        if ok and left > 1:
            self.confirmWaiting[seq] = left - 1
            return result
        del self.confirmWaiting[seq]
        if not self.closing and not self.conn.closed:
            self._confirmed(seq, ok)
        return result

    def _confirmed(self, seq: int, ok: bool) -> None:
        if not ok:
            self._flushConfirms()
            self.sendMethod(_spec.BasicNack(seq, False, False))
            return
        # confirmWaiting is ordered by sequence number: its first key is the oldest.
        if self.confirmWaiting and next(iter(self.confirmWaiting)) < seq:
            self._flushConfirms()
            self.sendMethod(_spec.BasicAck(seq, False))
            return
        # Coalesce: one Basic.Ack(multiple) per reactor turn for a run of confirms.
        self._ackThrough = seq
        if self._flushCall is None:
            self._flushCall = self.conn.reactor.callLater(0, self._flushConfirms)

    def _flushConfirms(self) -> None:
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if self._ackThrough and not self.closing and not self.conn.closed:
            self.sendMethod(_spec.BasicAck(self._ackThrough, True))
        self._ackThrough = 0

    # -- basic: get, ack ------------------------------------------------

    def handle_basic_get(self, m: _spec.BasicGet) -> None:
        self._permit("read", "queue", self._queueName(m.queue))
        q = self._queue(m.queue)
        q.touch()
        qm = q.popLive()
        if qm is None:
            self.sendMethod(_spec.BasicGetEmpty())
            return
        tag = self.nextTag
        self.nextTag += 1
        msg = qm.message
        if m.no_ack:
            q.forget(qm)
        else:
            self.unacked[tag] = (qm, q, None)
            self.unackedBytes += msg.size
        q.delivered += 1
        self.conn.server.broker.stats.amqpSent += 1
        self.conn.sendContent(
            self.number,
            _spec.BasicGetOk(tag, qm.redelivered, msg.exchange, msg.routingKey, q.count),
            msg.propsRaw,
            msg.body,
        )

    def _take(
        self, tag: int, multiple: bool
    ) -> list[tuple[QueuedMessage, Queue | None, Consumer | None]]:
        if multiple:
            if tag == 0:
                tags = list(self.unacked)
            else:
                # Tags are inserted in increasing order: stop at the first above.
                tags = []
                for t in self.unacked:
                    if t > tag:
                        break
                    tags.append(t)
                if not tags:
                    raise preconditionFailed(f"unknown delivery tag {tag}")
        else:
            if tag not in self.unacked:
                raise preconditionFailed(f"unknown delivery tag {tag}")
            tags = [tag]
        out = []
        for t in tags:
            entry = self.unacked.pop(t)
            self.unackedBytes -= entry[0].message.size
            if entry[2] is not None:
                entry[2].unacked -= 1
            out.append(entry)
        return out

    def _settle(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        """Ack (requeue None), or reject with or without requeue."""
        if self.tx:
            self.txOps.append(lambda: self._settleNow(tag, multiple, requeue))
            return
        self._settleNow(tag, multiple, requeue)

    def _settleNow(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        entries = self._take(tag, multiple)
        touched: set[Queue] = set()
        back: dict[Queue, list[QueuedMessage]] = {}
        for qm, q, _c in entries:
            if q is None:
                continue
            if requeue is None:
                q.forget(qm)
            elif requeue:
                back.setdefault(q, []).append(qm)
            else:
                q.forget(qm)
                q.vhost.deadLetter(q, qm.message, "rejected", qm)
            touched.add(q)
        for q, items in back.items():
            q.requeue(items)
        if self.prefetchCount or self.prefetchSize:
            self.kick()
        else:
            for q in touched:
                q.dispatch()
        # No checkMemory here: only publishers are blocked by the memory alarm;
        # pausing a consumer's acks could keep the queues from ever draining.

    def handle_basic_ack(self, m: _spec.BasicAck) -> None:
        self._settle(m.delivery_tag, m.multiple, None)

    def handle_basic_nack(self, m: _spec.BasicNack) -> None:
        self._settle(m.delivery_tag, m.multiple, m.requeue)

    def handle_basic_reject(self, m: _spec.BasicReject) -> None:
        self._settle(m.delivery_tag, False, m.requeue)

    def handle_basic_recover(self, m: _spec.BasicRecover) -> None:
        self.requeueAll()
        self.sendMethod(_spec.BasicRecoverOk())

    def handle_basic_recover_async(self, m: _spec.BasicRecoverAsync) -> None:
        self.requeueAll()

    def requeueAll(self) -> None:
        """Requeue every unacknowledged delivery of this channel, in order."""
        if not self.unacked:
            return
        entries = self._take(0, True)
        back: dict[Queue, list[QueuedMessage]] = {}
        for qm, q, _c in entries:
            if q is not None:
                back.setdefault(q, []).append(qm)
        for q, items in back.items():
            q.requeue(items)

    # -- confirm and tx -------------------------------------------------

    def handle_confirm_select(self, m: _spec.ConfirmSelect) -> None:
        if self.tx:
            raise preconditionFailed("cannot switch from tx to confirm mode")
        self.confirm = True
        if not m.nowait:
            self.sendMethod(_spec.ConfirmSelectOk())

    def handle_tx_select(self, m: _spec.TxSelect) -> None:
        if self.confirm:
            raise preconditionFailed("cannot switch from confirm to tx mode")
        self.tx = True
        self.sendMethod(_spec.TxSelectOk())

    def handle_tx_commit(self, m: _spec.TxCommit) -> None:
        if not self.tx:
            raise preconditionFailed("channel is not transactional")
        ops, self.txOps = self.txOps, []
        for op in ops:
            op()
        self.sendMethod(_spec.TxCommitOk())

    def handle_tx_rollback(self, m: _spec.TxRollback) -> None:
        if not self.tx:
            raise preconditionFailed("channel is not transactional")
        self.txOps = []
        self.sendMethod(_spec.TxRollbackOk())

    # -- teardown -------------------------------------------------------

    def teardown(self) -> None:
        """The channel closes (or its connection went): cancel consumers, requeue unacked."""
        self.closing = True
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        consumers = list(self.consumers.values())
        self.consumers.clear()
        self.requeueAll()
        for consumer in consumers:
            self._dropConsumer(consumer)
        self.txOps = []


#: method class -> its handler on L{AMQPChannel} (dispatch without string building)
_HANDLERS: dict[type, Any] = {
    cls: getattr(AMQPChannel, "handle_" + cls.NAME)
    for cls in _spec.METHODS.values()
    if hasattr(AMQPChannel, "handle_" + cls.NAME)
}


def _checkName(kind: str, name: str) -> None:
    """Queue and exchange names are UTF-8 text (a shortstr that is not decodes with
    surrogates, and such a name cannot name a shard or a stored declaration).
    bench/fuzz.py found durable declarations failing with a traceback."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise preconditionFailed(
            f"{kind} name {name.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8"
        ) from None
