"""The Kafka server factory and its protocol plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IProtocolPlugin
from robustmq.protocols.kafka._node import nodeFor
from robustmq.protocols.kafka._protocol import KafkaServerProtocol

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker


class KafkaServerFactory(ServerFactory):
    """Builds one L{KafkaServerProtocol} per accepted connection.

    At the listener's C{max_connections}, or C{[limits] max_connections} for
    the node, a new connection is closed at once and a warning is logged.
    """

    log = Logger()
    noisy = False

    def __init__(self, broker: Broker, listener: ListenerSettings, reactor: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.reactor = reactor
        self.node = nodeFor(broker, reactor)
        self.open: set[KafkaServerProtocol] = set()
        #: connections refused at a limit, and accepted (for the listener metrics)
        self.refused = 0
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> KafkaServerProtocol | None:
        limit = self.listener.max_connections
        nodeLimit = self.broker.settings.limits.max_connections
        if len(self.open) >= limit or self.broker.openSockets >= nodeLimit:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                self.log.warn(
                    "{listener}: connection from {addr} refused: connection limit reached "
                    "({refused} refused so far)",
                    listener=self.listener.label,
                    addr=getattr(addr, "host", addr),
                    refused=self.refused,
                )
            return None
        protocol = KafkaServerProtocol(self.node, self.listener)
        protocol.factory = self
        self.open.add(protocol)
        self.accepted += 1
        self.broker.openSockets += 1
        return protocol

    def connectionEnded(self, protocol: KafkaServerProtocol) -> None:
        """Called by the protocol when its connection is lost."""
        if protocol in self.open:
            self.open.discard(protocol)
            self.broker.openSockets -= 1

    def stopFactory(self) -> None:
        """The listener stopped: close its connections and cancel group timers."""
        for p in list(self.open):
            if p.transport is not None:
                p.transport.loseConnection()
        self.node.groups.stop()


@implementer(IPlugin, IProtocolPlugin)
class KafkaProtocolPlugin:
    """The Kafka wire protocol as a broker protocol plugin."""

    name = "kafka"
    defaultPort = 9092
    transports = ("tcp", "tls")

    def buildFactory(
        self, broker: Broker, listener: ListenerSettings, reactor: Any
    ) -> KafkaServerFactory:
        """A factory for one Kafka listener."""
        return KafkaServerFactory(broker, listener, reactor)


kafkaPlugin = KafkaProtocolPlugin()
