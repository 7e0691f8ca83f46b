"""The MQTT server factory and its protocol plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.core.security import securityOf
from robustmq.interfaces import IProtocolPlugin
from robustmq.protocols._limits import ConnectionLimitedFactory
from robustmq.protocols.mqtt._node import MQTTNode
from robustmq.protocols.mqtt._protocol import MQTTServerProtocol

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker


class MQTTServerFactory(ConnectionLimitedFactory):
    """Builds one L{MQTTServerProtocol} per accepted connection.

    At C{max_connections} for the listener, or C{[limits] max_connections}
    for the node, a new connection is closed at once (before any MQTT is
    spoken) and a warning is logged.
    """

    def __init__(self, broker: Broker, listener: ListenerSettings, reactor: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.reactor = reactor
        self._initLimits()

    def buildProtocol(self, addr: Any) -> MQTTServerProtocol | None:
        if not self._admit(addr):
            return None
        if not securityOf(self.broker).acceptConnection():
            # Over [limits] connection_rate: closed at once, like the connection limits.
            self._refuse(addr, "connection rate limit")
            return None
        return self._track(MQTTServerProtocol(self.broker, self.listener, self.reactor))


@implementer(IPlugin, IProtocolPlugin)
class MQTTProtocolPlugin:
    """MQTT 3.1 / 3.1.1 as a broker protocol plugin."""

    name = "mqtt"
    defaultPort = 1883
    transports = ("tcp", "tls", "ws", "wss", "quic")
    configSection = None  # [mqtt] is a built-in section (robustmq.config.MQTTSettings)

    def buildNodeService(self, broker: Broker, reactor: Any) -> MQTTNode:
        """Sessions, shared and exclusive subscriptions, wills and delayed publishes."""
        return MQTTNode(broker, reactor)

    def buildFactory(
        self, broker: Broker, listener: ListenerSettings, reactor: Any
    ) -> MQTTServerFactory:
        """A factory for one MQTT listener."""
        return MQTTServerFactory(broker, listener, reactor)


mqttPlugin = MQTTProtocolPlugin()
