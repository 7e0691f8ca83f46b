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
        limit = broker.settings.http.metrics_max_objects
        omitted = GaugeMetricFamily(
            "robustmq_metrics_omitted_objects",
            "Kafka partitions, group partitions and AMQP queues left out of the labelled "
            "series above [http] metrics_max_objects",
            labels=["kind"],
        )
        kafka = broker.nodeServices.get("kafka")
        if kafka is not None:
            rows = kafka.metricRows(limit)
            yield from _kafkaMetrics(rows)
            for kind, n in rows["omitted"].items():
                omitted.add_metric([kind], n)
        amqp = broker.nodeServices.get("amqp")
        if amqp is not None:
            rows = amqp.metricRows(limit)
            yield from _amqpMetrics(rows)
            for kind, n in rows["omitted"].items():
                omitted.add_metric([kind], n)
        yield omitted

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


def _kafkaMetrics(rows: dict[str, Any]) -> Iterator[Metric]:
    """Per-partition offsets and bytes, per-group committed offsets and lag."""
    labels = ["topic", "partition"]
    start = GaugeMetricFamily(
        "robustmq_kafka_partition_log_start_offset",
        "First readable offset of each Kafka partition",
        labels=labels,
    )
    end = GaugeMetricFamily(
        "robustmq_kafka_partition_log_end_offset",
        "Next offset to be written (high watermark) of each Kafka partition",
        labels=labels,
    )
    size = GaugeMetricFamily(
        "robustmq_kafka_partition_bytes",
        "Bytes each Kafka partition holds in the store",
        labels=labels,
    )
    for topic, index, first, nxt, nbytes in rows["partitions"]:
        values = [topic, str(index)]
        start.add_metric(values, first)
        end.add_metric(values, nxt)
        if nbytes is not None:
            size.add_metric(values, nbytes)
    groupLabels = ["group", "topic", "partition"]
    committed = GaugeMetricFamily(
        "robustmq_kafka_group_committed_offset",
        "Offset each consumer group committed, per partition",
        labels=groupLabels,
    )
    lag = GaugeMetricFamily(
        "robustmq_kafka_group_lag",
        "Records behind the log end offset, per consumer group and partition",
        labels=groupLabels,
    )
    for group, topic, index, offset, behind in rows["groups"]:
        values = [group, topic, str(index)]
        committed.add_metric(values, offset)
        lag.add_metric(values, behind)
    yield from (start, end, size, committed, lag)


def _amqpMetrics(rows: dict[str, Any]) -> Iterator[Metric]:
    """Per-queue depth, unacknowledged messages, consumers and message counters."""
    labels = ["vhost", "queue"]
    families = [
        GaugeMetricFamily(
            "robustmq_amqp_queue_messages_ready", "Messages ready in each AMQP queue", labels=labels
        ),
        GaugeMetricFamily(
            "robustmq_amqp_queue_messages_unacknowledged",
            "Messages delivered from each AMQP queue and not yet acknowledged",
            labels=labels,
        ),
        GaugeMetricFamily(
            "robustmq_amqp_queue_consumers", "Consumers of each AMQP queue", labels=labels
        ),
        CounterMetricFamily(
            "robustmq_amqp_queue_published",
            "Messages accepted into each AMQP queue (rate(): publish rate)",
            labels=labels,
        ),
        CounterMetricFamily(
            "robustmq_amqp_queue_delivered",
            "Messages delivered from each AMQP queue to consumers and Basic.Get (rate(): "
            "deliver rate)",
            labels=labels,
        ),
        CounterMetricFamily(
            "robustmq_amqp_queue_dropped",
            "Messages each AMQP queue lost (overflow, expiry, delivery limit) without "
            "dead-lettering them",
            labels=labels,
        ),
    ]
    for vhost, name, *values in rows["queues"]:
        for family, value in zip(families, values, strict=True):
            family.add_metric([vhost, name], value)
    yield from families


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
            "AMQP: unroutable without mandatory, overflow, expired (not dead-lettered); "
            "robustmq_messages_dropped_by_reason says why",
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
    reasons = CounterMetricFamily(
        "robustmq_messages_dropped_by_reason",
        "Messages dropped, by protocol and reason: offline_qos0, queue_overflow, too_large "
        "(MQTT); unroutable, overflow, expired, delivery_limit (AMQP)",
        labels=["protocol", "reason"],
    )
    for (protocol, reason), n in sorted(stats.dropReasons.items()):
        reasons.add_metric([protocol, reason], n)
    yield reasons
    yield received
    yield sent


