"""Losing nodes: a broker SIGKILLed under QoS 1 load, the etcd-mode placement leader
SIGKILLed, and a node with the wrong cluster secret.  Each test runs its own cluster
of real processes (and a real etcd)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import paho.mqtt.client as mqtt
import pytest
from clusterclients import awaitRoute, connect, drain

from robustmq.testing.cluster import BrokerNode, LocalCluster
from robustmq.testing.paho import PahoClient

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.stop()


def test_brokerKilledUnderQos1LoadLosesNoAcknowledgedMessage(
    clients: list[PahoClient],
) -> None:
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=1, brokers=3, backend="etcd") as cluster:
        b1, b2, b3 = cluster.brokers
        # Persistent subscribers and a client with a will, all on b2 (which will die).
        subs = [connect(clients, b2.port, f"dur{i}-{uniq}", clean=False) for i in range(2)]
        for s in subs:
            s.subscribe(f"dur/{uniq}/#", 1)
        willed = PahoClient(b2.port, f"willed-{uniq}")
        clients.append(willed)
        willed.connect(will=(f"will/{uniq}", b"b2 died", 1, False))
        # A persistent session whose will has a delay: not published when b2 dies.
        delayed = PahoClient(b2.port, f"delayed-{uniq}", mqtt.MQTTv5, False, sessionExpiry=300)
        clients.append(delayed)
        willProps = mqtt.Properties(mqtt.PacketTypes.WILLMESSAGE)
        willProps.WillDelayInterval = 120
        delayed.client.will_set(f"will/{uniq}/delayed", b"too soon", 1, properties=willProps)
        delayed.client.reconnect_delay_set(min_delay=120, max_delay=120)
        delayed.connect()
        watcher = connect(clients, b1.port, f"watch-{uniq}")
        watcher.subscribe(f"will/{uniq}/#", 1)
        publisher = connect(clients, b1.port, f"pub-{uniq}")
        awaitRoute(publisher, subs, f"dur/{uniq}/probe")

        # Publish QoS 1 from b1; kill b2 a third of the way through.
        total = 600
        infos: list[mqtt.MQTTMessageInfo] = []
        received: list[set[bytes]] = [set(), set()]
        stop = threading.Event()

        def consume(i: int) -> None:
            while not stop.is_set():
                try:
                    msg = subs[i].expect(0.1)
                except AssertionError:
                    continue
                received[i].add(msg.payload)

        readers = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(2)]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 60
        for n in range(total):
            infos.append(publisher.client.publish(f"dur/{uniq}/t", f"m{n}".encode(), 1))
            if n == total // 3:
                cluster.kill(b2)
            while sum(1 for i in infos if not i.is_published()) > 20:
                assert time.monotonic() < deadline, "publishing stalled"
                time.sleep(0.005)
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        stop.set()
        for r in readers:
            r.join(5)
        acked = {f"m{n}".encode() for n, info in enumerate(infos) if info.is_published()}
        assert len(acked) == total, "every publish is acknowledged once b2's death is handled"

        # The will of b2's client fires elsewhere; the delayed one waits for its delay
        # (the adopter publishes both in the same turn if it does not).
        msg = watcher.expect(10)
        assert (msg.topic, msg.payload) == (f"will/{uniq}", b"b2 died")
        watcher.expectNothing(1.0)

        # The persistent subscribers come back on other nodes and get every acknowledged message.
        for i, node in enumerate((b3, b1)):
            again = connect(clients, node.port, f"dur{i}-{uniq}", clean=False)
            assert again.sessionPresent is True
            drain(again, received[i], acked, 30)
            missing = acked - received[i]
            assert not missing, f"subscriber {i} lost {len(missing)}: {sorted(missing)[:5]}"


def test_placementLeaderKilledClusterKeepsRouting(clients: list[PahoClient]) -> None:
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=2, brokers=2, backend="etcd") as cluster:
        b1, b2 = cluster.brokers
        leader = cluster.waitForLeader()
        sub = connect(clients, b2.port, f"s-{uniq}")
        sub.subscribe(f"r/{uniq}/#", 1)
        publisher = connect(clients, b1.port, f"p-{uniq}")
        awaitRoute(publisher, [sub], f"r/{uniq}/probe")

        cluster.kill(leader)
        # Routing between brokers does not need the placement center.
        for i in range(20):
            publisher.publish(f"r/{uniq}/t", f"during{i}".encode(), 1)
        got: set[bytes] = set()
        drain(sub, got, {f"during{i}".encode() for i in range(20)}, 10)
        assert got == {f"during{i}".encode() for i in range(20)}

        # Another placement node is elected and the brokers register with it.
        survivor = cluster.waitForLeader(timeout=20, exclude=[leader])
        assert survivor is not leader
        for broker in (b1, b2):
            text = f"registered with the placement center as {broker.nodeId}"
            deadline = time.monotonic() + 20
            while broker.output().count(text) < 2:
                assert time.monotonic() < deadline, f"{broker.nodeId} did not register again"
                time.sleep(0.1)
        # New routes go through the new leader.
        late = connect(clients, b1.port, f"late-{uniq}")
        late.subscribe(f"n/{uniq}/#", 1)
        publisher2 = connect(clients, b2.port, f"p2-{uniq}")
        awaitRoute(publisher2, [late], f"n/{uniq}/probe")
        publisher2.publish(f"n/{uniq}/t", b"after", 1)
        assert late.expect().payload == b"after"
        # Clients never noticed: their connections stayed up throughout.
        assert sub.connected.is_set() and not sub.disconnected.is_set()
        assert publisher.connected.is_set() and not publisher.disconnected.is_set()


PB_LOGIN = """
import sys
from twisted.cred.credentials import UsernamePassword
from twisted.internet import reactor
from twisted.spread import pb
port, user, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
factory = pb.PBClientFactory()
reactor.connectTCP("127.0.0.1", port, factory)
d = factory.login(UsernamePassword(user.encode(), secret.encode()))
d.addCallbacks(lambda p: print("ok"), lambda f: print("refused", f.getErrorMessage()))
d.addBoth(lambda _: reactor.stop())
reactor.callLater(10, reactor.stop)
reactor.run()
"""


def pbLogin(port: int | None, user: str, secret: str) -> str:
    """Log in to a broker link port from another process: "ok" or "refused"."""
    out = subprocess.run(
        [sys.executable, "-c", PB_LOGIN, str(port), user, secret],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    return out.split()[0] if out else "no answer"


def test_wrongClusterSecretIsRefused(tmp_path: Path) -> None:
    with LocalCluster(placements=0, brokers=1, backend="embedded") as cluster:
        good = cluster.brokers[0]
        intruder = BrokerNode(
            "intruder",
            ("broker",),
            tmp_path / "intruder",
            {**cluster.brokers[0].placementSettings, "cluster_secret": "not-the-secret"},
            port=cluster._freePort(),
            httpPort=None,
            clusterPort=cluster._freePort(),
        )
        intruder.spawn()
        try:
            deadline = time.monotonic() + 15
            while "wrong cluster secret" not in intruder.output():
                assert time.monotonic() < deadline, intruder.output()[-2000:]
                time.sleep(0.1)
            assert "registered with the placement center" not in intruder.output()
            assert "node intruder registered" not in good.output()
            with urlopen(f"{good.httpURL}/api/v1/cluster") as r:
                assert [row["node"] for row in json.load(r)["data"]] == [good.nodeId]
            # The broker-to-broker link checks the secret too.
            assert pbLogin(good.clusterPort, "intruder", "not-the-secret") == "refused"
            assert pbLogin(good.clusterPort, "b9", cluster.secret) == "ok"
        finally:
            intruder.stop()


def test_gracefulStopHandsSessionsOverAtOnce(clients: list[PahoClient]) -> None:
    """SIGTERM: the broker leaves the cluster, its replica adopts its persistent sessions
    at once (long before the 30 s heartbeat timeout), and no will is published."""
    uniq = uuid.uuid4().hex[:8]
    slow = {"cluster": {"takeover_timeout": 40}}
    with LocalCluster(
        placements=0, brokers=3, backend="embedded", heartbeatTimeout=30.0, brokerConfig=slow
    ) as cluster:
        b1, b2, b3 = cluster.brokers
        sub = connect(clients, b2.port, f"stay-{uniq}", clean=False)
        sub.subscribe(f"g/{uniq}/#", 1)
        willed = PahoClient(b2.port, f"willed-{uniq}")
        clients.append(willed)
        willed.connect(will=(f"gwill/{uniq}", b"should not fire", 1, False))
        watcher = connect(clients, b1.port, f"watch-{uniq}")
        watcher.subscribe(f"gwill/{uniq}", 1)
        publisher = connect(clients, b1.port, f"pub-{uniq}")
        awaitRoute(publisher, sub, f"g/{uniq}/probe")
        sub.disconnect()
        sub.stop()
        for i in range(5):
            publisher.publish(f"g/{uniq}/t", f"q{i}".encode(), 1)
        willed.client.reconnect_delay_set(min_delay=120, max_delay=120)
        started = time.monotonic()
        assert cluster.stop(b2) in (0, -15)
        assert "declared dead (left the cluster)" in b1.output()
        again = connect(clients, b1.port, f"stay-{uniq}", clean=False)
        assert time.monotonic() - started < 15, "the session waited for the heartbeat timeout"
        assert again.sessionPresent is True
        got: set[bytes] = set()
        drain(again, got, {f"q{i}".encode() for i in range(5)}, 10)
        assert got == {f"q{i}".encode() for i in range(5)}
        watcher.expectNothing(1.0)


def test_aBrokerThatDiesTwiceIsAdoptedTwice(clients: list[PahoClient]) -> None:
    """Killed, restarted, killed again: its new persistent sessions are adopted again."""
    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=0, brokers=3, backend="embedded") as cluster:
        b1, b2, b3 = cluster.brokers
        publisher = connect(clients, b1.port, f"pub-{uniq}")
        for round in (1, 2):
            cid = f"twice{round}-{uniq}"
            sub = connect(clients, b2.port, cid, clean=False)
            sub.client.reconnect_delay_set(min_delay=120, max_delay=120)
            sub.subscribe(f"tw{round}/{uniq}/#", 1)
            awaitRoute(publisher, sub, f"tw{round}/{uniq}/probe")
            sub.disconnect()
            sub.stop()
            for i in range(3):
                publisher.publish(f"tw{round}/{uniq}/t", f"r{round}m{i}".encode(), 1)
            cluster.kill(b2)
            again = connect(clients, b3.port, cid, clean=False)
            assert again.sessionPresent is True, f"round {round}: session not adopted"
            got: set[bytes] = set()
            expected = {f"r{round}m{i}".encode() for i in range(3)}
            drain(again, got, expected, 10)
            assert got == expected, f"round {round}"
            again.disconnect()
            again.stop()
            if round == 1:
                cluster.restart(b2)


def test_aBrokerDeclaredDeadWhileAliveGivesItsSessionsUp(clients: list[PahoClient]) -> None:
    """A broker frozen past the heartbeat timeout is declared dead and adopted; when it
    wakes up it drops the adopted sessions and closes their clients (0x8E), which
    reconnect and get what was queued meanwhile: no split brain."""
    import os
    import signal as signals

    uniq = uuid.uuid4().hex[:8]
    with LocalCluster(placements=0, brokers=3, backend="embedded") as cluster:
        b1, b2, b3 = cluster.brokers
        cid = f"frozen-{uniq}"
        sub = PahoClient(b2.port, cid, mqtt.MQTTv5, cleanSession=False, sessionExpiry=300)
        clients.append(sub)
        sub.connect()
        sub.subscribe(f"fz/{uniq}/#", 1)
        publisher = connect(clients, b1.port, f"pub-{uniq}")
        awaitRoute(publisher, sub, f"fz/{uniq}/probe")
        assert b2.pid is not None
        os.kill(b2.pid, signals.SIGSTOP)
        try:
            deadline = time.monotonic() + 20
            while "adopted 1 persistent sessions" not in b3.output():
                assert time.monotonic() < deadline, "b2's session was not adopted"
                time.sleep(0.1)
            for i in range(3):
                publisher.publish(f"fz/{uniq}/t", f"f{i}".encode(), 1)
        finally:
            os.kill(b2.pid, signals.SIGCONT)
        # b2 wakes up, gives the session up (closing its client), the client reconnects
        # (paho does, to b2) and the session comes back with the queued messages.
        got: set[bytes] = set()
        drain(sub, got, {f"f{i}".encode() for i in range(3)}, 30)
        assert got == {f"f{i}".encode() for i in range(3)}
        assert 0x8E in sub.disconnectReasons
        assert "dropping the local copy" in b2.output()
