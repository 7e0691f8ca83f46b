"""The Kafka server factory and its protocol plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IProtocolPlugin
from robustmq.protocols._limits import ConnectionLimitedFactory
from robustmq.protocols.kafka._node import KafkaNode
from robustmq.protocols.kafka._protocol import KafkaServerProtocol

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker


class KafkaServerFactory(ConnectionLimitedFactory):
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
        self.node: KafkaNode = broker.nodeService("kafka")
        self._initLimits()

    def buildProtocol(self, addr: Any) -> KafkaServerProtocol | None:
        if not self._admit(addr) or not self._admitPeer(addr):
            return None
        return self._track(KafkaServerProtocol(self.node, self.listener))

    def stopFactory(self) -> None:
        """The listener stopped: close its connections (node-wide state stays with the node)."""
        for p in list(self.open):
            if p.transport is not None:
                p.transport.loseConnection()


@implementer(IPlugin, IProtocolPlugin)
class KafkaProtocolPlugin:
    """The Kafka wire protocol as a broker protocol plugin."""

    name = "kafka"
    defaultPort = 9092
    transports = ("tcp", "tls")
    configSection = None  # [kafka] is a built-in section (robustmq.config.KafkaSettings)

    def buildNodeService(self, broker: Broker, reactor: Any) -> KafkaNode:
        """Topics, the group and transaction coordinators of the node."""
        return KafkaNode(broker, reactor)

    def buildFactory(
        self, broker: Broker, listener: ListenerSettings, reactor: Any
    ) -> KafkaServerFactory:
        """A factory for one Kafka listener."""
        return KafkaServerFactory(broker, listener, reactor)


kafkaPlugin = KafkaProtocolPlugin()
