"""The $SYS/broker/... topics, republished periodically as retained messages.

Mosquitto's names, so its users find what they look for: counters,
C{load/#} (per-minute rates over the last 1, 5 and 15 minutes, from samples
taken at each publication), C{heap/current} and C{heap/maximum} (here the
process's resident memory, current and peak) and C{store/messages/#} (what
the shard store holds).
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from twisted.application.internet import TimerService

if TYPE_CHECKING:
    from robustmq.core.broker import Broker


def sysValues(broker: Broker) -> dict[str, str]:
    """Topic → value of every $SYS topic, from the broker's counters."""
    s = broker.stats
    values = {
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
    now = broker.reactor.seconds()
    for minutes in (1, 5, 15):
        received, sent, bytesIn, bytesOut = s.load(now, minutes)
        values[f"$SYS/broker/load/messages/received/{minutes}min"] = f"{received:.2f}"
        values[f"$SYS/broker/load/messages/sent/{minutes}min"] = f"{sent:.2f}"
        values[f"$SYS/broker/load/bytes/received/{minutes}min"] = f"{bytesIn:.2f}"
        values[f"$SYS/broker/load/bytes/sent/{minutes}min"] = f"{bytesOut:.2f}"
    current, peak = memoryUse()
    if current is not None:
        values["$SYS/broker/heap/current"] = str(current)
    values["$SYS/broker/heap/maximum"] = str(peak)
    usage = getattr(broker.store, "usage", None)
    if usage is not None:
        records, size = usage()
        values["$SYS/broker/store/messages/count"] = str(records)
        values["$SYS/broker/store/messages/bytes"] = str(size)
    return values


def memoryUse() -> tuple[int | None, int]:
    """The process's resident memory now (None where /proc is missing) and at its peak, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None, peak
    return current, max(current, peak)


def publishSys(broker: Broker) -> None:
    """Sample the counters for C{load/#}, then publish every $SYS value (retained, QoS 0)."""
    broker.stats.sample(broker.reactor.seconds())
    for topic, value in sysValues(broker).items():
        broker.publishInternal(topic, value.encode(), retain=True)


class SysTopicsService(TimerService):
    """Publishes $SYS topics every C{interval} seconds (mosquitto's sys_interval)."""

    def __init__(self, broker: Broker, interval: float) -> None:
        super().__init__(interval, publishSys, broker)
        self.clock = broker.reactor  # type: ignore[assignment]
