"""SIGKILL under load, one test per protocol (item 8): nothing acknowledged is lost.

Each test drives a real client at full speed, SIGKILLs the node while
acknowledgements are flowing (after a bounded number of them), restarts it on
the same data directory and reads everything back.  The default sync policy
(C{interval}) is used: a process crash loses nothing acknowledged under it
(the page cache survives the process); power loss is what C{always} is for.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pika
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faultnode import TIMEOUT, FaultNode, tracebacks

from robustmq.testing.rawclient import RawClient

pytestmark = pytest.mark.timeout(180)

#: acknowledgements to see before the kill (bounded load), and the time bound
KILL_AFTER = 1500
LOAD_SECONDS = 20.0


@pytest.fixture
def node() -> Iterator[FaultNode]:
    # room in an offline session's queue for everything the load sends
    n = FaultNode(extra="[mqtt]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824")
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


def _killWhen(node: FaultNode, acked: list[object], done: threading.Event) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    while len(acked) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.005)
    node.kill()
    done.set()


def _restart(node: FaultNode) -> str:
    start = len(node.output())
    node.start()
    return node.logSince(start)


def test_kafkaAcksAllSurviveSigkill(node: FaultNode) -> None:
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    acked: list[bytes] = []
    killed = threading.Event()
    p = Producer(
        {
            "bootstrap.servers": node.bootstrap,
            "acks": "all",
            "linger.ms": 1,
            "message.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 200,
        }
    )

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked.append(msg.value())  # type: ignore[attr-defined]

    killer = threading.Thread(target=_killWhen, args=(node, acked, killed), daemon=True)
    killer.start()
    i = 0
    while not killed.is_set() and i < 200_000:
        try:
            p.produce(topic, value=b"k%07d" % i, on_delivery=delivered)
            i += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
    p.flush(10)
    killer.join()
    assert len(acked) >= KILL_AFTER // 2, len(acked)
    log = _restart(node)
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": f"g-{topic}"})
    c.assign([TopicPartition(topic, 0, 0)])
    got: set[bytes] = set()
    want = set(acked)
    deadline = time.monotonic() + TIMEOUT
    while not want <= got and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is not None and not msg.error():
            got.add(msg.value())
    c.close()
    missing = want - got
    assert not missing, f"{len(missing)} acknowledged records lost: {sorted(missing)[:5]}"
    assert not tracebacks(log), log[-3000:]


def test_amqpConfirmsSurviveSigkill(node: FaultNode) -> None:
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(node.amqpURL))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    acked: list[bytes] = []
    killed = threading.Event()
    killer = threading.Thread(target=_killWhen, args=(node, acked, killed), daemon=True)
    killer.start()
    persistent = pika.BasicProperties(delivery_mode=2)
    i = 0
    try:
        while i < 200_000:
            body = b"a%07d" % i
            ch.basic_publish("", queue, body, persistent)  # returns once confirmed
            acked.append(body)
            i += 1
    except (pika.exceptions.AMQPError, OSError):
        pass
    killer.join()
    assert len(acked) >= KILL_AFTER, len(acked)
    log = _restart(node)
    conn = pika.BlockingConnection(pika.URLParameters(node.amqpURL))
    ch = conn.channel()
    got = set()
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.add(body)
    conn.close()
    missing = set(acked) - got
    assert not missing, f"{len(missing)} confirmed messages lost: {sorted(missing)[:5]}"
    assert not tracebacks(log), log[-3000:]


def test_mqttQos1SurvivesSigkill(node: FaultNode) -> None:
    uniq = uuid.uuid4().hex[:8]
    with RawClient(node.port) as sub:
        sub.connect(f"sub-{uniq}", cleanSession=False)
        sub.subscribe([(f"k/{uniq}", 1)])
        sub.disconnect()
    acks: list[int] = []  # one entry per PUBACK, for the killer to count
    killed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"pub-{uniq}", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(50)
    client.on_publish = lambda c, u, mid, rc, props: acks.append(mid)
    client.connect("127.0.0.1", node.port)
    client.loop_start()
    killer = threading.Thread(target=_killWhen, args=(node, acks, killed), daemon=True)
    killer.start()
    infos: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
    i = 0
    while not killed.is_set() and i < 200_000:
        body = b"m%07d" % i
        infos.append((body, client.publish(f"k/{uniq}", body, 1)))
        i += 1
        while i - len(acks) > 100 and not killed.is_set():
            time.sleep(0.001)
    killer.join()
    client.loop_stop()
    acked = [body for body, info in infos if info.is_published()]
    assert len(acked) >= KILL_AFTER, len(acked)
    log = _restart(node)
    got: set[bytes] = set()
    with RawClient(node.port) as sub:
        sub.connect(f"sub-{uniq}", cleanSession=False)
        while True:
            try:
                msg = sub.expectPublish(timeout=3.0)
            except TimeoutError:
                break
            got.add(msg.payload)
            sub.ack(msg)
    missing = set(acked) - got
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    assert not tracebacks(log), log[-3000:]
