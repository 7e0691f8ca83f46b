"""The $SYS/broker/... topics, republished periodically as retained messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.internet import TimerService

if TYPE_CHECKING:
    from robustmq.core.broker import Broker


def sysValues(broker: Broker) -> dict[str, str]:
    """Topic → value of every $SYS topic, from the broker's counters."""
    s = broker.stats
    return {
        "$SYS/broker/version": f"RobustMQ {broker.version}",
        "$SYS/broker/uptime": f"{int(s.uptime())} seconds",
        "$SYS/broker/clients/connected": str(s.clientsConnected),
        "$SYS/broker/clients/maximum": str(s.clientsMaximum),
        "$SYS/broker/clients/total": str(s.sessions),
        "$SYS/broker/messages/received": str(s.messagesReceived),
        "$SYS/broker/messages/sent": str(s.messagesSent),
        "$SYS/broker/messages/dropped": str(s.messagesDropped),
        "$SYS/broker/publish/messages/received": str(s.publishReceived),
        "$SYS/broker/publish/messages/sent": str(s.publishSent),
        "$SYS/broker/bytes/received": str(s.bytesReceived),
        "$SYS/broker/bytes/sent": str(s.bytesSent),
        "$SYS/broker/subscriptions/count": str(len(broker.router)),
        "$SYS/broker/retained messages/count": str(len(broker.retained)),
    }


def publishSys(broker: Broker) -> None:
    """Publish every $SYS value as a retained QoS 0 message."""
    for topic, value in sysValues(broker).items():
        broker.publishInternal(topic, value.encode(), retain=True)


class SysTopicsService(TimerService):
    """Publishes $SYS topics every C{interval} seconds (mosquitto's sys_interval)."""

    def __init__(self, broker: Broker, interval: float) -> None:
        super().__init__(interval, publishSys, broker)
        self.clock = broker.reactor  # type: ignore[assignment]
