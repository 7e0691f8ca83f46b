"""The node's C{$SYS/broker/...} topics when it runs several worker processes.

The home worker publishes them for the whole node every C{sys_interval}:
the numbers that add up (clients, messages, bytes, subscriptions, load rates,
resident memory, stored messages) summed over the workers it reaches through
their broker links, the others (version, uptime, retained messages, which
every worker holds the same) its own.  The
workers route C{$SYS/} topics to each other (C{ClusterNode.sysNodeWide}),
so a subscriber gets the node's values on whichever worker it landed.  A
worker that does not answer within a second is left out of that round.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from robustmq.core.systopics import SUMMED_PREFIXES, sysCounters, sysValues

#: Seconds the home worker waits for another worker's counters.
ASK_TIMEOUT = 1.0


class NodeSysTopics(TimerService):
    """Publishes the node's $SYS topics every C{interval} seconds from the home worker."""

    log = Logger()

    def __init__(self, broker: Any, interval: float) -> None:
        super().__init__(interval, self.publish)
        self.broker = broker
        self.clock = broker.reactor

    def publish(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self._publish())
        d.addErrback(lambda f: self.log.failure("publishing $SYS topics failed", f))
        return d

    async def _others(self) -> list[dict[str, float]]:
        cluster = getattr(self.broker, "cluster", None)
        if cluster is None:
            return []
        calls = []
        for nodeId in cluster.aliveBrokers():
            link = cluster.links.get(nodeId)
            if nodeId == cluster.nodeId or link is None:
                continue
            calls.append(defer.ensureDeferred(link.call("sysCounters", timeout=ASK_TIMEOUT)))
        answers = await defer.DeferredList(calls, consumeErrors=True)
        return [numbers for ok, numbers in answers if ok and isinstance(numbers, dict)]

    async def _publish(self) -> None:
        broker = self.broker
        broker.stats.sample(broker.reactor.seconds())
        numbers = sysCounters(broker)
        for other in await self._others():
            for topic, number in other.items():
                if topic in numbers and topic.startswith(SUMMED_PREFIXES):
                    if isinstance(number, int | float) and not isinstance(number, bool):
                        numbers[topic] += number
        for topic, text in sysValues(broker, numbers).items():
            broker.publishInternal(topic, text.encode(), retain=True)


__all__ = ["NodeSysTopics"]
