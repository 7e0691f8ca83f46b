"""A node on the s3 store is stateless: SIGKILL it, delete its directory, and a new node
on the same bucket delivers everything that was acknowledged (MQTT, Kafka, AMQP).

Real `twistd robustmq` processes, a real SeaweedFS, paho-mqtt, confluent-kafka and pika.
"""

from __future__ import annotations

import json
import queue
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from robustmq.storage._s3.objects import HEADER_SIZE
from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.testing.seaweedfs import SeaweedFSProcess

TIMEOUT = 20.0


class S3Node(BrokerProcess):
    """A node with MQTT, Kafka and AMQP listeners and C{[storage] backend = "s3"}."""

    def __init__(self, weed: SeaweedFSProcess, prefix: str, workdir: Path) -> None:
        self.kafkaPort = freePort()
        self.amqpPort = freePort()
        self.httpPort = freePort()
        extra = f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {self.httpPort}

[storage]
backend = "s3"
s3_endpoint = "{weed.endpoint}"
s3_bucket = "restart"
s3_prefix = "{prefix}"
s3_flush_interval_ms = 5

[[listeners]]
protocol = "kafka"
transport = "tcp"
bind = "127.0.0.1"
port = {self.kafkaPort}

[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {self.amqpPort}

[kafka]
group_initial_rebalance_delay_ms = 0
"""
        super().__init__(extraConfig=extra, workdir=workdir)

    def start(self, timeout: float = 30.0) -> S3Node:
        super().start(timeout)
        waitForPort("127.0.0.1", self.kafkaPort, timeout)
        waitForPort("127.0.0.1", self.amqpPort, timeout)
        return self

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

    def api(self, method: str, path: str, body: object = None) -> object:
        """Call the admin API (no auth on loopback in this config)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.httpPort}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
            return json.loads(r.read())


def _mqtt(port: int, clientId: str, clean: bool) -> tuple[mqtt.Client, queue.Queue]:
    messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected: queue.Queue[int] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=clientId, clean_session=clean)
    c.on_message = lambda cl, u, m: messages.put(m)
    c.on_connect = lambda cl, u, flags, rc, p: connected.put(rc)
    c.on_subscribe = lambda *a: messages.put("subscribed")
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.get(timeout=TIMEOUT) == 0
    return c, messages


def _drain(messages: queue.Queue, want: int) -> list[mqtt.MQTTMessage]:
    out = []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(messages.get(timeout=0.2))
        except queue.Empty:
            pass
    return out


def _waitForRecords(weed: SeaweedFSProcess, prefix: str, shard: str) -> None:
    """Block until the bucket holds a log object with records for C{shard}."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=weed.endpoint, region_name="us-east-1"
    )
    root = f"{prefix}s/n{shard.encode().hex()}/"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        listed = client.list_objects_v2(Bucket="restart", Prefix=root).get("Contents", [])
        if any(o["Size"] > HEADER_SIZE and not o["Key"].endswith("/config") for o in listed):
            return
        time.sleep(0.05)
    raise AssertionError(f"no records of {shard} stored within {TIMEOUT}s")


def test_statelessRestart(weed: SeaweedFSProcess, tmp_path: Path) -> None:
    prefix = f"restart-{uuid.uuid4().hex[:8]}/"
    first = S3Node(weed, prefix, tmp_path / "first").start()
    try:
        # MQTT: a persistent QoS 1 subscription that is offline, then QoS 1 publishes + retained
        sub, acks = _mqtt(first.port, "s3-persistent", clean=False)
        sub.subscribe("s3/offline/#", 1)
        assert acks.get(timeout=TIMEOUT) == "subscribed"
        sub.disconnect()
        sub.loop_stop()
        pub, _ = _mqtt(first.port, "s3-pub", clean=True)
        for i in range(20):
            pub.publish(f"s3/offline/{i}", b"m%d" % i, qos=1).wait_for_publish(TIMEOUT)
        pub.publish("s3/retained", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
        pub.disconnect()
        pub.loop_stop()

        # Kafka: an idempotent acks=all producer, then a group commits offset 10
        topic = f"s3-{uuid.uuid4().hex[:8]}"
        delivered: list[int] = []
        errors: list[object] = []
        p = Producer(
            {"bootstrap.servers": first.bootstrap, "enable.idempotence": True, "acks": "all"}
        )

        def report(err: object, msg: object) -> None:
            (errors if err else delivered).append(err or msg.offset())  # type: ignore[attr-defined]

        for i in range(50):
            p.produce(topic, value=b"k%d" % i, on_delivery=report)
        assert p.flush(TIMEOUT) == 0
        assert errors == [] and sorted(delivered) == list(range(50))
        del p  # no reconnect attempts to the node after it is killed
        group = Consumer(
            {
                "bootstrap.servers": first.bootstrap,
                "group.id": "s3-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        group.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
        group.close()

        # AMQP: publisher confirms into a durable queue
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", first.amqpPort))
        ch = conn.channel()
        ch.queue_declare("s3-durable", durable=True)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish(
                "", "s3-durable", b"a%d" % i, pika.BasicProperties(delivery_mode=2)
            )  # raises unless confirmed
        conn.close()

        # a user created at runtime lives in the bucket too
        first.api("POST", "/api/v1/users", {"username": "alice", "password": "s3cret-pw"})
        # the admin API answers before the record is stored: wait for its object
        _waitForRecords(weed, prefix, "robustmq/security")
    finally:
        first.kill()
    # (with the s3 store the node wrote nothing there at all)
    shutil.rmtree(first.dataDir, ignore_errors=True)
    assert not Path(first.dataDir).exists()

    second = S3Node(weed, prefix, tmp_path / "second").start()
    try:
        assert "opened s3 store" in second.output()
        sub, messages = _mqtt(second.port, "s3-persistent", clean=False)
        got = _drain(messages, 20)
        sub.disconnect()
        sub.loop_stop()
        assert sorted(m.payload for m in got) == sorted(b"m%d" % i for i in range(20))

        late, retained = _mqtt(second.port, "s3-late", clean=True)
        late.subscribe("s3/retained", 1)
        assert retained.get(timeout=TIMEOUT) == "subscribed"
        [msg] = _drain(retained, 1)
        assert (msg.payload, msg.retain) == (b"kept", True)
        late.disconnect()
        late.loop_stop()

        c = Consumer(
            {
                "bootstrap.servers": second.bootstrap,
                "group.id": "s3-reader",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        c.assign([TopicPartition(topic, 0, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            values.append(m.value())
        c.close()
        assert values == [b"k%d" % i for i in range(50)], "every record once, in order"
        g = Consumer({"bootstrap.servers": second.bootstrap, "group.id": "s3-group"})
        [committed] = g.committed([TopicPartition(topic, 0)], timeout=TIMEOUT)
        g.close()
        assert committed.offset == 10

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", second.amqpPort))
        ch = conn.channel()
        bodies = []
        for _ in range(25):
            _, _, body = ch.basic_get("s3-durable", auto_ack=True)
            if body is None:
                break
            bodies.append(body)
        conn.close()
        assert bodies == [b"a%d" % i for i in range(20)]

        users = second.api("GET", "/api/v1/users")
        assert [u["username"] for u in users["data"]] == ["alice"]  # type: ignore[index]
    finally:
        second.cleanup()
