"""Prometheus metrics: the broker's counters, read at scrape time.

The collector reads the same L{robustmq.core.stats.Stats} object and the same
registries that L{robustmq.core.systopics.sysValues} reads, so C{/metrics}
and C{$SYS/broker/...} agree by construction: no second set of counters is
kept.  Each node has its own L{CollectorRegistry} (not the library's global
one), so tests can run several brokers in one process.

Gauges that sum over sessions (in-flight, queued) walk every session once
per scrape: O(sessions), a few tens of milliseconds per 100k sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

#: (metric name without _total, help, Stats attribute) of every monotonic counter.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "robustmq_client_connects",
        "Connections that completed their handshake since start",
        "clientsTotalConnects",
    ),
    (
        "robustmq_messages_received",
        "Application messages published into the broker by clients and the admin API "
        "($SYS messages/received)",
        "messagesReceived",
    ),
    (
        "robustmq_messages_sent",
        "Application messages delivered to clients ($SYS messages/sent)",
        "messagesSent",
    ),
    (
        "robustmq_messages_dropped",
        "Messages dropped: offline QoS 0, queue overflow ($SYS messages/dropped)",
        "messagesDropped",
    ),
    (
        "robustmq_publish_received",
        "PUBLISH packets received from clients ($SYS publish/messages/received)",
        "publishReceived",
    ),
    (
        "robustmq_publish_sent",
        "PUBLISH packets sent to clients ($SYS publish/messages/sent)",
        "publishSent",
    ),
    (
        "robustmq_bytes_received",
        "Bytes read from client sockets ($SYS bytes/received)",
        "bytesReceived",
    ),
    ("robustmq_bytes_sent", "Bytes written to client sockets ($SYS bytes/sent)", "bytesSent"),
    (
        "robustmq_malformed_packets",
        "Connections closed for malformed packets or protocol violations",
        "malformedPackets",
    ),
)


class BrokerCollector(Collector):
    """Turns the broker's live state into metric families on every scrape.

    @param listeners: returns (label, open connections or None) per listener.
    """

    def __init__(
        self, broker: Broker, listeners: Callable[[], Iterable[tuple[str, int | None]]]
    ) -> None:
        self.broker = broker
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        stats = broker.stats
        info = InfoMetricFamily("robustmq_build", "RobustMQ version and node id")
        info.add_metric([], {"version": broker.version, "node": broker.settings.node.id})
        yield info
        yield GaugeMetricFamily(
            "robustmq_uptime_seconds", "Seconds since the broker started", value=stats.uptime()
        )
        yield GaugeMetricFamily(
            "robustmq_connections",
            "Clients connected now ($SYS clients/connected)",
            value=stats.clientsConnected,
        )
        yield GaugeMetricFamily(
            "robustmq_connections_max",
            "Most clients connected at once since start ($SYS clients/maximum)",
            value=stats.clientsMaximum,
        )
        perListener = GaugeMetricFamily(
            "robustmq_listener_sockets",
            "Sockets open on each listener (including those not yet past CONNECT)",
            labels=["listener"],
        )
        for label, count in self.listeners():
            if count is not None:
                perListener.add_metric([label], count)
        yield perListener
        for name, doc, attr in COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr))

        sessions = online = congested = inflight = queued = queuedBytes = 0
        for session in broker.sessions:
            sessions += 1
            if session.connection is not None:
                online += 1
            if session.congested:
                congested += 1
            inflight += len(session.inflight)
            queued += len(session.queue)
            queuedBytes += session.queuedBytes
        yield GaugeMetricFamily(
            "robustmq_sessions",
            "Sessions, online and offline ($SYS clients/total)",
            value=sessions,
        )
        yield GaugeMetricFamily(
            "robustmq_sessions_online", "Sessions with a live connection", value=online
        )
        yield GaugeMetricFamily(
            "robustmq_sessions_congested",
            "Online sessions whose full queue is pausing publishers",
            value=congested,
        )
        yield GaugeMetricFamily(
            "robustmq_inflight_messages",
            "QoS 1/2 deliveries awaiting acknowledgement, all sessions",
            value=inflight,
        )
        yield GaugeMetricFamily(
            "robustmq_queued_messages", "Messages waiting in session queues", value=queued
        )
        yield GaugeMetricFamily(
            "robustmq_queued_bytes", "Payload bytes waiting in session queues", value=queuedBytes
        )
        yield GaugeMetricFamily(
            "robustmq_subscriptions",
            "Subscriptions in the route table ($SYS subscriptions/count)",
            value=len(broker.router),
        )
        yield GaugeMetricFamily(
            "robustmq_retained_messages",
            "Topics holding a retained message ($SYS retained messages/count)",
            value=len(broker.retained),
        )
        yield CounterMetricFamily(
            "robustmq_retained_refused",
            "Retained messages not kept because of max_retained_messages/max_retained_payload",
            value=broker.retained.refused,
        )


class Metrics:
    """One node's metric registry: broker state plus process and Python runtime."""

    #: Every metric name here is a classic one, so the 0.0.4 text format (understood
    #: by every Prometheus version) describes the output exactly.
    contentType = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(
        self,
        broker: Broker,
        listeners: Callable[[], Iterable[tuple[str, int | None]]] = lambda: (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(broker, listeners))
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


__all__ = ["COUNTERS", "BrokerCollector", "Metrics"]
