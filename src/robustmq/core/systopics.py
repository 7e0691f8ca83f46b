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


def sysCounters(broker: Broker) -> dict[str, float]:
    """Topic → number of every $SYS topic that counts or measures something, from the
    broker's counters (L{sysValues} turns them into text)."""
    s = broker.stats
    numbers: dict[str, float] = {
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
    now = broker.reactor.seconds()
    for minutes in (1, 5, 15):
        received, sent, bytesIn, bytesOut = s.load(now, minutes)
        numbers[f"$SYS/broker/load/messages/received/{minutes}min"] = float(received)
        numbers[f"$SYS/broker/load/messages/sent/{minutes}min"] = float(sent)
        numbers[f"$SYS/broker/load/bytes/received/{minutes}min"] = float(bytesIn)
        numbers[f"$SYS/broker/load/bytes/sent/{minutes}min"] = float(bytesOut)
    current, peak = memoryUse()
    if current is not None:
        numbers["$SYS/broker/heap/current"] = current
    numbers["$SYS/broker/heap/maximum"] = peak
    usage = getattr(broker.store, "usage", None)
    if usage is not None:
        records, size = usage()
        numbers["$SYS/broker/store/messages/count"] = records
        numbers["$SYS/broker/store/messages/bytes"] = size
    return numbers


#: The $SYS topics whose values add up over the worker processes of a node
#: (docs/workers.md): all but the retained count, which every worker holds the same.
SUMMED_PREFIXES = (
    "$SYS/broker/clients/",
    "$SYS/broker/messages/",
    "$SYS/broker/publish/",
    "$SYS/broker/bytes/",
    "$SYS/broker/subscriptions/",
    "$SYS/broker/load/",
    "$SYS/broker/heap/",
    "$SYS/broker/store/",
)


def sysValues(broker: Broker, numbers: dict[str, float] | None = None) -> dict[str, str]:
    """Topic → value of every $SYS topic, from the broker's counters (or C{numbers},
    e.g. a node's counters added up over its workers)."""
    s = broker.stats
    values = {
        "$SYS/broker/version": f"RobustMQ {broker.version}",
        "$SYS/broker/uptime": f"{int(s.uptime())} seconds",
    }
    for topic, number in (sysCounters(broker) if numbers is None else numbers).items():
        values[topic] = f"{number:.2f}" if isinstance(number, float) else str(number)
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
