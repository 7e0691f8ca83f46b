"""What strict clients and test suites check beyond reason codes, over raw sockets:
acknowledgement types, Session Present, CONNACK contents, Reason Strings,
topic-level limits, and QoS 2 flow control under 3.1.1 (with paho).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from robustmq.protocols.mqtt._codec import encodeSubscribe
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    MQTT31,
    MQTT311,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Pubrec,
    Reason,
    Suback,
)
from robustmq.testing.process import BrokerProcess
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(
        """
[mqtt]
sys_interval = 0
max_awaiting_rel = 20
close_linger = 1.0
"""
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def clients(node: BrokerProcess) -> Iterator[Any]:
    made: list[RawClient] = []

    def make(broker: BrokerProcess | None = None) -> RawClient:
        c = RawClient((broker or node).port, timeout=TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    return f"ex-{request.node.name[-30:]}-{time.monotonic_ns() % 1_000_000}"


def connected(clients: Any, cid: str, level: int = MQTT311, **fields: Any) -> RawClient:
    c = clients()
    ack = c.connect(cid, level, **fields)
    assert ack.returnCode == 0
    return c


def closedWith(c: RawClient) -> int | None:
    """The DISCONNECT reason (5.0) or None (3.x), once the broker closed the connection."""
    packets = c.waitClosed(TIMEOUT)
    for p in packets:
        if p.type == 14:
            return p.reasonCode  # type: ignore[attr-defined,no-any-return]
    return None


# Item 2: an acknowledgement of the wrong type is a protocol error


def _delivery(clients: Any, uid: str, level: int, qos: int) -> tuple[RawClient, int]:
    """A subscriber at C{level} with one QoS C{qos} delivery in flight; its packet id."""
    sub = connected(clients, f"{uid}-sub", level)
    sub.subscribe([(f"wrong/{uid}", qos)])
    pub = connected(clients, f"{uid}-pub")
    pub.publish(f"wrong/{uid}", b"m", qos)
    packet = sub.expectPublish()
    assert packet.qos == qos and packet.packetId is not None
    return sub, packet.packetId


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize(
    "qos, wrong",
    [(1, PUBREC), (1, PUBCOMP), (2, PUBACK), (2, PUBCOMP)],
    ids=["PUBREC-for-QoS1", "PUBCOMP-for-QoS1", "PUBACK-for-QoS2", "PUBCOMP-before-PUBREC"],
)
def test_wrong_acknowledgement_closes(
    clients: Any, uid: str, level: int, qos: int, wrong: int
) -> None:
    """PUBACK ends QoS 1 only, PUBREC/PUBCOMP QoS 2 only, PUBCOMP follows PUBREL
    (MQTT 3.1.1 and 5.0 section 4.3): anything else is a protocol error that closes
    the connection, under 5.0 with DISCONNECT 0x82 (section 4.13)."""
    sub, pid = _delivery(clients, uid, level, qos)
    sub.sendAck(wrong, pid)
    assert closedWith(sub) == (Reason.PROTOCOL_ERROR if level == MQTT5 else None)


def test_acknowledgement_of_an_unknown_id_is_ignored(clients: Any, uid: str) -> None:
    """PUBACK/PUBCOMP for no delivery in flight (e.g. a resend already completed) is
    not an error."""
    c = connected(clients, uid, MQTT5)
    c.sendAck(PUBACK, 999)
    c.sendAck(PUBCOMP, 998)
    assert c.ping() is not None


# Item 4: Session Present


@pytest.mark.parametrize("level", [MQTT31, MQTT311], ids=["3.1", "3.1.1"])
def test_session_present_0_with_clean_session_after_a_persistent_one(
    clients: Any, uid: str, level: int
) -> None:
    """MQTT-3.2.2-1 (3.1.1): clean session 1 → Session Present 0."""
    old = connected(clients, uid, level, cleanSession=False)
    old.subscribe([(f"sp/{uid}", 1)])
    old.disconnect()
    old.waitClosed(TIMEOUT)
    ack = clients().connect(uid, level, cleanSession=True)
    assert (ack.returnCode, ack.sessionPresent) == (0, False)


def test_session_present_always_0_under_mqtt31(clients: Any, uid: str) -> None:
    """MQTT 3.1 has no Session Present flag: the first CONNACK byte is reserved, 0,
    also when a persistent session is resumed (as mosquitto)."""
    old = connected(clients, uid, MQTT31, cleanSession=False)
    old.subscribe([(f"sp31/{uid}", 1)])
    old.disconnect()
    old.waitClosed(TIMEOUT)
    ack = clients().connect(uid, MQTT31, cleanSession=False)
    assert (ack.returnCode, ack.sessionPresent) == (0, False)


@pytest.mark.parametrize(
    "level, fields",
    [(MQTT311, {"cleanSession": False}), (MQTT5, {"cleanSession": False})],
    ids=["3.1.1", "5.0"],
)
def test_session_present_0_when_taking_over_a_session_that_ends_with_its_connection(
    clients: Any, uid: str, level: int, fields: dict[str, Any]
) -> None:
    """The old connection had clean session 1 (5.0: Session Expiry 0), so its session
    ends when the takeover closes it (MQTT-3.1.4-3); the new connection's Clean Start 0
    finds no session (MQTT-3.1.4-4): Session Present 0 and none of its subscriptions."""
    old = connected(clients, uid, level, cleanSession=True)
    old.subscribe([(f"to/{uid}", 1)])
    new = clients()
    ack = new.connect(uid, level, **fields)
    assert (ack.returnCode, ack.sessionPresent) == (0, False)
    old.waitClosed(TIMEOUT)
    connected(clients, f"{uid}-pub").publish(f"to/{uid}", b"x", 1)
    new.expectNothing(0.3)


def test_session_present_1_when_taking_over_a_persistent_session(clients: Any, uid: str) -> None:
    """The counterpart: a persistent session survives the takeover and is resumed."""
    connected(clients, uid, MQTT311, cleanSession=False)
    ack = clients().connect(uid, MQTT311, cleanSession=False)
    assert (ack.returnCode, ack.sessionPresent) == (0, True)


# Item 6: CONNACK carries only what differs from the defaults, in a stable order


def test_connack_properties_in_order(clients: Any, uid: str) -> None:
    """The defaults: Receive Maximum (max_awaiting_rel), Maximum Packet Size, Topic
    Alias Maximum 10, in the order of section 3.2.2.3; Assigned Client Identifier in its
    place when the broker assigned one."""
    ack = clients().connect("", MQTT5)
    assert list(ack.properties) == [
        "receive_maximum",
        "maximum_packet_size",
        "assigned_client_identifier",
        "topic_alias_maximum",
    ]
    assert ack.properties["receive_maximum"] == 20
    assert ack.properties["maximum_packet_size"] == 1048576
    assert ack.properties["topic_alias_maximum"] == 10


def test_connack_without_properties_when_everything_is_default(uid: str) -> None:
    """No Maximum Packet Size when none is configured, no Topic Alias Maximum at 0,
    no Receive Maximum at 65535: an empty property block."""
    with BrokerProcess(
        "[mqtt]\nmax_packet_size = 0\ntopic_alias_maximum = 0\nmax_awaiting_rel = 65535\n"
    ) as bare:
        with RawClient(bare.port, timeout=TIMEOUT) as c:
            ack = c.connect(uid, MQTT5)
            assert ack.returnCode == 0
            assert ack.properties == {}


# Item 7: Reason Strings only when asked for, and never past the client's maximum


def _pfiRefusal(c: RawClient) -> Any:
    pid = c.publish("rs/t", b"\xff", 1, complete=False, properties={"payload_format_indicator": 1})
    assert pid is not None
    return c.expectAck(PUBACK, pid)


def test_reason_string_by_default(clients: Any, uid: str) -> None:
    c = connected(clients, uid, MQTT5)
    ack = _pfiRefusal(c)
    assert ack.reasonCode == Reason.PAYLOAD_FORMAT_INVALID
    assert "UTF-8" in ack.properties["reason_string"]


def test_no_reason_string_without_problem_information(clients: Any, uid: str) -> None:
    """Request Problem Information 0: no Reason String on an acknowledgement (MQTT-3.1.2-29)."""
    c = connected(clients, uid, MQTT5, properties={"request_problem_information": 0})
    ack = _pfiRefusal(c)
    assert (ack.reasonCode, ack.properties) == (Reason.PAYLOAD_FORMAT_INVALID, {})


def test_reason_string_left_out_beyond_the_clients_maximum_packet_size(
    clients: Any, uid: str
) -> None:
    """The Reason String would take the PUBACK past the client's Maximum Packet Size of
    16 bytes: it is left out (MQTT-3.4.2-2), the reason code still arrives."""
    c = connected(clients, uid, MQTT5, properties={"maximum_packet_size": 16})
    ack = _pfiRefusal(c)
    assert (ack.reasonCode, ack.properties) == (Reason.PAYLOAD_FORMAT_INVALID, {})


def test_reason_string_left_out_of_disconnect_beyond_the_maximum(clients: Any, uid: str) -> None:
    c = connected(clients, uid, MQTT5, properties={"maximum_packet_size": 8})
    c.send(b"\x36\x05\x00\x01t\x00\x01")  # QoS 3: malformed
    disconnect = c.expectDisconnect()
    assert (disconnect.reasonCode, disconnect.properties) == (Reason.MALFORMED_PACKET, {})


def test_bare_reason_codes_when_reason_strings_are_off(uid: str) -> None:
    with BrokerProcess("[mqtt]\nreason_strings = false\n") as bare:
        with RawClient(bare.port, timeout=TIMEOUT) as c:
            assert c.connect(uid, MQTT5).returnCode == 0
            ack = _pfiRefusal(c)
            assert (ack.reasonCode, ack.properties) == (Reason.PAYLOAD_FORMAT_INVALID, {})


# Item 9: topic-level limits


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
def test_filter_beyond_max_topic_levels_is_refused_alone(
    clients: Any, uid: str, level: int
) -> None:
    """A filter of 65,535 levels (default max_topic_levels 128) gets SUBACK 0x80 (3.x) /
    0x97 (5.0) in its place; the other filters of the SUBSCRIBE are granted and the
    connection and its earlier subscriptions are unaffected."""
    c = connected(clients, uid, level)
    c.subscribe([(f"lv/{uid}/before", 1)])
    deep = "/" * 65534
    suback = c.subscribe([(f"lv/{uid}/a", 1), (deep, 1), (f"lv/{uid}/b", 0)])
    refusedCode = Reason.QUOTA_EXCEEDED if level == MQTT5 else 0x80
    assert suback.returnCodes == [1, refusedCode, 0]
    pub = connected(clients, f"{uid}-pub")
    for topic in ("before", "a", "b"):
        pub.publish(f"lv/{uid}/{topic}", topic.encode(), 1)
    assert sorted(c.expectPublish().payload for _ in range(3)) == [b"a", b"b", b"before"]


def test_deep_filters_cost_no_more_than_reading_them(clients: Any, uid: str) -> None:
    """Fifty SUBSCRIBEs of a 65,535-level filter are answered as fast as any others
    (bounded by the test's timeout, well below what building a trie path would take)."""
    c = connected(clients, uid, MQTT311)
    deep = "+/" * 32767 + "#"
    pid0 = 100
    c.send(b"".join(encodeSubscribe(pid0 + i, [(deep, 0)]) for i in range(50)))
    for _ in range(50):
        assert c.expect(Suback, TIMEOUT).returnCodes == [0x80]
    assert c.ping() is not None


# Survive damage item 5: a 3.1.1 QoS 2 publisher that sends its whole queue at once


def test_mqtt311_qos2_burst_beyond_max_awaiting_rel_is_paced(clients: Any, uid: str) -> None:
    """Under 3.1.1 (no Receive Maximum) 200 QoS 2 PUBLISHes sent at once, ten times
    max_awaiting_rel, are all acknowledged in order without a disconnect; each is
    routed once."""
    sub = connected(clients, f"{uid}-sub", MQTT311)
    sub.subscribe([(f"burst/{uid}", 2)])
    c = connected(clients, uid, MQTT311)
    c.send(
        b"".join(c.encodePublish(f"burst/{uid}", b"%d" % i, 2, packetId=i + 1) for i in range(200))
    )
    for i in range(200):
        rec = c.expect(Pubrec, keepOthers=True)
        assert rec.packetId == i + 1
        c.sendAck(PUBREL, rec.packetId)
    got = []
    while len(got) < 200:
        p = sub.expectPublish()
        sub.ack(p)
        got.append(int(p.payload))
    assert got == list(range(200))
    sub.expectNothing(0.3)


def test_paho_resending_10000_qos2_messages_completes(node: BrokerProcess, uid: str) -> None:
    """paho (3.1.1, persistent session) queues 10,000 QoS 2 messages while offline and
    sends them all at once when it connects (it resends its whole queue on every
    reconnect).  Each time more than max_awaiting_rel awaited PUBREL the broker used to
    disconnect it, and it never got through.  Now every message arrives exactly once."""
    n = 10_000
    topic = f"paho2/{uid}"
    received: list[int] = []
    done = threading.Event()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{uid}-sub", protocol=mqtt.MQTTv311)

    def onMessage(client: Any, userdata: Any, message: Any) -> None:
        received.append(int(message.payload))
        if len(received) >= n:
            done.set()

    subscribed = threading.Event()
    sub.on_message = onMessage
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 2)
    sub.connect("127.0.0.1", node.port)
    sub.loop_start()
    assert subscribed.wait(TIMEOUT)

    pub = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=uid, protocol=mqtt.MQTTv311, clean_session=False
    )
    pub.max_inflight_messages_set(0)  # no client-side window: everything goes out at once
    pub.max_queued_messages_set(0)
    connects: list[int] = []
    completed: set[int] = set()
    pub.on_connect = lambda c, u, f, rc, p: connects.append(int(rc.value))
    pub.on_publish = lambda c, u, mid, rc, p: completed.add(mid)
    mids = {pub.publish(topic, b"%d" % i, 2).mid for i in range(n)}  # queued: not connected
    try:
        pub.connect("127.0.0.1", node.port)
        pub.loop_start()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not mids <= completed:
            time.sleep(0.1)
        assert mids <= completed, len(mids - completed)
        assert done.wait(10)
        time.sleep(0.3)
        assert sorted(received) == list(range(n))  # nothing lost, nothing twice
        assert connects == [0]  # one connection: never kicked
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()


