"""
A tiny third-party protocol for RobustMQ: publish and subscribe over text lines.

It shows everything a protocol plugin brings (docs/plugins.md): its own
config section (``[line]``), a node-wide service, a listener factory, and
a connection that is a delivery target of the broker's router, so it
shares one topic space with MQTT, AMQP and mapped Kafka topics::

    SUB <topic filter>        -> OK            (then: MSG <topic> <payload> per message)
    PUB <topic> <payload>     -> OK <n>        (n: subscribers reached)
    STATS                     -> LINES <count> (lines received by the whole node)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.subscription import SubscriptionOptions
from robustmq.core.topics import InvalidTopic, validateTopicFilter, validateTopicName
from robustmq.interfaces import IDeliveryTarget, IProtocolPlugin

__all__ = ["LineSettings", "linePlugin"]


@dataclass(frozen=True)
class LineSettings:
    """The ``[line]`` section: validated, documented and overridable like a built-in one."""

    greeting: str = field(default="robustmq line protocol", metadata={"doc": "first line sent"})
    max_line_length: int = field(
        default=4096, metadata={"min": 16, "max": 1 << 20, "doc": "a longer line closes"}
    )


class LineNode(Service):
    """What every ``line`` listener of a node shares: a line counter and the connections."""

    name = "line"

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.settings: LineSettings = broker.settings.section("line")
        self.lines = 0
        self.connections: set[LineConnection] = set()

    def stopService(self) -> None:
        super().stopService()
        for connection in list(self.connections):
            connection.transport.loseConnection()


@implementer(IDeliveryTarget)
class LineConnection(LineOnlyReceiver):
    """One client: its subscriptions are router entries with this connection as target."""

    log = Logger()
    delimiter = b"\n"
    clientId = None

    def __init__(self, node: LineNode) -> None:
        self.node = node
        self.MAX_LENGTH = node.settings.max_line_length
        self.filters: set[str] = set()

    def connectionMade(self) -> None:
        self.node.connections.add(self)
        self.sendLine(self.node.settings.greeting.encode())

    def connectionLost(self, reason: Any = None) -> None:
        self.node.connections.discard(self)
        for topicFilter in self.filters:
            self.node.broker.unsubscribeTarget(topicFilter, self)
        self.filters.clear()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn("line client sent more than {n} bytes in a line", n=self.MAX_LENGTH)
        self.sendLine(b"ERR line too long")
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        self.node.lines += 1
        command, _, rest = line.decode("utf-8", "replace").partition(" ")
        broker = self.node.broker
        try:
            if command == "SUB":
                validateTopicFilter(rest)
                outcome = Outcome()
                broker.subscribeTarget(rest, self, SubscriptionOptions(qos=0), outcome)
                outcome.background()
                self.filters.add(rest)
                self.sendLine(b"OK")
            elif command == "PUB":
                topic, _, payload = rest.partition(" ")
                validateTopicName(topic)
                message = Message(topic, payload.encode(), 0, source="line")
                outcome = broker.publish(message)
                outcome.background()
                self.sendLine(b"OK %d" % outcome.delivered)
            elif command == "STATS":
                self.sendLine(b"LINES %d" % self.node.lines)
            else:
                self.sendLine(b"ERR unknown command")
        except InvalidTopic as e:
            self.sendLine(f"ERR {e}".encode())

    # IDeliveryTarget: what the broker's router calls for every matching message.

    def deliver(self, message: Message, qos: int, options: Any, outcome: Outcome) -> None:
        self.sendLine(b"MSG " + message.topic.encode() + b" " + message.payload)


class LineFactory(Factory):
    """One listener; the connections share the node's L{LineNode}."""

    noisy = False

    def __init__(self, node: LineNode) -> None:
        self.node = node

    def buildProtocol(self, addr: Any) -> LineConnection:
        return LineConnection(self.node)


@implementer(IPlugin, IProtocolPlugin)
class LineProtocolPlugin:
    """The plugin object RobustMQ finds: name, default port, transports, config, services."""

    name = "line"
    defaultPort = 7878
    transports = ("tcp", "tls")
    configSection = LineSettings

    def buildNodeService(self, broker: Any, reactor: Any) -> LineNode:
        return LineNode(broker)

    def buildFactory(self, broker: Any, listener: Any, reactor: Any) -> LineFactory:
        return LineFactory(broker.nodeService("line"))


linePlugin = LineProtocolPlugin()