#: (metric name without _total, help, key of the store's statistics()) of storage fault counters
STORAGE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "robustmq_storage_damaged_ranges",
        "Damaged record ranges found (at start-up or by reads); each logged once",
        "damaged_ranges",
    ),
    (
        "robustmq_storage_damaged_offsets",
        "Offsets inside the damaged ranges found",
        "damaged_offsets",
    ),
    (
        "robustmq_storage_recovery_lost_offsets",
        "Acknowledged offsets found missing or damaged at start-up",
        "recovery_lost_offsets",
    ),
    (
        "robustmq_storage_disk_full_events",
        "Times the disk filled up and writes were refused until space was freed",
        "disk_full_events",
    ),
    (
        "robustmq_storage_fsync_rounds",
        "fsync rounds of the always policy (each covers every batch written since the last)",
        "fsync_rounds",
    ),
    (
        "robustmq_storage_fsync_batches",
        "Write batches acknowledged by those fsync rounds",
        "fsync_batches",
    ),
)


def storeHealth(store: Any) -> dict[str, Any] | None:
    """
    The store's C{health()} in one shape, or None for a store without one.

    The segment store answers C{{"writable", "state", "reason", "free_bytes"}};
    the s3 store C{(ok, detail)}.  Either way the result here has the former's
    keys (C{state} "unhealthy" for a store that gave no finer one).
    """
    health = getattr(store, "health", None)
    if not callable(health):
        return None
    state = health()
    if isinstance(state, dict):
        return state
    ok, detail = state
    return {
        "writable": bool(ok),
        "state": "ok" if ok else "unhealthy",
        "reason": None if ok else str(detail),
        "free_bytes": None,
    }


def _storageHealthMetrics(store: Any) -> Iterator[Metric]:
    """Whether the store takes writes, and what faults it found and handled."""
    state = storeHealth(store)
    if state is not None:
        yield GaugeMetricFamily(
            "robustmq_storage_writable",
            "1 while the store takes writes; 0 while it refuses them (disk full, failed)",
            value=1 if state["writable"] else 0,
        )
        if state.get("free_bytes") is not None:
            yield GaugeMetricFamily(
                "robustmq_storage_free_bytes",
                "Bytes free for the store under its data directory",
                value=state["free_bytes"],
            )
    statistics = getattr(store, "statistics", None)
    if statistics is None:
        return
    values = statistics()
    for name, doc, key in STORAGE_COUNTERS:
        yield CounterMetricFamily(name, doc, value=values.get(key, 0))
    recovery = CounterMetricFamily(
        "robustmq_storage_recovery_events",
        "Repairs and losses found at start-up, by kind (each logged at warning)",
        labels=["kind"],
    )
    errors = CounterMetricFamily(
        "robustmq_storage_write_errors",
        "Write batches that failed, by kind (full: no space; io: any other error)",
        labels=["kind"],
    )
    for key, value in sorted(values.items()):
        if key.startswith("recovery:"):
            recovery.add_metric([key[len("recovery:") :]], value)
        elif key.startswith("write_errors:"):
            errors.add_metric([key[len("write_errors:") :]], value)
    yield recovery
    yield errors


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
        "a key that is not a matching MQTT topic, a batch that does not decode)",
        value=mappings.kafkaOnly,
    )


def _storageMetrics(store: Any) -> Iterator[Metric]:
    """Storage health and fault counters, and the latency histograms of the
    shard store's calls when it is timed."""
    yield from _storageHealthMetrics(store)
    """Latency histograms of the shard store's calls, when it is timed, and the
    store's own numbers where it keeps some (the s3 store's C{stats()})."""
    stats = getattr(store, "stats", None)
    if callable(stats):
        family = GaugeMetricFamily(
            "robustmq_storage_store",
            "The shard store's own counters and gauges (s3: requests by method, bytes "
            "written, PUT failures, failed acknowledgements, fenced shards, cache use)",
            labels=["name"],
        )
        for name, value in sorted(stats().items()):
            family.add_metric([name], value)
        yield family
        health = getattr(store, "health", None)
        if callable(health):
            yield GaugeMetricFamily(
                "robustmq_storage_healthy",
                "1 while the shard store answers (0: object store failing or a write unsettled)",
                value=1 if health()[0] else 0,
            )
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


__all__ = ["COUNTERS", "STORAGE_COUNTERS", "BrokerCollector", "Metrics", "storeHealth"]
