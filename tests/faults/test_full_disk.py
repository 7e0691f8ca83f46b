"""A full disk under a live node (items 3 and 8 of the fault review), on a small tmpfs.

Found before: Kafka producers got UNKNOWN (-1), tracebacks flooded the log,
C{/health/ready} stayed 200, and nothing recovered until a restart.  Now each
protocol answers with its own error (Kafka KAFKA_STORAGE_ERROR, MQTT 5 PUBACK
0x97, MQTT 3.1.1 a closed connection, AMQP basic.nack), the log says it once,
readiness is 503 with the reason, and writes resume by themselves once space
is freed; nothing acknowledged is lost.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pika
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from faultnode import TIMEOUT, FaultNode, tracebacks

from robustmq.testing.rawclient import RawClient
from robustmq.testing.smalldisk import SmallDisk

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def disk() -> Iterator[SmallDisk]:
    d = SmallDisk(32 << 20).mount()
    try:
        yield d
    finally:
        d.unmount()


def _kafkaProduce(bootstrap: str, topic: str, values: list[bytes]) -> list[KafkaError | int]:
    """Produce each value (no retries): its offset, or the delivery error."""
    results: list[KafkaError | int] = []
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "message.send.max.retries": 0,
            "message.timeout.ms": 10000,
            "enable.idempotence": False,
            "linger.ms": 0,
        }
    )
    for v in values:
        p.produce(
            topic,
            value=v,
            on_delivery=lambda err, msg: results.append(err if err else msg.offset()),
        )
    p.flush(TIMEOUT)
    return results


class Mqtt5Publisher:
    """A paho MQTT 5 client that records each PUBACK's reason code."""

    def __init__(self, port: int, clientId: str) -> None:
        self.acks: dict[int, int] = {}
        self.done = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, clientId, protocol=mqtt.MQTTv5)
        c.on_publish = self._published
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _published(
        self, client: object, userdata: object, mid: int, rc: object, props: object
    ) -> None:
        with self.done:
            self.acks[mid] = int(getattr(rc, "value", rc))  # type: ignore[arg-type]
            self.done.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, 1)
        with self.done:
            assert self.done.wait_for(lambda: info.mid in self.acks, TIMEOUT), "no PUBACK"
            return self.acks[info.mid]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_fullDiskRefusesCleanlyAndRecoversByItself(disk: SmallDisk) -> None:
    uniq = uuid.uuid4().hex[:8]
    node = FaultNode(
        'min_free_bytes = 2097152\nsync = "interval"', dataDir=os.path.join(disk.path, "data")
    )
    node.start()
    try:
        topic = f"full-{uniq}"
        assert _kafkaProduce(node.bootstrap, topic, [b"before"]) == [0]
        # An offline persistent subscriber: every QoS 1 publish to it is a durable write.
        with RawClient(node.port) as sub:
            sub.connect(f"sub-{uniq}", cleanSession=False)
            sub.subscribe([(f"f/{uniq}", 1)])
            sub.disconnect()
        pub5 = Mqtt5Publisher(node.port, f"pub5-{uniq}")
        assert pub5.publish(f"f/{uniq}", b"m-before") == 0
        conn = pika.BlockingConnection(pika.URLParameters(node.amqpURL))
        ch = conn.channel()
        queue = f"q-{uniq}"
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)
        ch.basic_publish("", queue, b"a-before", persistent)
        assert node.get("/health/ready")[0] == 200

        logStart = len(node.output())
        disk.fill(leave=16 * 1024)
        big = b"x" * 300_000
        # Kafka: the protocol's own retriable error, not UNKNOWN (-1)
        [err] = _kafkaProduce(node.bootstrap, topic, [big])
        assert isinstance(err, KafkaError) and err.code() == KafkaError.KAFKA_STORAGE_ERROR, err
        # MQTT 5: PUBACK 0x97 Quota exceeded
        assert pub5.publish(f"f/{uniq}", big) == 0x97
        # MQTT 3.1.1: no negative PUBACK exists; the connection closes unacknowledged
        with RawClient(node.port) as p3:
            p3.connect(f"pub3-{uniq}")
            p3.publish(f"f/{uniq}", big, 1, complete=False)
            packets = p3.waitClosed()
            assert not [p for p in packets if type(p).__name__ == "Puback"], packets
        # AMQP: basic.nack for the confirm
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", queue, big, persistent)
        status, body = node.get("/health/ready")
        assert status == 503 and body["checks"]["storage"] is False, body
        assert any("storage full" in r for r in body["reasons"]), body
        # more refused writes: still one log line
        for _ in range(20):
            pub5.publish(f"f/{uniq}", big)
        log = node.logSince(logStart)
        assert len([ln for ln in log.splitlines() if "storage full under" in ln]) == 1, log[-4000:]
        assert not tracebacks(log), log[-4000:]
        assert len(log) < 200_000, f"{len(log)} bytes of log"

        disk.release()
        node.waitFor(lambda: node.get("/health/ready")[0] == 200, "writes to resume", 15)
        assert "writes resume" in node.logSince(logStart)
        after = _kafkaProduce(node.bootstrap, topic, [b"after"])
        assert after == [1], after
        assert pub5.publish(f"f/{uniq}", b"m-after") == 0
        ch.basic_publish("", queue, b"a-after", persistent)
        pub5.stop()
        conn.close()

        # Everything acknowledged is there after a restart, nothing refused is.
        node.kill()
        node.start()
        c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": f"g-{uniq}"})
        c.assign([TopicPartition(topic, 0, 0)])
        values = []
        deadline = time.monotonic() + TIMEOUT
        while len(values) < 2 and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                values.append(msg.value())
        c.close()
        assert values == [b"before", b"after"]
        with RawClient(node.port) as sub:
            sub.connect(f"sub-{uniq}", cleanSession=False)
            got = []
            while True:
                try:
                    msg = sub.expectPublish(timeout=2.0)
                except TimeoutError:
                    break
                got.append(msg.payload)
                sub.ack(msg)
        assert got == [b"m-before", b"m-after"], [g[:10] for g in got]
        conn = pika.BlockingConnection(pika.URLParameters(node.amqpURL))
        ch = conn.channel()
        bodies = []
        while True:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        conn.close()
        assert bodies == [b"a-before", b"a-after"]
    finally:
        node.cleanup()
