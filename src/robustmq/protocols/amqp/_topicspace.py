"""
The MQTT topic exchange: ``amq.topic`` (``[amqp] mqtt_exchange`` in ``mqtt_vhost``)
*is* the broker's MQTT topic space (docs/topic-space.md).

RabbitMQ's convention: MQTT topic ``a/b/c`` is routing key ``a.b.c``, a ``.``
inside an MQTT level is a ``/`` in the routing key (and back), and binding
keys map to MQTT filters with ``*`` ↔ ``+`` and ``#`` ↔ ``#``.

- A binding on the exchange puts an L{AMQPTarget} for its destination (a
  queue, or an exchange bound to it) in the broker's router under the
  binding key's MQTT filter, so MQTT publishes, Kafka records of mapped
  topics and AMQP publishes to the exchange all reach it, on this broker
  and (in a cluster) on the others.
- An AMQP publish to the exchange is converted to the broker's neutral
  L{robustmq.core.message.Message} and published through the router; AMQP
  destinations get the original message back, unchanged.

The properties map both ways as the table in docs/topic-space.md says.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from robustmq.core.message import Message as CoreMessage
from robustmq.core.outcome import Outcome
from robustmq.core.subscription import SubscriptionOptions
from robustmq.interfaces import IDeliveryTarget
from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._model import Exchange, Message, Queue

if TYPE_CHECKING:
    from robustmq.protocols.amqp._model import VirtualHost
    from robustmq.protocols.amqp._server import AMQPServer

__all__ = [
    "AMQPTarget",
    "TopicSpace",
    "TopicSpaceExchange",
    "mqttFilterOf",
    "mqttTopicOf",
    "routingKeyOf",
]

_SWAP = str.maketrans("./", "/.")

#: Keys of CoreMessage.encodings used here.
_ENC_AMQP = "amqp:message"
_ENC_QUEUES = "amqp:queues"

#: MQTT QoS of an AMQP message: persistent (delivery mode 2) ones are QoS 1.
_PERSISTENT = 2


def mqttTopicOf(routingKey: str) -> str:
    """The MQTT topic name of a routing key: C{a.b/c} → C{a/b.c}."""
    return routingKey.translate(_SWAP)


def routingKeyOf(topic: str) -> str:
    """The routing key of an MQTT topic name: C{a/b.c} → C{a.b/c}."""
    return topic.translate(_SWAP)


def mqttFilterOf(bindingKey: str) -> str:
    """The MQTT filter of a binding key: C{a.*.#} → C{a/+/#} (an inner C{#} stays)."""
    return "/".join("+" if word == "*" else word for word in bindingKey.translate(_SWAP).split("/"))


def _headerText(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def toCoreMessage(message: Message, topic: str, now: float) -> CoreMessage:
    """An AMQP message published to the topic exchange, in the broker's neutral form."""
    props = message.properties
    out: dict[str, Any] = {}
    if props.content_type is not None:
        out["content_type"] = props.content_type
    if props.correlation_id is not None:
        out["correlation_data"] = props.correlation_id.encode("utf-8")
    if props.reply_to is not None:
        out["response_topic"] = mqttTopicOf(props.reply_to)
    if props.expiration is not None:
        try:
            out["message_expiry_interval"] = max(1, math.ceil(int(props.expiration) / 1000))
        except ValueError:
            pass  # not a number: AMQP checks it at the queue, MQTT has no use for it
    if props.headers:
        out["user_property"] = [(str(k), _headerText(v)) for k, v in props.headers.items()]
    core = CoreMessage(
        topic,
        message.body,
        1 if props.delivery_mode == _PERSISTENT else 0,
        False,
        now,
        out or None,
        None,
        "amqp",
    )
    # AMQP destinations get the original back, properties and all.
    core.encodings = {_ENC_AMQP: message}  # type: ignore[dict-item]
    return core


def fromCoreMessage(message: CoreMessage, exchange: str) -> Message:
    """The AMQP message a topic-exchange destination gets for C{message} (cached on it)."""
    encodings = message.encodings
    if encodings is None:
        encodings = message.encodings = {}
    cached = encodings.get(_ENC_AMQP)
    if cached is not None:
        return cached  # type: ignore[return-value]
    p = message.properties or {}
    props = _spec.BasicProperties(
        delivery_mode=_PERSISTENT if message.qos else 1,
        timestamp=int(message.timestamp),
    )
    if "content_type" in p:
        props.content_type = p["content_type"]
    if "correlation_data" in p:
        props.correlation_id = bytes(p["correlation_data"]).decode("utf-8", "replace")[:255]
    if "response_topic" in p:
        props.reply_to = routingKeyOf(p["response_topic"])[:255]
    if message.expiresAt is not None:
        props.expiration = str(max(0, int((message.expiresAt - message.timestamp) * 1000)))
    headers: dict[str, Any] = {"x-mqtt-publish-qos": message.qos}
    for key, value in p.get("user_property") or ():
        headers[key] = value  # a repeated MQTT user property: the last one wins
    props.headers = headers
    amqp = Message(exchange, routingKeyOf(message.topic), props, message.payload)
    encodings[_ENC_AMQP] = amqp  # type: ignore[assignment]
    return amqp


@implementer(IDeliveryTarget)
class AMQPTarget:
    """A destination bound to the topic exchange, as the broker's router delivers to it."""

    log = Logger()
    clientId = None

    def __init__(self, space: TopicSpace, dest: Queue | Exchange) -> None:
        self.space = space
        self.dest = dest

    def __repr__(self) -> str:
        kind = "queue" if isinstance(self.dest, Queue) else "exchange"
        return f"<AMQPTarget {kind} {self.dest.name!r}>"

    def deliver(self, message: CoreMessage, qos: int, options: Any, outcome: Outcome) -> None:
        """Put C{message} in the queue (or route it through the exchange); once per queue."""
        amqp = fromCoreMessage(message, self.space.exchangeName)
        dest = self.dest
        if isinstance(dest, Queue):
            queues: Any = (dest,)
        else:
            vhost = self.space.vhost
            assert vhost is not None
            queues = vhost.route(dest, amqp.routingKey, amqp.properties.headers)
        encodings = message.encodings
        assert encodings is not None
        seen = encodings.get(_ENC_QUEUES)
        if seen is None:
            seen = encodings[_ENC_QUEUES] = set()  # type: ignore[assignment]
        for queue in queues:
            if queue in seen or queue.deleted:  # type: ignore[operator]
                continue
            seen.add(queue)  # type: ignore[union-attr]
            if queue.push(amqp, outcome=outcome) is None:
                # Queue.push counted the drop (overflow), with its reason.
                outcome.refused += 1
            queue.dispatch()


class TopicSpaceExchange(Exchange):
    """The MQTT topic exchange: its bindings live in the broker's router."""

    def __init__(self, space: TopicSpace, name: str) -> None:
        super().__init__(name, "topic", True, False, False, {})
        self.space = space

    def bind(self, dest: Any, key: str, args: dict[str, Any]) -> bool:
        new = super().bind(dest, key, args)
        if new:
            self.space.routeAdded(dest, key)
        return new

    def unbind(self, dest: Any, key: str, args: dict[str, Any]) -> bool:
        removed = super().unbind(dest, key, args)
        if removed and not any(d is dest and k == key for (d, k, _a) in self.bindings):
            self.space.routeRemoved(dest, key)
        return removed

    def destinations(self, key: str, headers: dict[str, Any] | None) -> Any:
        """Destinations of a message that reaches the exchange from another AMQP exchange
        (or dead-lettering): the bindings only, matched in the broker's router."""
        return self.space.destinations(mqttTopicOf(key))


class TopicSpace:
    """The node's MQTT topic exchange and the router entries of its bindings."""

    log = Logger()

    def __init__(self, server: AMQPServer) -> None:
        self.server = server
        settings = server.settings
        self.exchangeName = settings.mqtt_exchange
        self.vhostName = settings.mqtt_vhost
        self.vhost: VirtualHost | None = None
        self.exchange: TopicSpaceExchange | None = None
        self.targets: dict[Any, AMQPTarget] = {}

    def exchangeFor(self, vhost: VirtualHost) -> TopicSpaceExchange:
        """Create the exchange in C{vhost} (the C{mqtt_vhost})."""
        self.vhost = vhost
        self.exchange = TopicSpaceExchange(self, self.exchangeName)
        return self.exchange

    def routeAdded(self, dest: Any, key: str) -> None:
        target = self.targets.get(dest)
        if target is None:
            target = self.targets[dest] = AMQPTarget(self, dest)
        outcome = Outcome()
        self.server.broker.subscribeTarget(
            mqttFilterOf(key), target, SubscriptionOptions(qos=2), outcome
        )
        outcome.background()

    def routeRemoved(self, dest: Any, key: str) -> None:
        target = self.targets.get(dest)
        if target is None:
            return
        self.server.broker.unsubscribeTarget(mqttFilterOf(key), target)
        exchange = self.exchange
        if exchange is not None and not any(d is dest for (d, _k, _a) in exchange.bindings):
            del self.targets[dest]

    def destinations(self, topic: str) -> list[Any]:
        """The destinations of this exchange whose bindings match MQTT C{topic}."""
        return [
            subscriber.dest
            for subscriber, _ in self.server.broker.router.match(topic)
            if subscriber.__class__ is AMQPTarget and subscriber.space is self
        ]
