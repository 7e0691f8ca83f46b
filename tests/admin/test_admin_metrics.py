"""/metrics in the Prometheus text format after real MQTT traffic, and its agreement with $SYS."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from adminhelpers import TIMEOUT, AdminNode, Paho, waitFor
from prometheus_client.parser import text_string_to_metric_families

from robustmq.admin._metrics import Metrics
from robustmq.core.systopics import sysValues
from robustmq.protocols.mqtt._packets import Connect, Publish, Subscribe
from robustmq.storage.memory import MemoryShardStore
from robustmq.storage.timing import TimedShardStore
from robustmq.testing.memory import InMemoryBroker


def scrape(node: AdminNode) -> dict[str, float]:
    """Every sample of /metrics by name (with labels folded into the name)."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=TIMEOUT) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


@pytest.fixture
def quietNode() -> Iterator[AdminNode]:
    """A node of its own with $SYS off, so counts are exactly what the test sends."""
    n = AdminNode(extra="[mqtt]\nsys_interval = 0").start()
    try:
        yield n
    finally:
        n.stop()


def test_metrics_count_real_mqtt_traffic(quietNode: AdminNode) -> None:
    before = scrape(quietNode)
    assert before["robustmq_connections"] == 0
    assert before["robustmq_messages_received_total{protocol=mqtt,qos=1}"] == 0
    sub = Paho(quietNode.port, "metrics-sub")
    pub = Paho(quietNode.port, "metrics-pub")
    try:
        sub.subscribe("m/#", 1)
        for i in range(5):
            pub.publish(f"m/{i}", b"x" * 10, qos=1, retain=(i == 0))
        for _ in range(5):
            sub.expect()
        m = waitFor(
            lambda: (
                (s := scrape(quietNode))["robustmq_messages_sent_total{protocol=mqtt,qos=1}"] == 5
                and s["robustmq_inflight_messages"] == 0
                and s
            ),
            "five deliveries counted and acknowledged",
        )
        assert m["robustmq_connections"] == 2
        assert m["robustmq_connections_max"] == 2
        assert m["robustmq_client_connects_total"] == 2
        assert m["robustmq_sessions"] == 2
        assert m["robustmq_sessions_online"] == 2
        assert m["robustmq_subscriptions"] == 1
        assert m["robustmq_messages_received_total{protocol=mqtt,qos=1}"] == 5
        for qos in (0, 2):
            assert m[f"robustmq_messages_received_total{{protocol=mqtt,qos={qos}}}"] == 0
            assert m[f"robustmq_messages_sent_total{{protocol=mqtt,qos={qos}}}"] == 0
        assert m["robustmq_publish_received_total"] == 5
        assert m["robustmq_publish_sent_total"] == 5
        assert total(m, "robustmq_messages_dropped_total") == 0
        assert total(m, "robustmq_messages_received_total") == 5
        assert m["robustmq_retained_messages"] == 1
        assert m["robustmq_inflight_messages"] == 0
        assert m["robustmq_queued_messages"] == 0
        # 5 PUBLISH packets of 10 payload bytes each way, plus protocol overhead.
        assert m["robustmq_bytes_received_total{protocol=mqtt}"] > 50
        assert m["robustmq_bytes_sent_total{protocol=mqtt}"] > 50
        assert m["robustmq_bytes_received_total{protocol=kafka}"] == 0
        listener = f"listener=mqtt/tcp:{quietNode.port},protocol=mqtt,transport=tcp"
        assert m[f"robustmq_listener_sockets{{{listener}}}"] == 2
        # The two clients, plus the start-up probes that waited for the port.
        assert m[f"robustmq_listener_accepted_total{{{listener}}}"] >= 2
        assert m[f"robustmq_listener_refused_total{{{listener}}}"] == 0
        assert m["robustmq_build_info{node=robustmq-1,version=" + _version() + "}"] == 1
        # Process metrics of the node's own process.
        assert m["process_resident_memory_bytes"] > 10_000_000
        assert m["process_open_fds"] >= 4
        assert m["process_cpu_seconds_total"] > 0
        assert m["process_max_fds"] > 0
    finally:
        sub.close()
        pub.close()
    waitFor(lambda: scrape(quietNode)["robustmq_connections"] == 0, "connections to close")


