"""A node of two worker processes behaves as one broker: cross-worker delivery with
mosquitto clients (and over QUIC, whose UDP flows keep their worker), retained messages,
shared subscriptions, users and bans node-wide, a persistent session moving between
workers under QoS 1 traffic, AMQP served by the home worker into the MQTT topic space
of every worker, and one admin API and /metrics showing every worker.  One node (real
processes) serves the whole module."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError

import paho.mqtt.client as mqtt
import pika
import pytest
from workerclients import connectOn, onEveryWorker

from robustmq.testing.mosquitto import MosquittoSub
from robustmq.testing.paho import PahoClient
from robustmq.testing.process import freePort
from robustmq.testing.quicclient import QuicClient
from robustmq.testing.rawclient import RawClient
from robustmq.testing.workers import WorkerNode
from robustmq.transports.testcerts import generateTestCertificates

pytestmark = pytest.mark.timeout(180)

AMQP_PORT = freePort()
QUIC_PORT = freePort()


@pytest.fixture(scope="module")
def certs() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="robustmq-certs-") as folder:
        yield {k: str(v) for k, v in generateTestCertificates(Path(folder), ("127.0.0.1",)).items()}


@pytest.fixture(scope="module")
def node(certs: dict[str, str]) -> Iterator[WorkerNode]:
    extra = f"""
[mqtt]
sys_interval = 1

