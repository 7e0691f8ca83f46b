"""A subscriber that reads nothing cannot freeze publishers with QoS 0 traffic.

Back-pressure (docs/architecture.md) pauses a publisher while a subscriber's
queue is full, so that nothing a publisher was acknowledged for is dropped.
That only makes sense where an acknowledgement depends on it: a QoS 0
message to a full queue is dropped for that subscriber (counted), as
mosquitto and EMQX do, and the publisher goes on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from robustmq.protocols.mqtt._packets import MQTT311, PUBACK, Publish
from robustmq.testing.process import BrokerProcess
from robustmq.testing.rawclient import RawClient

TIMEOUT = 10.0
#: Long enough that a publisher paused by the stuck subscriber would fail the test.
CONGESTION_TIMEOUT = 120


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(
        f"""
[mqtt]
sys_interval = 0.5
max_queued_messages = 20
congestion_timeout = {CONGESTION_TIMEOUT}
"""
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


def _stuck(node: BrokerProcess, cid: str, topic: str, qos: int) -> RawClient:
    """A subscriber that never reads again, with a small receive buffer."""
    c = RawClient(node.port, timeout=TIMEOUT)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert c.connect(cid, MQTT311).returnCode == 0
    c.subscribe([(topic, qos)])
    return c


def test_non_reading_qos0_subscriber_does_not_pause_the_publisher(node: BrokerProcess) -> None:
    """8 MB of QoS 0 messages fill the stuck subscriber's socket and queue; the
    publisher's next QoS 1 PUBLISH is still acknowledged at once (not after
    congestion_timeout), a healthy subscriber gets everything, and the drops are
    counted in $SYS/broker/messages/dropped."""
    topic = "slow/qos0"
    stuck = _stuck(node, "stuck-qos0", topic, 0)
    healthy = RawClient(node.port, timeout=TIMEOUT)
    monitor = RawClient(node.port, timeout=TIMEOUT)
    pub = RawClient(node.port, timeout=TIMEOUT)
    try:
        assert healthy.connect("healthy-qos0").returnCode == 0
        healthy.subscribe([(topic, 0)])
        assert monitor.connect("monitor-qos0").returnCode == 0
        assert pub.connect("pub-qos0").returnCode == 0
        payload = b"x" * 1024
        n = 8000
        batch = pub.encodePublish(topic, payload) * 100
        for _ in range(n // 100):
            pub.send(batch)
            # Keep up with the healthy subscriber so that it is not the slow one.
            for _ in range(100):
                healthy.expectPublish()
        pid = pub.publish(topic, b"last", 1, complete=False)
        assert pid is not None
        assert pub.expectAck(PUBACK, pid, TIMEOUT).packetId == pid
        assert healthy.expectPublish().payload == b"last"
        monitor.subscribe([("$SYS/broker/messages/dropped", 0)])
        dropped = 0
        while dropped == 0:
            dropped = int(monitor.expect(Publish, TIMEOUT).payload)
        assert dropped > 0
    finally:
        for c in (stuck, healthy, monitor, pub):
            c.close()


def test_new_client_ids_do_not_hold_a_qos0_publisher(node: BrokerProcess) -> None:
    """The same with a fresh stuck subscriber every 1,000 messages (a client that
    reconnects under new client ids): the publisher is never held."""
    topic = "slow/cycling"
    pub = RawClient(node.port, timeout=TIMEOUT)
    stuck: list[RawClient] = []
    try:
        assert pub.connect("pub-cycling").returnCode == 0
        batch = pub.encodePublish(topic, b"y" * 1024) * 100
        for round_ in range(5):
            stuck.append(_stuck(node, f"stuck-cycling-{round_}", topic, 0))
            for _ in range(20):
                pub.send(batch)
            assert pub.ping(TIMEOUT) is not None
    finally:
        for c in [pub, *stuck]:
            c.close()
