"""The MQTT server factory and its protocol plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.core.security import securityOf
from robustmq.interfaces import IProtocolPlugin
from robustmq.protocols.mqtt._protocol import MQTTServerProtocol

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker


class MQTTServerFactory(ServerFactory):
    """Builds one L{MQTTServerProtocol} per accepted connection.

    At C{max_connections} for the listener, or C{[limits] max_connections}
    for the node, a new connection is closed at once (before any MQTT is
    spoken) and a warning is logged.
    """

    log = Logger()
    noisy = False

    def __init__(self, broker: Broker, listener: ListenerSettings, reactor: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.reactor = reactor
        self.open: set[MQTTServerProtocol] = set()
        #: connections refused at a limit, and accepted (for the listener metrics)
        self.refused = 0
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> MQTTServerProtocol | None:
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
        if not securityOf(self.broker).acceptConnection():
            # Over [limits] connection_rate: closed at once, like the connection limits.
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                self.log.warn(
                    "{listener}: connection from {addr} refused: connection rate limit "
                    "({refused} refused so far)",
                    listener=self.listener.label,
                    addr=getattr(addr, "host", addr),
                    refused=self.refused,
                )
            return None
        protocol = MQTTServerProtocol(self.broker, self.listener, self.reactor)
        protocol.factory = self
        self.open.add(protocol)
        self.accepted += 1
        self.broker.openSockets += 1
        return protocol

    def connectionEnded(self, protocol: MQTTServerProtocol) -> None:
        """Called by the protocol when its connection is lost."""
        if protocol in self.open:
            self.open.discard(protocol)
            self.broker.openSockets -= 1


@implementer(IPlugin, IProtocolPlugin)
class MQTTProtocolPlugin:
    """MQTT 3.1 / 3.1.1 as a broker protocol plugin."""

    name = "mqtt"
    defaultPort = 1883
    transports = ("tcp", "tls", "ws", "wss", "quic")

    def buildFactory(
        self, broker: Broker, listener: ListenerSettings, reactor: Any
    ) -> MQTTServerFactory:
        """A factory for one MQTT listener."""
        return MQTTServerFactory(broker, listener, reactor)


mqttPlugin = MQTTProtocolPlugin()