[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {AMQP_PORT}

[[listeners]]
protocol = "mqtt"
transport = "quic"
bind = "127.0.0.1"
port = {QUIC_PORT}
certfile = "{certs["server"]}"
keyfile = "{certs["server_key"]}"
"""
    with WorkerNode(workers=2, extraConfig=extra, logLevel="info") as n:
        yield n


@pytest.fixture
def uniq() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.stop()


def _pub(node: WorkerNode, topic: str, payload: str, *args: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(node.port), "-t", topic, "-m", payload]
        + list(args),
        check=True,
        timeout=10,
    )


def test_crossWorkerPubSubWithMosquitto(node: WorkerNode, uniq: str) -> None:
    subs: list[MosquittoSub] = []
    late: list[MosquittoSub] = []

    def make(n: int) -> tuple[MosquittoSub, str]:
        clientId = f"sub{n}-{uniq}"
        sub = MosquittoSub(node.port, "mqttv311", ["-t", f"x/{uniq}/#", "-q", "1", "-i", clientId])
        subs.append(sub)
        sub.waitSubscribed()
        return sub, clientId

    try:
        placed = onEveryWorker(node, make, lambda s: s.kill())
        # Publishers land where the kernel puts them: with a subscriber on each
        # worker, every message reaches at least one worker it was not published on.
        for i in range(6):
            _pub(node, f"x/{uniq}/t", f"m{i}", "-q", "1", "-i", f"pub{i}-{uniq}")
        for sub in placed.values():
            for i in range(6):
                sub.waitFor(f"x/{uniq}/t m{i}", 15)

        # A retained message set through one worker reaches new subscribers on every worker.
        _pub(node, f"r/{uniq}", "kept", "-q", "1", "-r")

        def makeLate(n: int) -> tuple[MosquittoSub, str]:
            clientId = f"late{n}-{uniq}"
            sub = MosquittoSub(
                node.port, "mqttv311", ["-t", f"r/{uniq}", "-q", "1", "-i", clientId]
            )
            late.append(sub)
            sub.waitFor(f"r/{uniq} kept", 15)
            return sub, clientId

        onEveryWorker(node, makeLate, lambda s: s.kill())
    finally:
        for sub in subs + late:
            sub.kill()


def test_sharedSubscriptionAcrossWorkersDeliversEachMessageOnce(
    node: WorkerNode, uniq: str, clients: list[PahoClient]
) -> None:
    def make(n: int) -> tuple[PahoClient, str]:
        clientId = f"member{n}-{uniq}"
        client = PahoClient(node.port, clientId)
        clients.append(client)
        client.connect()
        client.subscribe(f"$share/g{uniq}/s/{uniq}", 1)
        return client, clientId

    members = onEveryWorker(node, make, lambda c: c.stop())
    publisher = PahoClient(node.port, f"spub-{uniq}")
    clients.append(publisher)
    publisher.connect()
    total = 40
    for i in range(total):
        publisher.publish(f"s/{uniq}", f"s{i}".encode(), 1)
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got) < total and time.monotonic() < deadline:
        for member in members.values():
            while not member.messages.empty():
                got.append(member.messages.get().payload)
        time.sleep(0.05)
    assert sorted(got) == sorted(f"s{i}".encode() for i in range(total)), "each message once"
    for member in members.values():
        member.expectNothing(0.5)


def test_persistentSessionMovesBetweenWorkersUnderQos1LosesNothing(
    node: WorkerNode, uniq: str, clients: list[PahoClient]
) -> None:
    clientId = f"mover-{uniq}"
    topic = f"move/{uniq}/t"
    received: set[bytes] = set()
    lock = threading.Lock()

    def make() -> PahoClient:
        client = PahoClient(node.port, clientId, cleanSession=False)
        clients.append(client)
        client.connect()
        return client

    def close(client: PahoClient) -> None:
        client.disconnect()
        collect(client)
        client.stop()

    def collect(client: PahoClient) -> None:
        with lock:
            while not client.messages.empty():
                received.add(client.messages.get().payload)

    subscriber, worker = connectOn(node, make, clientId, close, lambda w: True)
    subscriber.subscribe(topic, 1)
    publisher = PahoClient(node.port, f"mpub-{uniq}")
    clients.append(publisher)
    publisher.connect()

    total = 400
    infos: list[mqtt.MQTTMessageInfo] = []
    done = threading.Event()

    def publish() -> None:
        for n in range(total):
            infos.append(publisher.client.publish(topic, f"m{n}".encode(), 1))
            while sum(1 for i in infos[-50:] if not i.is_published()) > 20:
                time.sleep(0.002)
            time.sleep(0.002)
        done.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    moves = 0
    deadline = time.monotonic() + 90
    while (moves < 3 or not done.is_set()) and time.monotonic() < deadline:
        time.sleep(0.2)
        close(subscriber)
        subscriber, landed = connectOn(
            node, make, clientId, close, lambda w, left=worker: w != left
        )
        assert subscriber.sessionPresent, "the session moved with its client"
        moves += 1
        worker = landed
    thread.join(30)
    assert moves >= 3, f"only {moves} moves between workers"
    for info in infos:
        info.wait_for_publish(10)
    acked = {f"m{n}".encode() for n, info in enumerate(infos) if info.is_published()}
    assert len(acked) == total
    deadline = time.monotonic() + 30
    while not acked <= received and time.monotonic() < deadline:
        time.sleep(0.1)
        collect(subscriber)
    missing = acked - received
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"


def test_amqpOnTheHomeWorkerSharesTheMqttTopicSpace(
    node: WorkerNode, uniq: str, clients: list[PahoClient]
) -> None:
    listeners = {entry["name"]: entry for entry in node.get("/api/v1/listeners")["data"]}
    assert listeners[f"amqp/tcp:{AMQP_PORT}"]["workers"] == [0]
    assert listeners[f"mqtt/tcp:{node.port}"]["workers"] == [0, 1]

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", AMQP_PORT))
    try:
        channel = connection.channel()
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", routing_key=f"a.{uniq}.*")

        def make(n: int) -> tuple[PahoClient, str]:
            clientId = f"amqpsub{n}-{uniq}"
            client = PahoClient(node.port, clientId)
            clients.append(client)
            client.connect()
            client.subscribe(f"a/{uniq}/#", 1)
            return client, clientId

        subscribers = onEveryWorker(node, make, lambda c: c.stop())
        # MQTT from either worker reaches the AMQP queue on the home worker...
        for worker, client in subscribers.items():
            client.publish(f"a/{uniq}/from{worker}", f"mqtt{worker}".encode(), 1)
        bodies = set()
        deadline = time.monotonic() + 15
        while len(bodies) < len(subscribers) and time.monotonic() < deadline:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                bodies.add(body)
        assert bodies == {f"mqtt{w}".encode() for w in subscribers}
        # ... and an AMQP publish reaches MQTT subscribers on every worker.
        channel.basic_publish("amq.topic", f"a.{uniq}.amqp", b"from-amqp")
        for client in subscribers.values():
            payloads = set()
            while b"from-amqp" not in payloads:
                payloads.add(client.expect(15).payload)
    finally:
        connection.close()


def test_adminApiAndMetricsShowEveryWorker(
    node: WorkerNode, uniq: str, clients: list[PahoClient]
) -> None:
    def make(n: int) -> tuple[PahoClient, str]:
        clientId = f"seen{n}-{uniq}"
        client = PahoClient(node.port, clientId)
        clients.append(client)
        client.connect()
        return client, clientId

    onEveryWorker(node, make, lambda c: c.stop())
    rows = node.waitAllReady()
    assert [r["worker"] for r in rows] == [0, 1]
    assert len({r["pid"] for r in rows}) == 2
    assert all(r["rss_bytes"] > 0 and r["connections"] >= 1 for r in rows), rows

    status = node.get("/api/v1/status")
    assert status["node"]["workers"] == 2
    assert status["stats"]["connections"] == sum(r["connections"] for r in status["workers"])
    listed = node.get(f"/api/v1/clients?client_id={uniq}")
    assert {c["worker"] for c in listed["data"]} == {0, 1}

    metrics = node.get("/metrics")
    for worker in ("0", "1"):
        assert f'robustmq_connections{{worker="{worker}"}}' in metrics
        assert f'robustmq_worker_up{{worker="{worker}"}} 1.0' in metrics
        assert f'process_resident_memory_bytes{{worker="{worker}"}}' in metrics
    assert metrics.count("# TYPE robustmq_connections gauge") == 1

    ctl = subprocess.run(
        [sys.executable, "-m", "robustmq.cli", "ctl", "--url", node.httpURL, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "WORKER" in ctl.stdout and "CONNECTIONS" in ctl.stdout, ctl.stdout
    lines = [line.split() for line in ctl.stdout.splitlines()]
    assert [line[0] for line in lines if line and line[0] in ("0", "1")] == ["0", "1"]

    # $SYS is the node's: the connections of both workers, on either worker.
    watcher = PahoClient(node.port, f"sys-{uniq}")
    clients.append(watcher)
    watcher.connect()
    watcher.subscribe("$SYS/broker/clients/connected", 0)
    deadline = time.monotonic() + 20
    seen: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        value = int(watcher.expect(5).payload)
        total = node.get("/api/v1/status")["stats"]["connections"]
        seen.append((value, total))
        if value == total:
            break
    assert seen and seen[-1][0] == seen[-1][1], f"$SYS vs the node's connections: {seen}"


def test_quicClientsOnEveryWorker(node: WorkerNode, uniq: str, certs: dict[str, str]) -> None:
    """The node's UDP sockets are a SO_REUSEPORT group: each QUIC connection's datagrams
    reach the worker that holds its state."""
    made: list[QuicClient] = []

    def make(n: int) -> tuple[QuicClient, str]:
        clientId = f"quic{n}-{uniq}"
        client = QuicClient(QUIC_PORT, cafile=certs["ca"])
        made.append(client)
        client.connect(clientId)
        client.subscribe([(f"u/{uniq}", 1)])
        return client, clientId

    try:
        placed = onEveryWorker(node, make, lambda c: c.close())
        for i in range(3):
            _pub(node, f"u/{uniq}", f"q{i}", "-q", "1")
        for client in placed.values():
            got = []
            for _ in range(3):
                publish = client.expectPublish(15)
                client.ack(publish)
                got.append(publish.payload)
            assert got == [b"q0", b"q1", b"q2"]
    finally:
        for client in made:
            client.close()


def test_usersAndBansAreNodeWide(node: WorkerNode, uniq: str) -> None:
    """A user and a ban made through the node's admin API hold on every worker."""
    user = f"u{uniq}"
    node.call("POST", "/api/v1/users", {"username": user, "password": "pw-" + uniq})
    # One worker stores the user; the placement center pushes it to the others (milliseconds).
    seen: set[int] = set()
    deadline = time.monotonic() + 15
    n = 0
    while seen != {0, 1} and time.monotonic() < deadline:
        n += 1
        with RawClient(node.port) as raw:
            connack = raw.connect(f"auth{n}-{uniq}", username=user, password=b"pw-" + uniq.encode())
            if connack.returnCode == 0:
                seen.add(node.workerOf(f"auth{n}-{uniq}"))
            else:
                time.sleep(0.1)
    assert seen == {0, 1}, "a user added through the node authenticates on every worker"

    banned = f"banned-{uniq}"
    node.call("POST", "/api/v1/bans", {"kind": "clientid", "value": banned, "duration": 300})
    refusedInARow = 0
    deadline = time.monotonic() + 15
    while refusedInARow < 12:  # whichever worker each connection lands on
        assert time.monotonic() < deadline, "the ban does not hold on every worker"
        with RawClient(node.port) as raw:
            refusedInARow = refusedInARow + 1 if raw.connect(banned).returnCode != 0 else 0
    node.call("DELETE", f"/api/v1/bans/clientid/{banned}")
    deadline = time.monotonic() + 10
    while True:
        with RawClient(node.port) as raw:
            if raw.connect(banned).returnCode == 0:
                break
        assert time.monotonic() < deadline, "the lifted ban still holds somewhere"
        time.sleep(0.2)
    try:
        node.get(f"/api/v1/users/{user}")
    except HTTPError as e:  # pragma: no cover - a failure shows the answer
        raise AssertionError(e.read()) from None
