"""/metrics after real traffic: messages by protocol and QoS, Kafka and AMQP, gauges,
storage latency histograms, and per-listener metrics of every transport.

One node serves the module: MQTT over tcp (the default listener), tls and
quic, a second MQTT/TCP listener limited to one connection, Kafka and AMQP,
with the segment store.  Tests compare scrapes taken before and after their
own traffic, so they do not depend on each other's.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from adminhelpers import TIMEOUT, AdminNode, Paho, waitFor
from test_admin_metrics import scrape, total

from robustmq.testing.process import freePort, waitForPort
from robustmq.transports.testcerts import generateTestCertificates


class Node(AdminNode):
    """An admin node with tls, quic, limited-tcp, Kafka and AMQP listeners."""

    def __init__(self, certs: dict[str, Path]) -> None:
        self.tlsPort, self.quicPort, self.limitedPort = freePort(), _freeUdpPort(), freePort()
        self.kafkaPort, self.amqpPort = freePort(), freePort()
        tls = f'certfile = "{certs["server"]}"\nkeyfile = "{certs["server_key"]}"'
        listeners = "".join(
            f'[[listeners]]\nprotocol = "{protocol}"\ntransport = "{transport}"\n'
            f'bind = "127.0.0.1"\nport = {port}\n{more}\n\n'
            for protocol, transport, port, more in (
                ("mqtt", "tls", self.tlsPort, tls),
                ("mqtt", "quic", self.quicPort, tls),
                ("mqtt", "tcp", self.limitedPort, "max_connections = 1"),
                ("kafka", "tcp", self.kafkaPort, ""),
                ("amqp", "tcp", self.amqpPort, ""),
            )
        )
        extra = '[mqtt]\nsys_interval = 0\n[storage]\nbackend = "segment"\n'
        super().__init__(extra=listeners + extra)

    def start(self) -> Node:
        super().start()
        for port in (self.tlsPort, self.limitedPort, self.kafkaPort, self.amqpPort):
            waitForPort("127.0.0.1", port)
        return self

    def label(self, transport: str, port: int, protocol: str = "mqtt") -> str:
        return f"listener={protocol}/{transport}:{port},protocol={protocol},transport={transport}"


def _freeUdpPort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    certs = generateTestCertificates(tmp_path_factory.mktemp("certs"))
    n = Node(certs).start()
    try:
        yield n
    finally:
        n.stop()


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0) - before.get(key, 0)


def test_mqtt_messages_by_qos_drops_and_queue_gauges(node: Node) -> None:
    before = scrape(node)
    sub = Paho(node.port, "labels-sub")
    parked = Paho(node.port, "labels-parked", clean=False)
    pub = Paho(node.port, "labels-pub")
    try:
        sub.subscribe("lq/#", 2)
        parked.subscribe("lq/#", 1)
        parked.close()  # its session stays: QoS 1 messages queue, QoS 0 ones are dropped
        # The DISCONNECT is handled asynchronously: publish only once the session is offline.
        waitFor(
            lambda: node.get("/api/v1/sessions/labels-parked")["online"] is False,
            "the parked session to go offline",
        )
        for qos, n in ((0, 2), (1, 3), (2, 4)):
            for i in range(n):
                pub.publish(f"lq/{qos}/{i}", b"payload", qos=qos)
        for _ in range(9):
            sub.expect()
        mqtt = "protocol=mqtt,qos="
        after = waitFor(
            lambda: (
                (s := scrape(node))
                and delta(before, s, f"robustmq_messages_sent_total{{{mqtt}2}}") == 4
                and s
            ),
            "the QoS 2 deliveries to be counted",
        )
        for qos, n in ((0, 2), (1, 3), (2, 4)):
            assert delta(before, after, f"robustmq_messages_received_total{{{mqtt}{qos}}}") == n
            assert delta(before, after, f"robustmq_messages_sent_total{{{mqtt}{qos}}}") == n
        # The offline persistent session: QoS 0 dropped, QoS 1 and 2 (granted 1) queued.
        assert delta(before, after, f"robustmq_messages_dropped_total{{{mqtt}0}}") == 2
        assert delta(before, after, f"robustmq_messages_dropped_total{{{mqtt}1}}") == 0
        assert after["robustmq_queued_messages"] - before["robustmq_queued_messages"] == 7
        assert after["robustmq_queued_bytes"] - before["robustmq_queued_bytes"] == 7 * 7
        assert after["robustmq_sessions"] - before["robustmq_sessions"] == 3
        assert after["robustmq_subscriptions"] - before["robustmq_subscriptions"] == 2
        assert delta(before, after, "robustmq_bytes_received_total{protocol=mqtt}") > 9 * 7
        assert delta(before, after, "robustmq_bytes_sent_total{protocol=mqtt}") > 9 * 7
        # The sum over labels is the $SYS total.
        status = node.get("/api/v1/status")["stats"]
        now = scrape(node)
        assert total(now, "robustmq_messages_received_total") == status["messages_received"]
        assert total(now, "robustmq_bytes_sent_total") == status["bytes_sent"]
    finally:
        sub.close()
        pub.close()
    # Reconnecting drains the queue: QoS 1 deliveries, acknowledged by paho.
    parked = Paho(node.port, "labels-parked", clean=False)
    try:
        for _ in range(7):
            parked.expect()
        waitFor(
            lambda: scrape(node)["robustmq_queued_messages"] == before["robustmq_queued_messages"],
            "the parked session's queue to drain",
        )
    finally:
        parked.close()


def test_inflight_gauge_counts_unacknowledged_deliveries(node: Node) -> None:
    """A raw MQTT client that never sends PUBACK leaves deliveries in flight."""
    before = scrape(node)
    raw = socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT)
    pub = Paho(node.port, "inflight-pub")
    try:
        cid = b"inflight-raw"
        connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        raw.sendall(bytes([0x10, len(connect)]) + connect)
        assert raw.recv(4)[:2] == b"\x20\x02"
        topic = b"inflight/t"
        subscribe = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
        raw.sendall(bytes([0x82, len(subscribe)]) + subscribe)
        assert raw.recv(5)[:1] == b"\x90"
        for _ in range(3):
            pub.publish("inflight/t", b"x", qos=1)
        waitFor(
            lambda: (
                scrape(node)["robustmq_inflight_messages"]
                == before["robustmq_inflight_messages"] + 3
            ),
            "three unacknowledged deliveries",
        )
    finally:
        raw.close()
        pub.close()


def test_kafka_and_amqp_messages_and_bytes(node: Node) -> None:
    import pika

    from kafka import KafkaConsumer, KafkaProducer

    before = scrape(node)
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", linger_ms=0)
    for i in range(3):
        producer.send("metrics-topic", f"record-{i}".encode()).get(timeout=TIMEOUT * 2)
    producer.close(timeout=TIMEOUT)
    consumer = KafkaConsumer(
        "metrics-topic",
        bootstrap_servers=f"127.0.0.1:{node.kafkaPort}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT * 2000),
    )
    got = []
    for record in consumer:
        got.append(record.value)
        if len(got) == 3:
            break
    consumer.close()
    assert len(got) == 3

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
    try:
        ch = conn.channel()
        ch.queue_declare("metrics-q")
        for i in range(4):
            ch.basic_publish("", "metrics-q", f"m{i}".encode())
        ch.basic_publish("", "no-such-queue", b"unroutable")
        gets = 0
        deadline = time.monotonic() + TIMEOUT
        while gets < 4 and time.monotonic() < deadline:
            _, _, body = ch.basic_get("metrics-q", auto_ack=True)
            gets += body is not None
        assert gets == 4
    finally:
        conn.close()

    after = waitFor(
        lambda: (
            (s := scrape(node))
            and delta(before, s, "robustmq_messages_received_total{protocol=amqp,qos=}") == 5
            and s
        ),
        "the AMQP publishes to be counted",
    )
    assert delta(before, after, "robustmq_messages_received_total{protocol=kafka,qos=}") == 3
    assert delta(before, after, "robustmq_messages_sent_total{protocol=kafka,qos=}") >= 3
    assert delta(before, after, "robustmq_messages_sent_total{protocol=amqp,qos=}") == 4
    assert delta(before, after, "robustmq_messages_dropped_total{protocol=amqp,qos=}") == 1
    assert "robustmq_messages_dropped_total{protocol=kafka,qos=}" not in after
    for protocol in ("kafka", "amqp"):
        assert delta(before, after, f"robustmq_bytes_received_total{{protocol={protocol}}}") > 0
        assert delta(before, after, f"robustmq_bytes_sent_total{{protocol={protocol}}}") > 0
        listener = node.label(
            "tcp", node.kafkaPort if protocol == "kafka" else node.amqpPort, protocol
        )
        assert delta(before, after, f"robustmq_listener_accepted_total{{{listener}}}") >= 1


def test_storage_latency_histograms_after_persistent_qos1_traffic(node: Node) -> None:
    """A persistent session's QoS 1 deliveries are written to and deleted from the store."""
    before = scrape(node)
    sub = Paho(node.port, "storage-sub", clean=False)
    pub = Paho(node.port, "storage-pub")
    try:
        sub.subscribe("st/#", 1)
        for i in range(5):
            pub.publish(f"st/{i}", b"durable", qos=1, retain=(i == 0))
        for _ in range(5):
            sub.expect()

        def counted() -> dict[str, float] | None:
            s = scrape(node)
            ops = ("upsert", "deleteKey")
            if all(
                delta(before, s, f"robustmq_storage_operation_seconds_count{{operation={op}}}") > 0
                for op in ops
            ):
                return s
            return None

        after = waitFor(counted, "the store writes to be timed")
    finally:
        sub.close()
        pub.close()
    for op in ("append", "read", "upsert", "deleteKey"):
        name = "robustmq_storage_operation_seconds"
        count = after[f"{name}_count{{operation={op}}}"]
        inf = after[f"{name}_bucket{{le=+Inf,operation={op}}}"]
        assert count == inf, op
        assert after[f"{name}_sum{{operation={op}}}"] >= 0
        assert after[f"robustmq_storage_operation_failures_total{{operation={op}}}"] == 0
        buckets = sorted(
            (float(k.split("le=")[1].split(",")[0]), v)
            for k, v in after.items()
            if k.startswith(f"{name}_bucket{{") and f"operation={op}}}" in k
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets), op  # cumulative
    # Five deliveries saved and deleted (plus the session and the retained message).
    assert delta(before, after, f"{name}_count{{operation=upsert}}") >= 5
    # Recovery at start read every durable shard.
    assert after[f"{name}_count{{operation=read}}"] > 0


