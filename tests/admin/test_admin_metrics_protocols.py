"""/metrics for Kafka partitions and groups and AMQP queues, with the label bound
C{[http] metrics_max_objects}, and drops by reason; after real kafka-python and
pika traffic on a node of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pika
import pytest
from adminhelpers import TIMEOUT, ProtocolNode, waitFor
from test_admin_metrics import scrape


@pytest.fixture(scope="module")
def node() -> Iterator[ProtocolNode]:
    n = ProtocolNode(http="metrics_max_objects = 2").start()
    try:
        yield n
    finally:
        n.stop()


def test_kafka_partition_offsets_bytes_and_group_lag(node: ProtocolNode) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}")
    try:
        admin.create_topics(
            [
                NewTopic("m-a", num_partitions=1, replication_factor=1),
                NewTopic("m-b", num_partitions=2, replication_factor=1),
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{node.kafkaPort}", linger_ms=0)
    try:
        for i in range(4):
            producer.send("m-a", f"a{i}".encode())
        producer.flush(TIMEOUT)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=f"127.0.0.1:{node.kafkaPort}",
        group_id="m-group",
        enable_auto_commit=False,
    )
    try:
        consumer.commit({TopicPartition("m-a", 0): OffsetAndMetadata(1, "", -1)})
    finally:
        consumer.close()

    m = scrape(node)
    assert m["robustmq_kafka_partition_log_start_offset{partition=0,topic=m-a}"] == 0
    assert m["robustmq_kafka_partition_log_end_offset{partition=0,topic=m-a}"] == 4
    assert m["robustmq_kafka_partition_bytes{partition=0,topic=m-a}"] > 0
    assert m["robustmq_kafka_group_committed_offset{group=m-group,partition=0,topic=m-a}"] == 1
    assert m["robustmq_kafka_group_lag{group=m-group,partition=0,topic=m-a}"] == 3
    # Three partitions, two series: the bound holds and says what it left out.
    series = [k for k in m if k.startswith("robustmq_kafka_partition_log_end_offset{")]
    assert len(series) == 2
    assert m["robustmq_metrics_omitted_objects{kind=kafka_partition}"] == 1


def test_amqp_queue_depth_unacked_consumers_rates_and_drop_reasons(node: ProtocolNode) -> None:
    before = scrape(node)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
    try:
        ch = conn.channel()
        ch.queue_declare("m-q1", arguments={"x-max-length": 3})
        ch.queue_declare("m-q2")
        ch.queue_declare("m-q3")
        for i in range(5):
            ch.basic_publish("", "m-q1", f"m{i}".encode())
        ch.basic_publish("", "no-such-queue", b"unroutable")
        ch.basic_qos(prefetch_count=1)
        held: list[int] = []
        ch.basic_consume("m-q1", lambda c, m, p, b: held.append(m.delivery_tag))
        deadline = time.monotonic() + TIMEOUT
        while not held and time.monotonic() < deadline:
            conn.process_data_events(0.1)
        assert held
        m = waitFor(
            lambda: (
                (s := scrape(node))
                and s.get("robustmq_amqp_queue_messages_unacknowledged{queue=m-q1,vhost=/}") == 1
                and s
            ),
            "the unacknowledged delivery to show",
        )
        assert m["robustmq_amqp_queue_messages_ready{queue=m-q1,vhost=/}"] == 2
        assert m["robustmq_amqp_queue_consumers{queue=m-q1,vhost=/}"] == 1
        assert m["robustmq_amqp_queue_published_total{queue=m-q1,vhost=/}"] == 5
        assert m["robustmq_amqp_queue_delivered_total{queue=m-q1,vhost=/}"] == 1
        assert m["robustmq_amqp_queue_dropped_total{queue=m-q1,vhost=/}"] == 2
        assert m["robustmq_metrics_omitted_objects{kind=amqp_queue}"] == 1
        key = "robustmq_messages_dropped_by_reason_total{{protocol=amqp,reason={}}}"
        assert m[key.format("overflow")] - before.get(key.format("overflow"), 0) == 2
        assert m[key.format("unroutable")] - before.get(key.format("unroutable"), 0) == 1
    finally:
        conn.close()