def test_mqtt5_qos2_beyond_receive_maximum_still_disconnects(clients: Any, uid: str) -> None:
    """Under 5.0 the client was told the Receive Maximum: DISCONNECT 0x93 stays."""
    c = connected(clients, uid, MQTT5)
    for pid in range(1, 22):
        c.send(c.encodePublish("rm5/t", b"x", 2, packetId=pid))
    assert closedWith(c) == Reason.RECEIVE_MAXIMUM_EXCEEDED


# Item 8: shared subscriptions


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
def test_qos0_shared_subscription_reaches_both_connected_members(
    clients: Any, uid: str, level: int
) -> None:
    """Both members of a QoS 0 group receive (round robin), and every message goes to
    exactly one of them (MQTT 5.0 section 4.8.2)."""
    members = [connected(clients, f"{uid}-{i}", level) for i in range(2)]
    for m in members:
        m.subscribe([(f"$share/g/sh/{uid}", 0)])
    pub = connected(clients, f"{uid}-pub", level)
    for i in range(20):
        pub.publish(f"sh/{uid}", b"%d" % i, 0)
    pub.ping()
    got: list[list[bytes]] = [[], []]
    for i, m in enumerate(members):
        try:
            while True:
                got[i].append(m.expectPublish(timeout=0.5).payload)
        except TimeoutError:
            pass
    assert got[0] and got[1], got
    assert sorted(got[0] + got[1], key=int) == [b"%d" % i for i in range(20)]
