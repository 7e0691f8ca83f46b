"""The AMQP server factory and its protocol plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IProtocolPlugin
from robustmq.protocols._limits import ConnectionLimitedFactory
from robustmq.protocols.amqp._connection import AMQPServerProtocol
from robustmq.protocols.amqp._server import AMQPServer

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker

__all__ = ["AMQPProtocolPlugin", "AMQPServerFactory", "amqpPlugin"]


class AMQPServerFactory(ConnectionLimitedFactory):
    """Builds one L{AMQPServerProtocol} per accepted connection.

    At the listener's C{max_connections}, or C{[limits] max_connections} for
    the node, a new connection is closed at once, before any AMQP is spoken.
    """

    log = Logger()
    noisy = False

    def __init__(self, server: AMQPServer, listener: ListenerSettings, reactor: Any) -> None:
        self.server = server
        self.broker = server.broker
        self.listener = listener
        self.reactor = reactor
        self._initLimits()

    def buildProtocol(self, addr: Any) -> AMQPServerProtocol | None:
        if not self._admit(addr) or not self._admitPeer(addr):
            return None
        return self._track(AMQPServerProtocol(self.server, self.listener, self.reactor))


@implementer(IPlugin, IProtocolPlugin)
class AMQPProtocolPlugin:
    """AMQP 0-9-1 (RabbitMQ dialect) as a broker protocol plugin.

    Over C{tcp} (5672) and C{tls} (AMQPS, 5671): the shared transports layer
    (L{robustmq.transports.serverEndpoint}) wraps the same factory in TLS.
    """

    name = "amqp"
    defaultPort = 5672
    transports = ("tcp", "tls")
    configSection = None  # [amqp] is a built-in section (robustmq.config.AMQPSettings)

    def buildNodeService(self, broker: Broker, reactor: Any) -> AMQPServer:
        """Virtual hosts, exchanges and queues of the node, and their recovery."""
        return AMQPServer(broker, reactor)

    def buildFactory(
        self, broker: Broker, listener: ListenerSettings, reactor: Any
    ) -> AMQPServerFactory:
        """A factory for one AMQP listener; all listeners of a node share its virtual hosts."""
        return AMQPServerFactory(broker.nodeService("amqp"), listener, reactor)


amqpPlugin = AMQPProtocolPlugin()