def test_listener_metrics_name_the_transport(node: Node) -> None:
    before = scrape(node)
    limited = node.label("tcp", node.limitedPort)
    tls = node.label("tls", node.tlsPort)
    quic = node.label("quic", node.quicPort)
    # One connection fills the limited listener; the next two are refused.
    first = Paho(node.limitedPort, "limited-1")
    refusedSockets = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", node.limitedPort), timeout=TIMEOUT)
            refusedSockets.append(s)
            assert s.recv(1) == b""  # closed at once
        # Garbage instead of a TLS ClientHello, twice.
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", node.tlsPort), timeout=TIMEOUT) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
                try:
                    while s.recv(1024):
                        pass
                except OSError:
                    pass
        # Random datagrams on the QUIC port.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for _ in range(3):
                u.sendto(os.urandom(40), ("127.0.0.1", node.quicPort))
        after = waitFor(
            lambda: (
                (s := scrape(node))
                and delta(before, s, f"robustmq_listener_tls_handshake_failures_total{{{tls}}}")
                == 2
                and delta(before, s, f"robustmq_listener_quic_datagrams_ignored_total{{{quic}}}")
                == 3
                and s
            ),
            "the TLS failures and QUIC datagrams to be counted",
        )
        assert after[f"robustmq_listener_sockets{{{limited}}}"] == 1
        assert delta(before, after, f"robustmq_listener_refused_total{{{limited}}}") == 2
        assert delta(before, after, f"robustmq_listener_accepted_total{{{limited}}}") == 1
        assert delta(before, after, f"robustmq_listener_accepted_total{{{tls}}}") == 2
        assert after[f"robustmq_listener_quic_datagrams_dropped_total{{{quic}}}"] == 0
        assert after[f"robustmq_listener_sockets{{{quic}}}"] == 0
        # Only tls/wss listeners have handshake counters, only quic ones datagram counters.
        assert f"robustmq_listener_tls_handshake_failures_total{{{limited}}}" not in after
        assert f"robustmq_listener_quic_datagrams_ignored_total{{{tls}}}" not in after
    finally:
        first.close()
        for s in refusedSockets:
            s.close()
