"""A 2 placement + 3 broker cluster (real processes, a real etcd): routing across nodes.

One cluster serves the whole module; every test uses its own topics and
client ids.  Tests that kill nodes live in test_cluster_failover.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.request import Request, urlopen

import paho.mqtt.client as mqtt
import pytest
from clusterclients import PROBE, awaitRoute, connect, payloads

from robustmq.testing.cluster import LocalCluster
from robustmq.testing.paho import PahoClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # No test here kills a node: a longer heartbeat timeout keeps a loaded machine
    # from declaring a busy broker dead in the middle of a test.
    with LocalCluster(placements=2, brokers=3, backend="etcd", heartbeatTimeout=5.0) as c:
        yield c


@pytest.fixture
def uniq() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.stop()


def clusterTable(port: int) -> dict[str, dict]:
    with urlopen(f"http://127.0.0.1:{port}/api/v1/cluster") as r:
        return {row["node"]: row for row in json.load(r)["data"]}


def test_everyNodeRegisteredAndListed(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 10
    while True:
        byNode = clusterTable(cluster.brokers[1].httpPort)
        if len(byNode) == 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for node in ("b1", "b2", "b3", "p1", "p2"):
        assert byNode[node]["state"] == "alive", byNode
    assert byNode["b1"]["roles"] == ["broker"]
    assert byNode["p1"]["roles"] == ["placement"]
    assert byNode["b1"]["address"] == f"127.0.0.1:{cluster.brokers[0].port}"
    assert isinstance(byNode["b3"]["clients"], int)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publishOnOneNodeReachesSubscriberOnAnother(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str, qos: int
) -> None:
    a, b = cluster.brokers[0], cluster.brokers[1]
    subscriber = connect(clients, b.port, f"sub-{uniq}")
    subscriber.subscribe(f"x/{uniq}/#", qos)
    publisher = connect(clients, a.port, f"pub-{uniq}")
    awaitRoute(publisher, subscriber, f"x/{uniq}/probe")
    for i in range(200):
        publisher.client.publish(f"x/{uniq}/t", f"m{i}".encode(), qos)
    publisher.publish(f"x/{uniq}/t", b"last", qos)
    got = subscriber.expectMany(201)
    # One publisher's messages keep their order across nodes, at the subscription's QoS.
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(200)] + [b"last"]
    assert {m.qos for m in got} == {qos}
    subscriber.expectNothing(0.5)


def test_subscribersOnEveryNodeGetOneCopyEach(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str
) -> None:
    subs = [connect(clients, node.port, f"s{i}-{uniq}") for i, node in enumerate(cluster.brokers)]
    for s in subs:
        s.subscribe(f"fan/{uniq}/#", 1)
        s.subscribe(f"fan/{uniq}/+", 1)  # overlapping filters: still one copy
    publisher = connect(clients, cluster.brokers[2].port, f"pub-{uniq}")
    for s in subs:
        awaitRoute(publisher, s, f"fan/{uniq}/probe")
    for i in range(20):
        publisher.publish(f"fan/{uniq}/t", f"m{i}".encode(), 1)
    for s in subs:
        assert payloads(s, 20) == [f"m{i}".encode() for i in range(20)]
        s.expectNothing(0.5)


def test_sharedSubscriptionAcrossThreeNodesDeliversOnce(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str
) -> None:
    members = [
        connect(clients, node.port, f"m{i}-{uniq}") for i, node in enumerate(cluster.brokers)
    ]
    # A second member on b1: the group there still receives one copy per message.
    members.append(connect(clients, cluster.brokers[0].port, f"m3-{uniq}"))
    for m in members:
        m.subscribe(f"$share/g{uniq}/job/{uniq}/#", 1)
    watcher = connect(clients, cluster.brokers[2].port, f"w-{uniq}")
    watcher.subscribe(f"job/{uniq}/#", 1)
    publisher = connect(clients, cluster.brokers[1].port, f"pub-{uniq}")
    # Each node's route must be known to the publisher's node before counting.
    deadline = time.monotonic() + 15
    seen: set[int] = set()
    while len(seen) < len(members):
        assert time.monotonic() < deadline, f"group members reached: {seen}"
        publisher.publish(f"job/{uniq}/probe", b"probe", 1)
        for i, m in enumerate(members):
            try:
                while True:
                    m.expect(0.05)
                    seen.add(i)
            except AssertionError:
                pass
    time.sleep(0.5)
    for m in members:
        while not m.messages.empty():
            m.messages.get()
    while not watcher.messages.empty():
        watcher.messages.get()
    total = 90
    for i in range(total):
        publisher.publish(f"job/{uniq}/t", f"j{i}".encode(), 1)
    # The ordinary subscriber sees every message once.
    assert len(watcher.expectMany(total)) == total
    received: list[bytes] = []
    perNode = [0, 0, 0]
    deadline = time.monotonic() + 15
    while len(received) < total and time.monotonic() < deadline:
        for i, m in enumerate(members):
            try:
                msg = m.expect(0.05)
            except AssertionError:
                continue
            if msg.payload != b"probe":
                received.append(msg.payload)
                perNode[i if i < 3 else 0] += 1
    assert sorted(received) == sorted(f"j{i}".encode() for i in range(total))
    # Turns go round the three nodes: each gets a third.
    assert perNode == [30, 30, 30], perNode
    for m in members:
        m.expectNothing(0.3)


def test_retainedMessagesAreClusterWide(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str
) -> None:
    publisher = connect(clients, cluster.brokers[0].port, f"pub-{uniq}")
    publisher.publish(f"ret/{uniq}/a", b"kept", 1, retain=True)
    deadline = time.monotonic() + 10
    for node in cluster.brokers[1:]:
        while True:
            late = connect(clients, node.port, f"late-{node.nodeId}-{uniq}-{time.monotonic()}")
            late.subscribe(f"ret/{uniq}/#", 1)
            try:
                msg = late.expect(0.5)
                break
            except AssertionError:
                assert time.monotonic() < deadline, f"no retained message on {node.nodeId}"
            finally:
                late.stop()
        assert (msg.topic, msg.payload, msg.retain) == (f"ret/{uniq}/a", b"kept", True)
    # Clearing it clears it everywhere.
    publisher.publish(f"ret/{uniq}/a", b"", 1, retain=True)
    time.sleep(0.5)
    for node in cluster.brokers:
        late = connect(clients, node.port, f"gone-{node.nodeId}-{uniq}")
        late.subscribe(f"ret/{uniq}/#", 1)
        late.expectNothing(0.5)


def test_sessionTakenOverByAnotherNodeWithQueuedMessages(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str
) -> None:
    cid = f"roamer-{uniq}"

    def roamer(node: int) -> PahoClient:
        client = PahoClient(
            cluster.brokers[node].port, cid, mqtt.MQTTv5, cleanSession=False, sessionExpiry=300
        )
        clients.append(client)
        return client.connect()

    first = roamer(0)
    first.subscribe(f"q/{uniq}/#", 1)
    publisher = connect(clients, cluster.brokers[1].port, f"pub-{uniq}")
    awaitRoute(publisher, first, f"q/{uniq}/probe")
    first.disconnect()
    first.stop()
    for i in range(10):
        publisher.publish(f"q/{uniq}/t", f"held{i}".encode(), 1)
    # Same client id on a third node: the session (subscription + queue) moves there.
    second = roamer(2)
    assert second.sessionPresent is True
    assert payloads(second, 10) == [f"held{i}".encode() for i in range(10)]
    # The subscription moved too: new messages arrive on the new node.
    publisher.publish(f"q/{uniq}/t", b"after", 1)
    assert payloads(second, 1) == [b"after"]
    # A connection with the same client id on another node takes over: the old one
    # is closed with reason 0x8E (Session taken over).
    # (paho reconnects by itself after a second: keep the old client from taking it back)
    second.client.reconnect_delay_set(min_delay=120, max_delay=120)
    third = roamer(0)
    assert third.sessionPresent is True
    assert second.disconnected.wait(5)
    assert second.disconnectReasons[:1] == [0x8E]
    publisher.publish(f"q/{uniq}/t", b"third", 1)
    # "after" may come again first: its PUBACK can lose the race with the takeover,
    # and an unacknowledged QoS 1 message is resent (at least once).
    got = payloads(third, 1)
    if got == [b"after"]:
        got = payloads(third, 1)
    assert got == [b"third"]


def test_delayedWillIsDroppedWhenTheClientConnectsOnAnotherNode(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str
) -> None:
    """MQTT-3.1.2-8: a new connection for the session before the Will Delay ends deletes
    the will, also when that connection is on another broker."""
    watcher = connect(clients, cluster.brokers[1].port, f"watch-{uniq}")
    watcher.subscribe(f"will/{uniq}/#", 1)

    def withDelayedWill(node: int, name: str) -> PahoClient:
        client = PahoClient(
            cluster.brokers[node].port, f"{name}-{uniq}", mqtt.MQTTv5, False, sessionExpiry=300
        )
        clients.append(client)
        props = mqtt.Properties(mqtt.PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = 30
        client.client.will_set(f"will/{uniq}/{name}", name.encode(), 1, properties=props)
        client.client.reconnect_delay_set(min_delay=120, max_delay=120)
        return client.connect()

    # Offline with its will pending (DISCONNECT 0x04 keeps the will), then back elsewhere.
    gone = withDelayedWill(0, "offline")
    gone.client.disconnect(reasoncode=mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=4))
    assert gone.disconnected.wait(5)
    back = PahoClient(cluster.brokers[2].port, f"offline-{uniq}", mqtt.MQTTv5, False, 0, 300)
    clients.append(back)
    assert back.connect().sessionPresent is True
    # Offline with its will pending, then a Clean Start connection elsewhere: the session
    # ends there, but a new connection came before the delay, so no will either.
    fresh = withDelayedWill(0, "fresh")
    fresh.client.disconnect(reasoncode=mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=4))
    assert fresh.disconnected.wait(5)
    anew = PahoClient(cluster.brokers[2].port, f"fresh-{uniq}", mqtt.MQTTv5, True)
    clients.append(anew)
    assert anew.connect().sessionPresent is False
    # Connected, and its client id connects on another broker (taken over).
    live = withDelayedWill(0, "online")
    other = PahoClient(cluster.brokers[2].port, f"online-{uniq}", mqtt.MQTTv5, False, 0, 300)
    clients.append(other)
    assert other.connect().sessionPresent is True
    assert live.disconnected.wait(5)
    # A will without delay, published after those moves by the same broker, arrives
    # after anything they wrongly published (one link, in order).
    control = PahoClient(cluster.brokers[0].port, f"control-{uniq}", mqtt.MQTTv5)
    clients.append(control)
    control.client.will_set(f"will/{uniq}/control", b"control", 1)
    control.connect()
    control.client.disconnect(reasoncode=mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=4))
    assert [m.payload for m in watcher.untilTopic(f"will/{uniq}/control")] == []


@pytest.mark.parametrize("shared", [False, True], ids=["subscription", "shared-group"])
def test_sessionMovingBetweenNodesUnderTrafficMissesNothing(
    cluster: LocalCluster, clients: list[PahoClient], uniq: str, shared: bool
) -> None:
    """A persistent session bounces between two nodes while a third publishes QoS 1:
    every acknowledged message reaches it, whatever the route tables said meanwhile
    (the brokers it left send on what still reaches them: cluster/moves.py).  Also as
    the only member of a shared group (the group's turn may fall on a broker it left)."""
    cid = f"bouncer-{uniq}"
    topic = f"b/{uniq}/t"
    publisher = connect(clients, cluster.brokers[1].port, f"pub-{uniq}")
    acknowledged: list[bytes] = []
    stop = threading.Event()

    def publish() -> None:
        pending: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
        for i in range(20_000):
            if stop.is_set():
                break
            payload = f"n{i}".encode()
            pending.append((payload, publisher.client.publish(topic, payload, 1)))
            if len(pending) >= 10:
                for done, info in pending:
                    info.wait_for_publish(10)
                    if info.is_published():
                        acknowledged.append(done)
                pending.clear()
                time.sleep(0.002)
        for done, info in pending:
            info.wait_for_publish(10)
            if info.is_published():
                acknowledged.append(done)

    received: set[bytes] = set()
    current: PahoClient | None = None

    def moveTo(node: int) -> PahoClient:
        nonlocal current
        client = PahoClient(
            cluster.brokers[node].port, cid, mqtt.MQTTv5, cleanSession=False, sessionExpiry=300
        )
        clients.append(client)
        if current is not None:
            # The old connection is taken over; paho must not reconnect by itself.
            current.client.reconnect_delay_set(min_delay=120, max_delay=120)
        client.connect()
        if current is not None:
            assert current.disconnected.wait(5)
            collect(current)
        current = client
        return client

    def collect(client: PahoClient) -> None:
        while not client.messages.empty():
            payload = client.messages.get().payload
            if payload != PROBE:
                received.add(payload)

    first = moveTo(0)
    first.subscribe(f"$share/g{uniq}/b/{uniq}/#" if shared else f"b/{uniq}/#", 1)
    awaitRoute(publisher, first, f"b/{uniq}/probe")
    sender = threading.Thread(target=publish, daemon=True)
    sender.start()
    try:
        for move in range(8):
            time.sleep(0.15)
            moveTo(2 if move % 2 == 0 else 0)
    finally:
        time.sleep(0.3)
        stop.set()
        sender.join(30)
    assert not sender.is_alive()
    assert len(acknowledged) > 100
    last = current
    assert last is not None
    deadline = time.monotonic() + 20
    while not set(acknowledged) <= received and time.monotonic() < deadline:
        try:
            received.add(last.expect(0.2).payload)
        except AssertionError:
            pass
    missing = [p for p in acknowledged if p not in received]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged messages lost"


def test_clusterMetricsAndNodeList(cluster: LocalCluster) -> None:
    b1 = cluster.brokers[0]
    with urlopen(f"http://127.0.0.1:{b1.httpPort}/metrics") as r:
        metrics = r.read().decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("robustmq_cluster_")
    }
    # Earlier tests in this module published from b1 to other nodes.
    assert samples["robustmq_cluster_forwarded_messages_total"] > 0
    assert samples['robustmq_cluster_nodes{state="alive"}'] == 5
    assert 'robustmq_cluster_link_pending{peer="b2"}' in samples
    with urlopen(f"http://127.0.0.1:{b1.httpPort}/api/v1/nodes") as r:
        nodes = {n["id"]: n for n in json.load(r)["data"]}
    assert set(nodes) == {"b1", "b2", "b3", "p1", "p2"}
    assert nodes["b2"]["addresses"]["mqtt"] == f"127.0.0.1:{cluster.brokers[1].port}"


