"""The cost of the cross-protocol paths of the topic space, beside MQTT → MQTT, in one run.

Usage: .venv/bin/python bench/topicspace.py [--count 200000] [--size 64] [--qos 1]

Starts one node (segment store, sync "interval") with MQTT, Kafka and AMQP
listeners on free loopback ports and the mapping ``bench/#`` ↔ Kafka topic
``bench`` (docs/topic-space.md), then measures, each with ``--count``
messages of ``--size`` bytes published by ``robustmq bench`` (one MQTT
publisher, QoS ``--qos``):

- MQTT → MQTT: ``robustmq bench throughput`` on a topic nothing else maps;
- MQTT → Kafka: the publisher on ``bench/t``; done when the Kafka topic's
  end offset has grown by ``--count`` (every record stored);
- MQTT → AMQP: the publisher on ``amqp/t`` with a queue bound to
  ``amq.topic`` ``amqp.#`` and a pika consumer counting deliveries;
- Kafka → MQTT: confluent-kafka produces records keyed ``bench/k`` (acks=1,
  linger 5 ms); ``robustmq bench sub`` counts them on ``bench/k``.

Prints msg/s and MB/s (payload bytes) per path and the ratio to MQTT → MQTT.
Every load is bounded by ``--count`` and ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "topicspace"))


def _bench(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "robustmq.bench", *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _endOffset(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        parts = metadata.topics[topic].partitions if topic in metadata.topics else {}
        total = 0
        for p in parts:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += max(high, 0)
        return total
    finally:
        consumer.close()


def _load(mode: str, node, topic: str, count: int, size: int, qos: int, seconds: float) -> dict:
    """One ``robustmq bench <mode>`` run: one MQTT publisher of C{count} messages on C{topic}."""
    return _bench(
        mode,
        "--port",
        str(node.port),
        "--topic",
        topic,
        "--qos",
        str(qos),
        "--size",
        str(size),
        "--count",
        str(count),
        "--duration",
        str(seconds),
    )


def mqttToMqtt(node, count: int, size: int, qos: int, seconds: float) -> float:
    result = _load("throughput", node, "plain/t", count, size, qos, seconds)
    assert result.get("lost", 0) == 0 or qos == 0, result
    return float(result["msgs_per_sec"])


def mqttToKafka(node, count: int, size: int, qos: int, seconds: float) -> float:
    before = _endOffset(node.bootstrap, "bench")
    start = time.perf_counter()
    _load("pub", node, "bench/t", count, size, qos, seconds)
    deadline = start + seconds
    while _endOffset(node.bootstrap, "bench") - before < count:
        if time.perf_counter() > deadline:
            raise SystemExit("MQTT -> Kafka: not every record stored before the deadline")
        time.sleep(0.05)
    return count / (time.perf_counter() - start)


def mqttToAmqp(node, count: int, size: int, qos: int, seconds: float) -> float:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(node.amqpUrl))
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "amq.topic", "amqp.#")
    ch.basic_qos(prefetch_count=1000)
    got = [0]

    def onMessage(channel, method, props, body) -> None:
        got[0] += 1
        if got[0] % 500 == 0 or got[0] >= count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if got[0] >= count:
            channel.stop_consuming()

    ch.basic_consume(queue, onMessage)
    start = time.perf_counter()
    publisher = threading.Thread(
        target=_load,
        args=("pub", node, "amqp/t", count, size, qos, seconds),
    )
    publisher.start()
    conn.call_later(seconds, ch.stop_consuming)
    ch.start_consuming()
    elapsed = time.perf_counter() - start
    publisher.join(seconds)
    conn.close()
    if got[0] < count:
        raise SystemExit(f"MQTT -> AMQP: {got[0]} of {count} delivered before the deadline")
    return count / elapsed


def kafkaToMqtt(node, count: int, size: int, seconds: float) -> float:
    from confluent_kafka import Producer

    results: dict = {}

    def subscribe() -> None:
        results["sub"] = _bench(
            "sub",
            "--port",
            str(node.port),
            "--topic",
            "bench/k",
            "--qos",
            "1",
            "--count",
            str(count),
            "--duration",
            str(seconds),
            "--idle",
            "5",
        )

    sub = threading.Thread(target=subscribe)
    sub.start()
    time.sleep(1.0)  # the subscriber's SUBACK (bench sub prints nothing before it is done)
    producer = Producer({"bootstrap.servers": node.bootstrap, "acks": "1", "linger.ms": 5})
    value = b"x" * size
    start = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce("bench", value, key=b"bench/k")
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(seconds)
    sub.join(seconds + 10)
    received = results.get("sub", {}).get("received", 0)
    elapsed = time.perf_counter() - start
    if received < count:
        raise SystemExit(f"Kafka -> MQTT: {received} of {count} received")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()

    from topicspacenode import TopicSpaceNode

    node = TopicSpaceNode('[[mappings]]\nmqtt = "bench/#"\nkafka = "bench"\n', logLevel="info")
    node.start()
    rows = []
    try:
        base = mqttToMqtt(node, args.count, args.size, args.qos, args.seconds)
        rows.append(("MQTT -> MQTT", base))
        rows.append(
            ("MQTT -> Kafka", mqttToKafka(node, args.count, args.size, args.qos, args.seconds))
        )
        rows.append(
            ("MQTT -> AMQP queue", mqttToAmqp(node, args.count, args.size, args.qos, args.seconds))
        )
        rows.append(("Kafka -> MQTT", kafkaToMqtt(node, args.count, args.size, args.seconds)))
    finally:
        node.cleanup()
    print(
        f"| path ({args.count} x {args.size} B, MQTT QoS {args.qos}) | msg/s | MB/s | vs MQTT -> MQTT |"
    )
    print("|---|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate * args.size / 1e6:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
