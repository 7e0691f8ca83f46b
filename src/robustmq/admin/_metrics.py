"""Prometheus metrics: the broker's counters, read at scrape time.

The collector reads the same L{robustmq.core.stats.Stats} object and the same
registries that L{robustmq.core.systopics.sysValues} reads, so C{/metrics}
and C{$SYS/broker/...} agree by construction: no second set of counters is
kept.  Each node has its own L{CollectorRegistry} (not the library's global
one), so tests can run several brokers in one process.

Gauges that sum over sessions (in-flight, queued) walk every session once
per scrape: O(sessions), a few tens of milliseconds per 100k sessions.

Messages are labelled by C{protocol} and, for MQTT, C{qos} (empty for Kafka
and AMQP, which have no QoS levels); the sum over labels is the C{$SYS}
total.  Per-listener metrics read each listener's protocol factory
(C{open}, C{accepted}, C{refused}) and the transport wrappers found through
its listening port (TLS handshake failures, QUIC datagrams).  Storage
latency histograms come from L{robustmq.storage.timing.TimedShardStore}
when the node's store is wrapped in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

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
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from robustmq.core.broker import Broker
    from robustmq.core.stats import Stats

#: (metric name without _total, help, Stats attribute) of every monotonic counter.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "robustmq_client_connects",
        "Connections that completed their handshake since start",
        "clientsTotalConnects",
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
        "robustmq_malformed_packets",
        "Connections closed for malformed packets or protocol violations",
        "malformedPackets",
    ),
)


class BrokerCollector(Collector):
    """Turns the broker's live state into metric families on every scrape.

    @param listeners: returns the node's listener services (with C{listener}
        settings, C{factory} and C{port}, see L{robustmq.service.ListenerService}).
    """

    def __init__(self, broker: Broker, listeners: Callable[[], Iterable[Any]]) -> None:
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
        yield from self._listenerMetrics()
        for name, doc, attr in COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr))
        yield from _messageMetrics(stats)
        yield from _storageMetrics(broker.store)
        yield from _mappingMetrics(broker)

        sessions = online = congested = inflight = queued = queuedBytes = 0
        mqtt = broker.nodeServices.get("mqtt")
        for session in mqtt.sessions if mqtt is not None else ():
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
        cluster = getattr(broker, "cluster", None)
        if cluster is not None:
            yield from _clusterMetrics(cluster)

    def _listenerMetrics(self) -> Iterator[Metric]:
        labels = ["listener", "protocol", "transport"]
        sockets = GaugeMetricFamily(
            "robustmq_listener_sockets",
            "Connections open on each listener (including those not yet past CONNECT)",
            labels=labels,
        )
        accepted = CounterMetricFamily(
            "robustmq_listener_accepted",
            "Connections each listener accepted (before any protocol handshake)",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "robustmq_listener_refused",
            "Connections each listener closed at once: connection limits, connection rate",
            labels=labels,
        )
        tlsFailures = CounterMetricFamily(
            "robustmq_listener_tls_handshake_failures",
            "Connections of tls/wss listeners closed before the TLS handshake completed",
            labels=labels,
        )
        quicDropped = CounterMetricFamily(
            "robustmq_listener_quic_datagrams_dropped",
            "Datagrams of QUIC listeners dropped because a connection's receive buffer was full",
            labels=labels,
        )
        quicIgnored = CounterMetricFamily(
            "robustmq_listener_quic_datagrams_ignored",
            "Datagrams of QUIC listeners ignored: unparseable, no such connection, "
            "or a new connection over max_connections",
            labels=labels,
        )
        for svc in self.listeners():
            ls = svc.listener
            values = [ls.label, ls.protocol, ls.transport]
            factory = svc.factory
            opened = getattr(factory, "open", None)
            if opened is not None:
                sockets.add_metric(values, len(opened))
            if hasattr(factory, "accepted"):
                accepted.add_metric(values, factory.accepted)
            if hasattr(factory, "refused"):
                refused.add_metric(values, factory.refused)
            if ls.transport in ("tls", "wss"):
                tls = _wrapperWith(svc.port, "handshakeFailures")
                tlsFailures.add_metric(values, tls.handshakeFailures if tls is not None else 0)
            if ls.transport == "quic":
                server = getattr(svc.port, "server", None)
                quicDropped.add_metric(values, getattr(server, "droppedDatagrams", 0))
                quicIgnored.add_metric(values, getattr(server, "ignoredDatagrams", 0))
        yield from (sockets, accepted, refused, tlsFailures, quicDropped, quicIgnored)


def _wrapperWith(port: Any, attr: str) -> Any:
    """The factory on C{port}'s chain of wrapping factories that has C{attr}, if any.

    A tls listener's port holds the TLS factory; a wss one the TLS factory
    around the WebSocket factory around the protocol's.
    """
    factory = getattr(port, "factory", None)
    for _ in range(4):
        if factory is None:
            return None
        if hasattr(factory, attr):
            return factory
        factory = getattr(factory, "wrappedFactory", None) or getattr(factory, "wrapped", None)
    return None


def _clusterMetrics(cluster: Any) -> Iterator[Metric]:
    """The broker cluster's links (docs/cluster.md)."""
    yield CounterMetricFamily(
        "robustmq_cluster_forwarded_messages",
        "Messages this broker sent to other brokers",
        value=cluster.forwarded,
    )
    yield CounterMetricFamily(
        "robustmq_cluster_received_messages",
        "Messages other brokers forwarded to this one",
        value=cluster.received,
    )
    yield CounterMetricFamily(
        "robustmq_cluster_redirected_messages",
        "Messages sent on to a session that had just moved to another broker",
        value=cluster.redirected,
    )
    yield CounterMetricFamily(
        "robustmq_cluster_dropped_messages",
        "QoS 0 messages for other brokers dropped while their link was down, and messages "
        "sent on to a moved session or group that found none",
        value=cluster.dropped,
    )
    nodes = GaugeMetricFamily(
        "robustmq_cluster_nodes", "Cluster nodes by state, as last pushed", labels=["state"]
    )
    states = [info.state for info in cluster.nodes.values()]
    for state in ("alive", "dead"):
        nodes.add_metric([state], states.count(state))
    yield nodes
    pending = GaugeMetricFamily(
        "robustmq_cluster_link_pending",
        "Messages forwarded to a broker and not yet acknowledged (bound: forward_max_pending)",
        labels=["peer"],
    )
    calls = CounterMetricFamily(
        "robustmq_cluster_link_calls",
        "Batches (calls) sent to a broker: forwarded messages, replicated rows",
        labels=["peer"],
    )
    for peer, link in sorted(cluster.links.items()):
        pending.add_metric([peer], link.pending)
        calls.add_metric([peer], link.calls)
    yield pending
    yield calls


