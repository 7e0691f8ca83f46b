"""A worker SIGKILLed under QoS 1 traffic: the node restarts it, counts and logs the
restart, and a persistent-session client of the killed worker resumes with every
acknowledged message; then SIGTERM stops the node and every worker process."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from workerclients import connectOn

from robustmq.testing.paho import PahoClient
from robustmq.testing.workers import WorkerNode

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killedWorkerIsRestartedAndItsPersistentSessionsResume(
    clients: list[PahoClient],
) -> None:
    uniq = uuid.uuid4().hex[:8]
    topic = f"k/{uniq}/t"
    with WorkerNode(workers=2, logLevel="info") as node:
        subId = f"durable-{uniq}"

        def makeSub() -> PahoClient:
            client = PahoClient(node.port, subId, cleanSession=False)
            clients.append(client)
            return client.connect()

        subscriber, victim = connectOn(node, makeSub, subId, lambda c: c.stop(), lambda w: True)
        subscriber.subscribe(topic, 1)
        pubId = f"pub-{uniq}"

        def makePub() -> PahoClient:
            client = PahoClient(node.port, pubId)
            clients.append(client)
            return client.connect()

        # The publisher stays up: it lands on the worker that is not killed.
        publisher, _ = connectOn(node, makePub, pubId, lambda c: c.stop(), lambda w: w != victim)
        oldPid = node.workerPid(victim)

        received: set[bytes] = set()
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                try:
                    received.add(subscriber.expect(0.1).payload)
                except AssertionError:
                    continue

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        total = 300
        infos: list[mqtt.MQTTMessageInfo] = []
        deadline = time.monotonic() + 60
        for n in range(total):
            infos.append(publisher.client.publish(topic, f"m{n}".encode(), 1))
            if n == total // 3:
                node.killWorker(victim)
            while sum(1 for i in infos[-50:] if not i.is_published()) > 20:
                assert time.monotonic() < deadline, "publishing stalled"
                time.sleep(0.005)
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        acked = {f"m{n}".encode() for n, info in enumerate(infos) if info.is_published()}
        assert len(acked) == total, "every publish is acknowledged"

        # The node restarted the worker, counted and logged it.
        rows = node.waitAllReady()
        assert rows[victim]["restarts"] == 1
        assert rows[victim]["pid"] != oldPid and not _alive(oldPid)
        assert f"worker {victim} (pid {oldPid}) ended" in node.output()
        metrics = node.get("/metrics")
        assert f'robustmq_worker_restarts_total{{worker="{victim}"}} 1.0' in metrics

        # paho reconnects the subscriber by itself (to whichever worker): its session is
        # there, with every acknowledged message.
        drainUntil = time.monotonic() + 40
        while not acked <= received and time.monotonic() < drainUntil:
            time.sleep(0.1)
        stop.set()
        reader.join(5)
        missing = acked - received
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
        assert subscriber.sessionPresent, "the reconnected client found its session"

        # SIGTERM stops every worker, then the node.
        pids = [row["pid"] for row in rows]
        for client in clients:
            client.stop()
        clients.clear()
        code = node.stop(signal.SIGTERM, timeout=40)
        assert code in (0, -signal.SIGTERM), node.output()[-3000:]
        for pid in pids:
            assert not _alive(pid), f"worker process {pid} outlived its node"
        log = node.output()
        assert "all workers stopped" in log
        assert "Traceback" not in log.split("stopping 2 workers", 1)[-1], log[-4000:]


def test_workersStopWhenTheNodeProcessIsKilled() -> None:
    """SIGKILL of the node's own process: its workers read end-of-file on their standard
    input and stop, instead of serving on unsupervised."""
    with WorkerNode(workers=2, logLevel="info") as node:
        pids = [row["pid"] for row in node.waitAllReady()]
        node.kill()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, f"workers {pids} outlived their node"
            time.sleep(0.1)
