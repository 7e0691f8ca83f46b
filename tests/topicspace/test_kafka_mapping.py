"""MQTT ↔ Kafka through [[mappings]], with real clients (docs/topic-space.md)."""

from __future__ import annotations

import json
import subprocess
import uuid

from topicspacenode import TIMEOUT, TopicSpaceNode

from robustmq.testing.mosquitto import MosquittoSub


def _kcatConsume(node: TopicSpaceNode, topic: str, count: int) -> list[dict]:
    """Read C{count} records of C{topic} from the beginning with kcat, as JSON envelopes."""
    out = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            node.bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-c",
            str(count),
            "-e",
            "-J",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_mosquittoPubReachesKcatConsumerKeyedByTopic(node: TopicSpaceNode) -> None:
    """mosquitto_pub on sensors/... → the Kafka topic "sensors", key = the MQTT topic."""
    room = uuid.uuid4().hex[:8]
    for i in range(3):
        node.mosquittoPub(f"sensors/{room}/temp", f"t{i}", "-q", "1")
    node.mosquittoPub(f"elsewhere/{room}", "not mapped", "-q", "1")
    records = [r for r in _kcatConsume(node, "sensors", 1000) if room in (r.get("key") or "")]
    assert [r["payload"] for r in records] == ["t0", "t1", "t2"]
    assert {r["key"] for r in records} == {f"sensors/{room}/temp"}
    assert len({r["partition"] for r in records}) == 1  # one MQTT topic, one partition


def _kcatProduce(node: TopicSpaceNode, topic: str, lines: list[str], *args: str) -> None:
    """Produce C{lines} ("key|value" with -K'|') with kcat, acks=all."""
    subprocess.run(
        ["kcat", "-P", "-b", node.bootstrap, "-t", topic, "-K", "|", "-X", "acks=all", *args],
        input="\n".join(lines) + "\n",
        text=True,
        timeout=TIMEOUT,
        check=True,
    )


def test_kcatProduceReachesMosquittoSub(node: TopicSpaceNode) -> None:
    """A record keyed by an MQTT topic under sensors/# reaches mosquitto_sub under that name;
    records keyed otherwise stay in Kafka."""
    room = uuid.uuid4().hex[:8]
    sub = MosquittoSub(node.port, "mqttv311", ["-t", f"sensors/{room}/#", "-q", "1", "-C", "2"])
    try:
        sub.waitSubscribed()
        _kcatProduce(
            node,
            "sensors",
            [f"sensors/{room}/hall|21.5", f"other/{room}|kafka only", f"sensors/{room}/door|open"],
        )
        lines, flags = sub.finish(TIMEOUT)
    finally:
        sub.kill()
    # Different keys land in different partitions: no order between them.
    assert sorted(lines) == [f"sensors/{room}/door open", f"sensors/{room}/hall 21.5"]
    assert [q for _, _, q, _ in flags] == [1, 1]


def test_mqttToKafkaOnlyMappingPublishesNothingBack(node: TopicSpaceNode) -> None:
    """direction = "mqtt_to_kafka": records produced to "positions" stay in Kafka, while MQTT
    publishes under fleet/+/position are appended to it."""
    truck = uuid.uuid4().hex[:8]
    sub = MosquittoSub(node.port, "mqttv311", ["-t", f"fleet/{truck}/position", "-q", "1"])
    try:
        sub.waitSubscribed()
        _kcatProduce(node, "positions", [f"fleet/{truck}/position|from kafka"])
        node.mosquittoPub(f"fleet/{truck}/position", "from mqtt", "-q", "1")
        sub.waitFor(f"fleet/{truck}/position from mqtt")
        assert not any("from kafka" in line for line in sub.seen)
    finally:
        sub.kill()
    records = _kcatConsume(node, "positions", 2)
    assert sorted(r["payload"] for r in records) == ["from kafka", "from mqtt"]


def test_mappingCountersInMetrics(node: TopicSpaceNode) -> None:
    """Appended records and Kafka-only records are counted (GET /metrics)."""
    room = uuid.uuid4().hex[:8]
    node.mosquittoPub(f"sensors/{room}/m", "x", "-q", "1")
    _kcatProduce(node, "sensors", [f"not-a-topic-{room}|kafka only"])
    text = node.metrics()
    appended = [
        line
        for line in text.splitlines()
        if line.startswith(
            'robustmq_mapping_records_total{kafka_topic="sensors",outcome="appended"}'
        )
    ]
    assert appended and float(appended[0].split()[-1]) >= 1, text[-2000:]
    kafkaOnly = [
        line
        for line in text.splitlines()
        if line.startswith("robustmq_mapping_kafka_only_records_total ")
    ]
    assert kafkaOnly and float(kafkaOnly[0].split()[-1]) >= 1


def test_kafkaBurstReachesLiveQos1SubscriberWhole(node: TopicSpaceNode) -> None:
    """5,000 records produced at once reach a live QoS 1 subscriber, every one, in order:
    the pump waits while the subscriber's queue is full instead of overflowing it."""
    import threading

    from robustmq.testing.paho import PahoClient

    room = uuid.uuid4().hex[:8]
    sub = PahoClient(node.port, f"burst-{room}")
    sub.connect()
    sub.subscribe(f"sensors/{room}/burst", 1)
    lines = [f"sensors/{room}/burst|{i}" for i in range(5000)]
    producer = threading.Thread(target=_kcatProduce, args=(node, "sensors", lines))
    producer.start()
    try:
        got = [m.payload.decode() for m in sub.expectMany(5000, timeout=4 * TIMEOUT)]
    finally:
        producer.join(TIMEOUT)
        sub.stop()
    assert got == [str(i) for i in range(5000)]


def test_transactionalRecordsReachMqttOnlyWhenCommitted(node: TopicSpaceNode) -> None:
    import confluent_kafka

    from robustmq.testing.paho import PahoClient

    room = uuid.uuid4().hex[:8]
    sub = PahoClient(node.port, f"txn-{room}")
    sub.connect()
    sub.subscribe(f"sensors/{room}/#", 1)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": node.bootstrap, "transactional.id": f"t-{room}"}
    )
    try:
        producer.init_transactions(TIMEOUT)
        producer.begin_transaction()
        producer.produce("sensors", b"aborted", key=f"sensors/{room}/a".encode())
        producer.abort_transaction(TIMEOUT)
        producer.begin_transaction()
        producer.produce("sensors", b"committed", key=f"sensors/{room}/c".encode())
        producer.commit_transaction(TIMEOUT)
        message = sub.expect(TIMEOUT)
        assert (message.topic, message.payload) == (f"sensors/{room}/c", b"committed")
        sub.expectNothing(0.5)
    finally:
        sub.stop()
