"""Persistent sessions and retained messages survive restarts and SIGKILL (segment store).

Real `twistd robustmq` processes with `[storage] backend = "segment"`,
paho-mqtt clients over loopback.
"""

from __future__ import annotations

import queue
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from robustmq.testing.process import BrokerProcess, freePort

TIMEOUT = 10.0

SEGMENT = """
[storage]
backend = "segment"
sync = "interval"
sync_interval_ms = 50
"""


@pytest.fixture
def dataDir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="robustmq-durable-") as d:
        yield d


def node(dataDir: str, port: int) -> BrokerProcess:
    return BrokerProcess(SEGMENT, dataDir=dataDir, port=port)


class Sub:
    """A paho subscriber with a persistent session."""

    def __init__(self, port: int, clientId: str, protocol: int = mqtt.MQTTv311) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=clientId,
            protocol=protocol,
            clean_session=False if protocol != mqtt.MQTTv5 else None,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue = queue.Queue()
        self.subscribed: queue.Queue = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, flags, rc, p: self.connected.put(flags)
        self.client.on_subscribe = lambda *a: self.subscribed.put(1)
        self.port = port
        self.protocol = protocol

    def connect(self):
        if self.protocol == mqtt.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        return self.connected.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int) -> None:
        self.client.subscribe(topic, qos)
        self.subscribed.get(timeout=TIMEOUT)

    def drain(self, quiet: float = 1.0) -> list[mqtt.MQTTMessage]:
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_sessionsQueuedMessagesAndRetainedSurviveRestart(dataDir, protocol):
    port = freePort()
    uid = uuid.uuid4().hex[:8]
    first = node(dataDir, port).start()
    try:
        sub = Sub(port, f"durable-{uid}", protocol)
        sub.connect()
        sub.subscribe(f"d/{uid}/#", 2)
        sub.close()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(5):
            pub.publish(f"d/{uid}/q1", b"one-%d" % i, 1).wait_for_publish(TIMEOUT)
            pub.publish(f"d/{uid}/q2", b"two-%d" % i, 2).wait_for_publish(TIMEOUT)
        pub.publish(f"r/{uid}", b"retained!", 1, retain=True).wait_for_publish(TIMEOUT)
        pub.disconnect()
        pub.loop_stop()
    finally:
        # twistd re-raises the terminating signal after a clean shutdown.
        assert first.stop() in (0, -signal.SIGTERM)
        assert "Server Shut Down." in first.output()
    second = node(dataDir, port).start()
    try:
        out = second.output()
        assert "recovered 1 retained messages" in out
        assert "recovered 1 persistent sessions" in out
        sub = Sub(port, f"durable-{uid}", protocol)
        flags = sub.connect()
        assert flags.session_present
        got = sub.drain()
        sub.close()
        payloads = sorted(m.payload for m in got)
        expected = sorted([b"one-%d" % i for i in range(5)] + [b"two-%d" % i for i in range(5)])
        assert payloads == expected  # each exactly once
        # The subscription itself survived: a new message still arrives.
        late = Sub(port, f"late-{uid}", protocol)
        late.connect()
        late.subscribe(f"r/{uid}", 1)
        [retained] = late.drain(quiet=0.5)
        assert (retained.payload, retained.retain) == (b"retained!", True)
        late.close()
    finally:
        second.cleanup()


