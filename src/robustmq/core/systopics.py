"""The $SYS/broker/... topics, republished periodically as retained messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.internet import TimerService

if TYPE_CHECKING:
    from robustmq.core.broker import Broker


#: The $SYS topics whose values add up over the processes of a node (docs/workers.md).
SUMMED = (
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/maximum",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/messages/dropped",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
)


def sysCounters(broker: Broker) -> dict[str, int]:
    """Topic → number of every $SYS topic that counts something, from the broker's counters."""
    s = broker.stats
    return {
        "$SYS/broker/clients/connected": s.clientsConnected,
        "$SYS/broker/clients/maximum": s.clientsMaximum,
        "$SYS/broker/clients/total": s.sessions,
        "$SYS/broker/messages/received": s.messagesReceived,
        "$SYS/broker/messages/sent": s.messagesSent,
        "$SYS/broker/messages/dropped": s.messagesDropped,
        "$SYS/broker/publish/messages/received": s.publishReceived,
        "$SYS/broker/publish/messages/sent": s.publishSent,
        "$SYS/broker/bytes/received": s.bytesReceived,
        "$SYS/broker/bytes/sent": s.bytesSent,
        "$SYS/broker/subscriptions/count": len(broker.router),
        "$SYS/broker/retained messages/count": len(broker.retained),
    }


def sysValues(broker: Broker, counters: dict[str, int] | None = None) -> dict[str, str]:
    """Topic → value of every $SYS topic, from the broker's counters (or C{counters})."""
    s = broker.stats
    values = {
        "$SYS/broker/version": f"RobustMQ {broker.version}",
        "$SYS/broker/uptime": f"{int(s.uptime())} seconds",
    }
    for topic, number in (sysCounters(broker) if counters is None else counters).items():
        values[topic] = str(number)
    return values


def publishSys(broker: Broker) -> None:
    """Publish every $SYS value as a retained QoS 0 message."""
    for topic, value in sysValues(broker).items():
        broker.publishInternal(topic, value.encode(), retain=True)


class SysTopicsService(TimerService):
    """Publishes $SYS topics every C{interval} seconds (mosquitto's sys_interval)."""

    def __init__(self, broker: Broker, interval: float) -> None:
        super().__init__(interval, publishSys, broker)
        self.clock = broker.reactor  # type: ignore[assignment]