def total(samples: dict[str, float], name: str) -> float:
    """The sum of C{name}'s samples over all their labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def _version() -> str:
    from robustmq import __version__

    return __version__


#: $SYS topic → metric that reads the same counter.
SHARED = {
    "$SYS/broker/clients/connected": "robustmq_connections",
    "$SYS/broker/clients/maximum": "robustmq_connections_max",
    "$SYS/broker/clients/total": "robustmq_sessions",
    "$SYS/broker/messages/received": "robustmq_messages_received_total",
    "$SYS/broker/messages/sent": "robustmq_messages_sent_total",
    "$SYS/broker/messages/dropped": "robustmq_messages_dropped_total",
    "$SYS/broker/publish/messages/received": "robustmq_publish_received_total",
    "$SYS/broker/publish/messages/sent": "robustmq_publish_sent_total",
    "$SYS/broker/bytes/received": "robustmq_bytes_received_total",
    "$SYS/broker/bytes/sent": "robustmq_bytes_sent_total",
    "$SYS/broker/subscriptions/count": "robustmq_subscriptions",
    "$SYS/broker/retained messages/count": "robustmq_retained_messages",
}


def _metricValues(metrics: Metrics) -> dict[str, float]:
    """Every sample name with its value summed over labels (the $SYS totals)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0) + s.value
    return out


def test_sys_topics_and_metrics_read_the_same_counters() -> None:
    """In one process at one instant, every shared counter has the same value in both."""
    harness = InMemoryBroker()
    metrics = Metrics(harness.broker)
    sub = harness.connect(50001)
    sub.send(Connect("s"), Subscribe(1, [("t/#", 1)]))
    pub = harness.connect(50002)
    pub.send(Connect("p"))
    for i in range(3):
        pub.send(Publish(f"t/{i}", b"payload", qos=1, packetId=i + 1, retain=i == 0))
    pub.send(Publish("nobody/listens", b"x", qos=0))
    sub.received()
    pub.lose()
    sys = sysValues(harness.broker)
    values = _metricValues(metrics)
    for topic, metric in SHARED.items():
        assert float(sys[topic]) == values[metric], (topic, metric)
    assert values["robustmq_messages_received_total"] == 4
    assert harness.broker.stats.mqttReceived == [1, 3, 0]
    assert values["robustmq_connections"] == 1
    assert set(SHARED) <= set(sys)


def test_metrics_agree_with_sys_on_a_running_node() -> None:
    """A $SYS subscriber and a scrape report the same values once traffic has stopped."""
    n = AdminNode(extra="[mqtt]\nsys_interval = 1").start()
    pub = watcher = None
    try:
        pub = Paho(n.port, "agree-p")
        for i in range(3):
            pub.publish(f"agree/{i}", b"x", qos=1)
        watcher = Paho(n.port, "agree-w")
        watcher.subscribe("$SYS/broker/#", 0)
        latest: dict[str, str] = {}

        def sysCaughtUp() -> bool:
            while not watcher.messages.empty():
                m = watcher.messages.get_nowait()
                latest[m.topic] = m.payload.decode()
            return (
                latest.get("$SYS/broker/messages/received") == "3"
                and latest.get("$SYS/broker/clients/connected") == "2"
            )

        waitFor(sysCaughtUp, "$SYS to report the traffic", timeout=10)
        metrics = scrape(n)
        for key in ("messages/received", "publish/messages/received", "clients/connected"):
            topic = f"$SYS/broker/{key}"
            assert float(latest[topic]) == total(metrics, SHARED[topic]), topic
        assert metrics["robustmq_messages_received_total{protocol=mqtt,qos=1}"] == 3
    finally:
        for c in (pub, watcher):
            if c is not None:
                c.close()
        n.stop()


def test_grafana_dashboard_charts_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:robustmq|process)_[a-z_]+)\b", e)}
    # Every family the collector can yield, with its sample suffixes, including the
    # storage histograms (a timed store) and per-listener families (no listener here).
    harness = InMemoryBroker()
    broker = harness.broker
    broker.store = TimedShardStore(MemoryShardStore())
    # The Kafka and AMQP node services, as a node with those listeners has them.
    from robustmq.protocols.amqp._server import AMQPServer
    from robustmq.protocols.kafka._node import KafkaNode

    broker.nodeServices["kafka"] = KafkaNode(broker, harness.clock)
    broker.nodeServices["amqp"] = AMQPServer(broker, harness.clock)
    exposed = set()
    for family in Metrics(broker).registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }.get(family.type, ("",))
        exposed |= {family.name + suffix for suffix in suffixes}
    assert used and used <= exposed, used - exposed
    for family in ("robustmq_kafka_group_lag", "robustmq_amqp_queue_messages_ready"):
        assert family in used, f"no Grafana panel charts {family}"