def test_acknowledgedMessagesSurviveSigkill(dataDir):
    """Every message PUBACKed/PUBCOMPed before a SIGKILL reaches the persistent
    subscriber after the restart; none twice at QoS 2."""
    port = freePort()
    uid = uuid.uuid4().hex[:8]
    first = node(dataDir, port).start()
    sub = Sub(port, f"crash-sub-{uid}")
    sub.connect()
    sub.subscribe(f"c/{uid}/#", 2)
    # Offline while messages are published: everything acknowledged must be held durably.
    sub.close()
    received: list[mqtt.MQTTMessage] = []
    ackedMids: set[int] = set()  # PUBACK / PUBCOMP seen (paho's network thread)
    sent: dict[int, bytes] = {}  # mid → payload (publisher thread only)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"crash-pub-{uid}")
    pub.max_inflight_messages_set(50)
    pub.on_publish = lambda client, userdata, mid, rc, props: ackedMids.add(mid)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    stop = threading.Event()

    def publisher() -> None:
        i = 0
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline and i < 20_000:
            qos = 1 if i % 2 else 2
            payload = b"m-%d-q%d" % (i, qos)
            info = pub.publish(f"c/{uid}/x", payload, qos)
            sent[info.mid] = payload
            i += 1
            if i % 50 == 0:
                time.sleep(0.005)

    thread = threading.Thread(target=publisher)
    thread.start()
    # Let traffic flow, then kill the broker mid-stream.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(ackedMids) < 500:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    stop.set()
    thread.join(10)
    pub.loop_stop()
    ackedBeforeCrash = {sent[mid] for mid in list(ackedMids) if mid in sent}
    assert len(ackedBeforeCrash) >= 100, "too little traffic before the crash to mean anything"

    second = node(dataDir, port).start()
    try:
        again = Sub(port, f"crash-sub-{uid}")
        flags = again.connect()
        assert flags.session_present
        # Until every acknowledged message is in, or nothing more comes for a while (a
        # loaded machine can pause delivery for seconds; a lost message never arrives).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            more = again.drain(quiet=5.0)
            received.extend(more)
            if not more or ackedBeforeCrash <= {m.payload for m in received}:
                break
        again.close()
        payloads = [m.payload for m in received]
        missing = ackedBeforeCrash - set(payloads)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        qos2 = [p for p in payloads if p.endswith(b"q2")]
        assert len(qos2) == len(set(qos2)), "a QoS 2 message was delivered twice"
    finally:
        second.cleanup()
        first.cleanup()


def test_pendingDelayedWillSurvivesRestartUnlessTheSessionResumes(dataDir):
    """MQTT 5 Will Delay: an offline session's will is stored with the session; after a
    restart it is published when due, unless its client came back first."""
    port = freePort()
    uid = uuid.uuid4().hex[:8]

    def client(name: str) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{name}-{uid}", protocol=mqtt.MQTTv5
        )
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        return c, props

    def goAwayWithWill(name: str) -> None:
        c, props = client(name)
        willProps = mqtt.Properties(mqtt.PacketTypes.WILLMESSAGE)
        willProps.WillDelayInterval = 4
        c.will_set(f"will/{uid}/{name}", name.encode(), 1, retain=True, properties=willProps)
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        c.publish(f"x/{uid}", b"", 1).wait_for_publish(TIMEOUT)  # connected
        # DISCONNECT 0x04: close and keep the will.
        c.disconnect(reasoncode=mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=4))
        c.loop_stop()

    first = node(dataDir, port).start()
    try:
        goAwayWithWill("back")
        goAwayWithWill("gone")
    finally:
        assert first.stop() in (0, -signal.SIGTERM)
    second = node(dataDir, port).start()
    try:
        back, props = client("back")
        resumed: queue.Queue = queue.Queue()
        back.on_connect = lambda c, u, flags, rc, p: resumed.put(flags.session_present)
        back.connect("127.0.0.1", port, clean_start=False, properties=props)
        back.loop_start()
        assert resumed.get(timeout=TIMEOUT) is True
        watcher = Sub(port, f"watch-{uid}", mqtt.MQTTv5)
        watcher.connect()
        watcher.subscribe(f"will/{uid}/#", 1)
        deadline = time.monotonic() + 20
        got: list[mqtt.MQTTMessage] = []
        while not any(m.topic.endswith("/gone") for m in got) and time.monotonic() < deadline:
            got += watcher.drain(quiet=0.2)
        assert [m.payload for m in got] == [b"gone"]
        # "back" was due no later than "gone": its will, retained, would be here.
        late = Sub(port, f"late-{uid}", mqtt.MQTTv5)
        late.connect()
        late.subscribe(f"will/{uid}/#", 1)
        assert [m.payload for m in late.drain(quiet=1.0)] == [b"gone"]
        for c in (watcher, late):
            c.close()
        back.disconnect()
        back.loop_stop()
    finally:
        second.cleanup()
