"""SIGSTOP: a broker frozen under QoS 1 load, and a frozen placement leader (item 8).

A stopped process is worse than a dead one: its sockets stay open, and it
comes back later believing what it believed before.  Each test freezes a
node of a real cluster (L{LocalCluster}) while acknowledged traffic flows,
wakes it up, and checks that no acknowledged message is lost, that one
placement leader remains, and that no node logged a traceback.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from faultnode import tracebacks

from robustmq.testing.cluster import LocalCluster
from robustmq.testing.paho import PahoClient

pytestmark = pytest.mark.timeout(180)

PROBE = b"probe"


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.stop()


def _connect(made: list[PahoClient], port: int, clientId: str, **kw: object) -> PahoClient:
    client = PahoClient(port, clientId, **kw)  # type: ignore[arg-type]
    made.append(client)
    return client.connect()


def _awaitRoute(publisher: PahoClient, sub: PahoClient, topic: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        assert time.monotonic() < deadline, "no route"
        publisher.publish(topic, PROBE, 1)
        try:
            if sub.expect(0.3).payload == PROBE:
                break
        except AssertionError:
            pass
    time.sleep(0.3)
    while not sub.messages.empty():
        sub.messages.get()


def _drain(sub: PahoClient, want: set[bytes], timeout: float) -> set[bytes]:
    got: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while not want <= got and time.monotonic() < deadline:
        try:
            msg = sub.expect(0.2)
        except AssertionError:
            continue
        if msg.payload != PROBE:
            got.add(msg.payload)
    return got


def _noTracebacks(cluster: LocalCluster) -> None:
    for nodeId, path in cluster.logs.items():
        text = path.read_text(errors="replace")
        assert not tracebacks(text), f"{nodeId}: {text[-3000:]}"


def test_brokerFrozenUnderQos1Load(clients: list[PahoClient]) -> None:
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=0, brokers=3, backend="embedded") as cluster:
        b1, b2, b3 = cluster.brokers
        sub = _connect(
            clients,
            b2.port,
            f"frozen-{uniq}",
            protocol=mqtt.MQTTv5,
            cleanSession=False,
            sessionExpiry=300,
        )
        sub.subscribe(f"fz/{uniq}/#", 1)
        publisher = _connect(clients, b1.port, f"pub-{uniq}")
        _awaitRoute(publisher, sub, f"fz/{uniq}/probe")
        total = 300
        infos: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
        frozen = threading.Event()

        def load() -> None:
            for n in range(total):
                body = b"f%04d" % n
                infos.append((body, publisher.client.publish(f"fz/{uniq}/t", body, 1)))
                if n == total // 3:
                    assert b2.pid is not None
                    os.kill(b2.pid, signal.SIGSTOP)
                    frozen.set()
                time.sleep(0.01)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            assert frozen.wait(30)
            deadline = time.monotonic() + 30
            while "adopted 1 persistent sessions" not in b3.output():
                assert time.monotonic() < deadline, "b2's session was not adopted"
                time.sleep(0.1)
            loader.join(60)
        finally:
            if b2.pid is not None:
                os.kill(b2.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        for _, info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        acked = {body for body, info in infos if info.is_published()}
        assert len(acked) == total, "every publish is acknowledged once b2's freeze is handled"
        got = _drain(sub, acked, 60)
        missing = acked - got
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
        _noTracebacks(cluster)


def test_placementLeaderFrozen(clients: list[PahoClient]) -> None:
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=2, brokers=2, backend="etcd") as cluster:
        b1, b2 = cluster.brokers
        leader = cluster.waitForLeader()
        sub = _connect(clients, b2.port, f"s-{uniq}")
        sub.subscribe(f"r/{uniq}/#", 1)
        publisher = _connect(clients, b1.port, f"p-{uniq}")
        _awaitRoute(publisher, sub, f"r/{uniq}/probe")
        assert leader.pid is not None
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            # Routing between brokers does not need the placement center.
            during = {b"during%d" % i for i in range(20)}
            for body in sorted(during):
                publisher.publish(f"r/{uniq}/t", body, 1)
            assert _drain(sub, during, 15) == during
            survivor = cluster.waitForLeader(timeout=30, exclude=[leader])
            assert survivor is not leader
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        # The old leader wakes up and must not lead as well.
        deadline = time.monotonic() + 30
        while len(cluster.leaders()) != 1:
            assert time.monotonic() < deadline, "two placement leaders after the freeze"
            time.sleep(0.2)
        assert cluster.leaders() == [survivor]
        # New routes still go through the placement center.
        late = _connect(clients, b1.port, f"late-{uniq}")
        late.subscribe(f"n/{uniq}/#", 1)
        publisher2 = _connect(clients, b2.port, f"p2-{uniq}")
        _awaitRoute(publisher2, late, f"n/{uniq}/probe")
        publisher2.publish(f"n/{uniq}/t", b"after", 1)
        assert late.expect().payload == b"after"
        assert sub.connected.is_set() and not sub.disconnected.is_set()
        _noTracebacks(cluster)