def _messageMetrics(stats: Stats) -> Iterator[Metric]:
    """Messages and bytes by protocol (and MQTT QoS): the $SYS totals, split."""
    families = [
        CounterMetricFamily(
            "robustmq_messages_received",
            "Messages received, by protocol and MQTT QoS (sum: $SYS messages/received). "
            "MQTT: routed into the broker from clients, the admin API, wills, delayed "
            "messages; Kafka: produced records; AMQP: basic.publish",
            labels=["protocol", "qos"],
        ),
        CounterMetricFamily(
            "robustmq_messages_sent",
            "Messages delivered to clients, by protocol and MQTT QoS "
            "(sum: $SYS messages/sent); Kafka: fetched records",
            labels=["protocol", "qos"],
        ),
        CounterMetricFamily(
            "robustmq_messages_dropped",
            "Messages dropped, by protocol and MQTT QoS (sum: $SYS messages/dropped). "
            "MQTT: offline QoS 0, queue overflow, above the client's maximum packet size; "
            "AMQP: unroutable without mandatory, refused by a full queue",
            labels=["protocol", "qos"],
        ),
    ]
    for protocol, qos, *counts in stats.byProtocol():
        for family, value in zip(families, counts, strict=True):
            if value is not None:
                family.add_metric([protocol, qos], value)
    received = CounterMetricFamily(
        "robustmq_bytes_received",
        "Bytes read from client sockets, by protocol (sum: $SYS bytes/received)",
        labels=["protocol"],
    )
    sent = CounterMetricFamily(
        "robustmq_bytes_sent",
        "Bytes written to client sockets, by protocol (sum: $SYS bytes/sent)",
        labels=["protocol"],
    )
    for protocol, bytesIn, bytesOut in stats.bytesByProtocol():
        received.add_metric([protocol], bytesIn)
        sent.add_metric([protocol], bytesOut)
    yield from families
    yield received
    yield sent


def _mappingMetrics(broker: Any) -> Iterator[Metric]:
    """Counters of the [[mappings]] between MQTT topics and Kafka topics (docs/topic-space.md)."""
    kafka = broker.nodeServices.get("kafka")
    mappings = getattr(kafka, "mappings", None)
    if mappings is None or not (mappings.writers or mappings.toMqtt):
        return
    records = CounterMetricFamily(
        "robustmq_mapping_records",
        "MQTT messages appended to mapped Kafka topics, by outcome (appended, dropped at "
        "twice [kafka] mapping_max_pending_bytes, failed append)",
        labels=["kafka_topic", "outcome"],
    )
    pending = GaugeMetricFamily(
        "robustmq_mapping_pending_bytes",
        "Bytes delivered to a mapped Kafka topic and not yet stored",
        labels=["kafka_topic"],
    )
    for topic, writer in sorted(mappings.writers.items()):
        records.add_metric([topic, "appended"], writer.appended)
        records.add_metric([topic, "dropped"], writer.dropped)
        records.add_metric([topic, "failed"], writer.failed)
        pending.add_metric([topic], writer.pendingBytes)
    yield records
    yield pending
    yield CounterMetricFamily(
        "robustmq_mapping_kafka_only_records",
        "Records produced to mapped Kafka topics that were not published to MQTT (no key, "
        "a key that is not a matching MQTT topic, transactional batches)",
        value=mappings.kafkaOnly,
    )


def _storageMetrics(store: Any) -> Iterator[Metric]:
    """Latency histograms of the shard store's calls, when it is timed."""
    timings = getattr(store, "timings", None)
    if not timings:
        return
    seconds = HistogramMetricFamily(
        "robustmq_storage_operation_seconds",
        "Shard store call latency, from the call to its result (includes group-commit "
        "and fsync waits)",
        labels=["operation"],
    )
    failures = CounterMetricFamily(
        "robustmq_storage_operation_failures",
        "Shard store calls that failed",
        labels=["operation"],
    )
    for operation, timing in timings.items():
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound), n)
            for bound, n in timing.cumulative()
        ]
        seconds.add_metric([operation], buckets, timing.sum)
        failures.add_metric([operation], timing.failures)
    yield seconds
    yield failures


class Metrics:
    """One node's metric registry: broker state plus process and Python runtime."""

    #: Every metric name here is a classic one, so the 0.0.4 text format (understood
    #: by every Prometheus version) describes the output exactly.
    contentType = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(
        self,
        broker: Broker,
        listeners: Callable[[], Iterable[Any]] = lambda: (),
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
