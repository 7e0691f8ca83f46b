"""The admin API's Kafka and AMQP endpoints, after real traffic from kafka-python and pika.

One node (auth off) with MQTT, Kafka and AMQP listeners serves the module; each
test uses its own topics, groups and queues.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest
from adminhelpers import TIMEOUT, AdminNode, ProtocolNode, waitFor


@pytest.fixture(scope="module")
def node() -> Iterator[ProtocolNode]:
    n = ProtocolNode().start()
    try:
        yield n
    finally:
        n.stop()


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _produce(node: ProtocolNode, topic: str, count: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from kafka import KafkaProducer

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}")
    try:
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=2,
                    replication_factor=1,
                    topic_configs={"retention.ms": "3600000"},
                )
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", linger_ms=0)
    try:
        for i in range(count):
            producer.send(topic, f"record {i}".encode(), partition=i % 2)
        producer.flush(TIMEOUT)
    finally:
        producer.close()


def test_kafka_topics_partitions_offsets_sizes_and_configs(node: ProtocolNode) -> None:
    topic = _uniq("ops-topic")
    _produce(node, topic, 10)

    listed = node.get("/api/v1/kafka/topics?topic=" + topic)
    assert [t["name"] for t in listed["data"]] == [topic]
    one = node.get(f"/api/v1/kafka/topics/{topic}")
    assert one["partitions"] == 2
    assert one["messages"] == 10
    assert one["bytes"] > 0
    assert one["configs"]["retention.ms"] == "3600000"
    assert one["overrides"] == ["retention.ms"]
    parts = one["partition_details"]
    assert [(p["partition"], p["log_start_offset"], p["log_end_offset"]) for p in parts] == [
        (0, 0, 5),
        (1, 0, 5),
    ]
    assert all(p["bytes"] > 0 for p in parts)

    status, body = node.json("GET", "/api/v1/kafka/topics/no-such-topic")
    assert status == 404 and "no-such-topic" in body["error"]["message"]


def test_kafka_group_members_committed_offsets_and_lag(node: ProtocolNode) -> None:
    from kafka import KafkaConsumer, TopicPartition

    topic, group = _uniq("ops-lag"), _uniq("ops-group")
    _produce(node, topic, 10)
    consumer = KafkaConsumer(
        bootstrap_servers=f"127.0.0.1:{node.kafkaPort}",
        group_id=group,
        client_id="ops-consumer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        consumer.subscribe([topic])
        got = 0
        deadline = time.monotonic() + 3 * TIMEOUT
        while got < 10 and time.monotonic() < deadline:
            got += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
        assert got == 10
        # Commit 3 of the 5 records of partition 0 and all of partition 1: lag 2.
        from kafka.structs import OffsetAndMetadata

        consumer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1),
                TopicPartition(topic, 1): OffsetAndMetadata(5, "", -1),
            }
        )
        g = node.get(f"/api/v1/kafka/groups/{group}")
        assert g["state"] == "Stable"
        assert g["protocol_type"] == "consumer"
        assert g["protocol"]
        assert [m["client_id"] for m in g["members"]] == ["ops-consumer"]
        assigned = g["members"][0]["assignment"]
        assert assigned == [{"topic": topic, "partitions": [0, 1]}]
        rows = {(o["topic"], o["partition"]): o for o in g["offsets"]}
        assert rows[(topic, 0)]["committed_offset"] == 3
        assert rows[(topic, 0)]["lag"] == 2
        assert rows[(topic, 1)]["lag"] == 0
        assert g["lag"] == 2
        listed = node.get("/api/v1/kafka/groups?group=" + group)
        assert [x["group_id"] for x in listed["data"]] == [group]

        status, body = node.json("DELETE", f"/api/v1/kafka/groups/{group}")
        assert status == 409 and "stop its consumers" in body["error"]["message"]
    finally:
        consumer.close()
    waitFor(
        lambda: node.get(f"/api/v1/kafka/groups/{group}")["state"] == "Empty",
        "the group to become empty",
    )
    status, _ = node.json("DELETE", f"/api/v1/kafka/groups/{group}")
    assert status == 200
    status, _ = node.json("DELETE", f"/api/v1/kafka/topics/{topic}")
    assert status == 200
    status, _ = node.json("GET", f"/api/v1/kafka/topics/{topic}")
    assert status == 404


def test_amqp_queues_exchanges_bindings_connections_and_purge(node: ProtocolNode) -> None:
    queue, exchange = _uniq("ops-q"), _uniq("ops-x")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "topic", durable=False)
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 100})
        ch.queue_bind(queue, exchange, "ops.#")
        for i in range(5):
            ch.basic_publish(exchange, "ops.a", f"m{i}".encode())
        # Two deliveries left unacknowledged by a consumer with prefetch 2.
        ch.basic_qos(prefetch_count=2)
        held: list[int] = []
        ch.basic_consume(queue, lambda c, m, p, b: held.append(m.delivery_tag))
        deadline = time.monotonic() + TIMEOUT
        while len(held) < 2 and time.monotonic() < deadline:
            conn.process_data_events(0.1)
        assert len(held) == 2

        vq = node.get(f"/api/v1/amqp/queues/%2F/{queue}")
        assert vq["messages_ready"] == 3
        assert vq["messages_unacknowledged"] == 2
        assert vq["messages"] == 5
        assert vq["consumers"] == 1
        assert vq["durable"] is True
        assert vq["arguments"] == {"x-max-length": 100}
        assert vq["published"] == 5 and vq["delivered"] == 2
        listed = node.get(f"/api/v1/amqp/queues?name={queue}")
        assert [q["name"] for q in listed["data"]] == [queue]

        exchanges = node.get("/api/v1/amqp/exchanges?vhost=/&limit=1000")["data"]
        mine = [e for e in exchanges if e["name"] == exchange]
        assert mine and mine[0]["type"] == "topic" and mine[0]["bindings"] == 1
        assert any(e["name"] == "amq.topic" for e in exchanges)

        bindings = node.get("/api/v1/amqp/bindings?limit=1000")["data"]
        assert {
            "vhost": "/",
            "source": exchange,
            "destination": queue,
            "destination_type": "queue",
            "routing_key": "ops.#",
            "arguments": {},
        } in bindings
        assert any(b["source"] == "" and b["destination"] == queue for b in bindings)
        # Deleted through the API (RabbitMQ's management API allows it): no longer routed.
        path = (
            f"/api/v1/amqp/bindings/%2F?source={exchange}&destination={queue}&routing_key=ops.%23"
        )
        status, body = node.json("DELETE", path)
        assert status == 200 and body["deleted"] == 1, body
        bindings = node.get("/api/v1/amqp/bindings?limit=1000")["data"]
        assert not any(b["source"] == exchange for b in bindings)
        status, _ = node.json("DELETE", path)
        assert status == 404
        ch.queue_bind(queue, exchange, "ops.#")  # back, for the rest of the test

        vhosts = node.get("/api/v1/amqp/vhosts")["data"]
        root = next(v for v in vhosts if v["name"] == "/")
        assert root["connections"] >= 1 and root["queues"] >= 1

        conns = node.get("/api/v1/amqp/connections")["data"]
        assert any(c["user"] == "guest" and c["channels"] == 1 for c in conns)
        channels = node.get("/api/v1/amqp/channels")["data"]
        assert any(c["consumers"] == 1 and c["messages_unacknowledged"] == 2 for c in channels)

        status, body = node.json("DELETE", f"/api/v1/amqp/queues/%2F/{queue}/contents")
        assert status == 200 and body["messages"] == 3
        assert node.get(f"/api/v1/amqp/queues/%2F/{queue}")["messages_ready"] == 0

        status, body = node.json("DELETE", f"/api/v1/amqp/queues/%2F/{queue}?if_unused=true")
        assert status == 409 and "in use" in body["error"]["message"]
    finally:
        conn.close()
    status, _ = node.json("DELETE", f"/api/v1/amqp/exchanges/%2F/{exchange}")
    assert status == 200
    status, _ = node.json("DELETE", f"/api/v1/amqp/queues/%2F/{queue}")
    assert status == 200
    status, _ = node.json("GET", f"/api/v1/amqp/queues/%2F/{quote(queue)}")
    assert status == 404
    status, body = node.json("DELETE", "/api/v1/amqp/exchanges/%2F/amq.topic")
    assert status == 409 and "not permitted" in body["error"]["message"]


def test_status_counts_connections_per_protocol(node: ProtocolNode) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
    try:
        st = waitFor(
            lambda: (
                (s := node.get("/api/v1/status"))["stats"]["connections_by_protocol"]["amqp"] >= 1
                and s
            ),
            "the AMQP connection to be counted",
        )
        assert st["protocols"] == ["amqp", "kafka", "mqtt"]
        assert st["stats"]["connections_by_protocol"]["kafka"] >= 0
    finally:
        conn.close()


def test_node_without_kafka_or_amqp_answers_404_saying_so() -> None:
    plain = AdminNode().start()
    try:
        status, body = plain.json("GET", "/api/v1/kafka/topics")
        assert status == 404
        assert body["error"]["message"] == (
            'this node serves no Kafka (no [[listeners]] with protocol = "kafka")'
        )
        status, body = plain.json("GET", "/api/v1/amqp/queues")
        assert status == 404 and "serves no AMQP" in body["error"]["message"]
    finally:
        plain.stop()
