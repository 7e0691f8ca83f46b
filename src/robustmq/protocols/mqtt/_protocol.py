"""The MQTT 3.1 / 3.1.1 / 5.0 server protocol: one instance per client connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from robustmq.interfaces import ISessionConnection
from robustmq.protocols.mqtt._exceptions import ProtocolViolation
from robustmq.protocols.mqtt._packets import (
    AUTH,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Packet,
)

if TYPE_CHECKING:
    pass
from robustmq.protocols.mqtt._connect import ConnectHandling
from robustmq.protocols.mqtt._inbound import InboundPublishing
from robustmq.protocols.mqtt._outbound import OutboundDelivery
from robustmq.protocols.mqtt._subscriptions import SubscriptionHandling


@implementer(ISessionConnection, IPushProducer)
class MQTTServerProtocol(
    ConnectHandling, InboundPublishing, SubscriptionHandling, OutboundDelivery
):
    """Speaks MQTT to one client and connects it to its broker session.

    Packets are dispatched by type to C{handle_<name>} methods (one mixin per
    concern, see L{robustmq.protocols.mqtt._connection}).
    """

    __slots__ = ()

    # Introspection for operators

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary of this client (admin API, logs)."""
        session = self.session
        return {
            "client_id": self.clientId,
            "username": self.username,
            "peer": self.peer,
            "listener": self.listener.label,
            "protocol": "mqtt",
            "protocol_level": self.version,
            "bridge": self.bridge,
            "keepalive": self.keepAlive,
            "connected_at": self.connectedAt,
            "clean_session": session.clean if session else None,
            "session_expiry_interval": session.expiryInterval if session else None,
            "subscriptions": len(session.subscriptions) if session else 0,
            "inflight": len(session.inflight) if session else 0,
            "queued": len(session.queue) if session else 0,
        }


def _notAllowed(protocol: MQTTServerProtocol, packet: Packet) -> None:
    raise ProtocolViolation(f"a client may not send {packet.name.upper()}")


_HANDLERS: list[Any] = [_notAllowed] * 16
MQTTServerProtocol._handlers = _HANDLERS
_HANDLERS[CONNECT] = MQTTServerProtocol.handle_connect
_HANDLERS[PUBLISH] = MQTTServerProtocol.handle_publish
_HANDLERS[PUBACK] = MQTTServerProtocol.handle_puback
_HANDLERS[PUBREC] = MQTTServerProtocol.handle_pubrec
_HANDLERS[PUBREL] = MQTTServerProtocol.handle_pubrel
_HANDLERS[PUBCOMP] = MQTTServerProtocol.handle_pubcomp
_HANDLERS[SUBSCRIBE] = MQTTServerProtocol.handle_subscribe
_HANDLERS[UNSUBSCRIBE] = MQTTServerProtocol.handle_unsubscribe
_HANDLERS[PINGREQ] = MQTTServerProtocol.handle_pingreq
_HANDLERS[DISCONNECT] = MQTTServerProtocol.handle_disconnect
_HANDLERS[AUTH] = MQTTServerProtocol.handle_auth