def post(port: int, path: str, body: dict) -> dict:
    request = Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urlopen(request) as r:
        return json.load(r)  # type: ignore[no-any-return]


def refused(port: int, clientId: str, username: str | None = None, password: str = "") -> bool:
    """Whether CONNECT is refused (paho reports a failure reason code)."""
    client = PahoClient(port, clientId)
    if username is not None:
        client.client.username_pw_set(username, password)
    try:
        client.client.connect("127.0.0.1", port)
        client.client.loop_start()
        client._started = True
        deadline = time.monotonic() + 5
        while client.connectResult is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.connectResult is not None, "no CONNACK"
        return bool(client.connectResult.is_failure)
    finally:
        client.stop()


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def test_usersAndBansAreClusterWide(cluster: LocalCluster, uniq: str) -> None:
    b1, b2, b3 = cluster.brokers
    # A user added on b1 authenticates on b3: a wrong password is refused there.
    post(b1.httpPort, "/api/v1/users", {"username": f"u{uniq}", "password": "right-pw"})
    eventually(lambda: refused(b3.port, f"c-{uniq}", f"u{uniq}", "wrong-pw"), "user known on b3")
    # (retried: a CONNECT may meet a busy placement center on a loaded machine)
    eventually(
        lambda: not refused(b3.port, f"c-{uniq}", f"u{uniq}", "right-pw"),
        "the right password accepted on b3",
    )
    # A ban made on b2 holds on b3 and b1, and closes the client where it is connected.
    banned = f"banned-{uniq}"
    assert not refused(b1.port, banned)
    victim = PahoClient(b3.port, banned).connect()
    victim.client.reconnect_delay_set(min_delay=120, max_delay=120)
    post(b2.httpPort, "/api/v1/bans", {"kind": "clientid", "value": banned, "duration": 120})
    try:
        assert victim.disconnected.wait(10), "the banned client stayed connected on b3"
    finally:
        victim.stop()
    eventually(lambda: refused(b3.port, banned), "ban in force on b3")
    eventually(lambda: refused(b1.port, banned), "ban in force on b1")
    # Lifted on b3: gone everywhere.
    request = Request(
        f"http://127.0.0.1:{b3.httpPort}/api/v1/bans/clientid/{banned}", method="DELETE"
    )
    urlopen(request).close()
    eventually(lambda: not refused(b1.port, banned), "ban lifted on b1")
