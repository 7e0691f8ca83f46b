"""End-to-end: the broker's protocol handling seen byte by byte with the raw test client.

The raw client sends exactly what a test chooses (wrong bytes included),
withholds acknowledgements and drops sockets without DISCONNECT; it parses
what the broker sends back with the broker's own codec.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from robustmq.protocols.mqtt import encodeConnect, encodePublish, encodeSubscribe
from robustmq.protocols.mqtt._codec import encodeAck
from robustmq.protocols.mqtt._packets import (
    MQTT31,
    MQTT311,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Connack,
    Connect,
    Pubrel,
    Suback,
)
from robustmq.testing.process import BrokerProcess
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0
SHARED_MAX_PACKET_SIZE = 65536  # as configured for the shared node in conftest

Raw = Callable[..., RawClient]
Paho = Callable[..., Any]


def waitForLog(broker: BrokerProcess, *needles: str, timeout: float = TIMEOUT) -> str:
    """The first log line containing every needle; fails after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        for line in broker.output().splitlines():
            if all(n in line for n in needles):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {needles!r} in:\n{broker.output()[-3000:]}")
        time.sleep(0.05)


def _connected(c: RawClient, cid: str, cleanSession: bool = True) -> RawClient:
    """C{c} after a CONNECT as C{cid} that the broker accepted."""
    assert c.connect(cid, cleanSession=cleanSession).returnCode == 0
    return c


def _subscribed(
    c: RawClient, cid: str, topic: str, qos: int, cleanSession: bool = True
) -> RawClient:
    """C{c} connected as C{cid} and subscribed to C{topic} at C{qos}."""
    _connected(c, cid, cleanSession).subscribe([(topic, qos)])
    return c


# CONNECT and CONNACK


def test_empty_client_id_with_clean_session_is_assigned_one(rawFactory: Raw, uniq: str) -> None:
    """MQTT-3.1.3-6: 3.1.1, clean session, zero-length id → accepted, and the session works."""
    c = rawFactory()
    ack = c.connect("", MQTT311, cleanSession=True)
    assert (ack.returnCode, ack.sessionPresent) == (0, False)
    assert c.subscribe([(f"{uniq}/echo", 1)]).returnCodes == [1]
    c.publish(f"{uniq}/echo", b"me", 1)
    packet = c.expectPublish()
    assert (packet.topic, packet.payload, packet.qos) == (f"{uniq}/echo", b"me", 1)


@pytest.mark.parametrize(
    "level, clean",
    [(MQTT311, False), (MQTT31, True), (MQTT31, False)],
    ids=["v311-persistent", "v31-clean", "v31-persistent"],
)
def test_empty_client_id_rejected(rawFactory: Raw, level: int, clean: bool) -> None:
    """MQTT-3.1.3-8 (clean session 0) and MQTT 3.1 (ids of 1-23 characters): CONNACK 2."""
    c = rawFactory()
    ack = c.connect("", level, cleanSession=clean)
    assert (ack.returnCode, ack.sessionPresent) == (2, False)
    assert c.waitClosed() == []


def test_unsupported_protocol_level_gets_connack_1(
    broker: BrokerProcess, rawFactory: Raw, uniq: str
) -> None:
    """MQTT-3.1.2-2: protocol name 'MQTT' with level 6 → CONNACK 1, then the socket closes."""
    c = rawFactory()
    ack = c.connect(f"{uniq}-v6", protocolLevel=6, protocolName="MQTT")
    assert (ack.returnCode, ack.sessionPresent) == (1, False)
    assert c.waitClosed() == []
    waitForLog(broker, "unsupported protocol level 6", "CONNACK")


@pytest.mark.parametrize(
    "name, level",
    [("MQIsdp", 6), ("MQTT", 3), ("MQIsdp", 4)],
    ids=["MQIsdp-6", "MQTT-3", "MQIsdp-4"],
)
def test_mismatched_protocol_name_and_level_not_accepted(
    rawFactory: Raw, uniq: str, name: str, level: int
) -> None:
    """3.1 is 'MQIsdp' level 3 and 3.1.1 is 'MQTT' level 4; any other pair is refused.

    MQTT-3.1.2-1/-2: CONNACK 1 then close (or, for a wrong name, just a close).
    Never accepted, nor refused for a reason that is not the protocol
    (the client id here is valid).
    """
    c = rawFactory()
    c.send(encodeConnect(Connect(f"{uniq}-x", protocolLevel=level, protocolName=name)))
    try:
        packets = c.waitClosed()
    except TimeoutError:
        raise AssertionError(
            f"CONNECT with {name!r} level {level} not closed; got {list(c.received)}"
        ) from None
    assert [(type(p).__name__, getattr(p, "returnCode", None)) for p in packets] in (
        [],
        [("Connack", 1)],
    )


def test_connect_fed_one_byte_at_a_time(rawFactory: Raw, uniq: str) -> None:
    c = rawFactory()
    data = encodeConnect(Connect(f"{uniq}-slow", keepAlive=30)) + encodeSubscribe(
        1, [(f"{uniq}/t", 2)]
    )
    for i in range(len(data)):
        c.send(data[i : i + 1])
    assert c.expect(Connack).returnCode == 0
    assert c.expect(Suback).returnCodes == [2]


# Sessions


def test_persistent_session_queues_qos1_and_qos2_but_not_qos0(rawFactory: Raw, uniq: str) -> None:
    cid = f"{uniq}-persistent"
    topic = f"{uniq}/t"
    c = rawFactory()
    assert c.connect(cid, cleanSession=False).sessionPresent is False
    assert c.subscribe([(topic, 2)]).returnCodes == [2]
    c.disconnect()
    assert c.waitClosed() == []
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.publish(topic, b"zero", 0)
    pub.publish(topic, b"one", 1)
    pub.publish(topic, b"two", 2)
    again = rawFactory()
    ack = again.connect(cid, cleanSession=False)
    assert (ack.returnCode, ack.sessionPresent) == (0, True)
    got = []
    for _ in range(2):
        packet = again.expectPublish()
        got.append((packet.payload, packet.qos, packet.dup))
        again.ack(packet)
    assert got == [(b"one", 1, False), (b"two", 2, False)]
    # QoS 0 was not queued (queue_qos0_offline is off by default): next comes a live message.
    pub.publish(topic, b"live", 1)
    packet = again.expectPublish()
    assert (packet.payload, packet.qos) == (b"live", 1)


def test_session_takeover(broker: BrokerProcess, rawFactory: Raw, uniq: str) -> None:
    """MQTT-3.1.4-2: a second CONNECT with the same id closes the first connection."""
    cid = f"{uniq}-dup"
    topic = f"{uniq}/t"
    first = _subscribed(rawFactory(), cid, topic, 1, cleanSession=False)
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.publish(topic, b"in-flight", 1)
    unacked = first.expectPublish()
    assert (unacked.payload, unacked.dup) == (b"in-flight", False)
    second = rawFactory()
    ack = second.connect(cid, cleanSession=False)
    assert (ack.returnCode, ack.sessionPresent) == (0, True)
    assert first.waitClosed() == []
    waitForLog(broker, f"client {cid} taken over by a new connection")
    # The session continues: its unacknowledged delivery is resent, then live traffic flows.
    resent = second.expectPublish()
    assert (resent.payload, resent.dup, resent.packetId) == (b"in-flight", True, unacked.packetId)
    second.ack(resent)
    pub.publish(topic, b"after-takeover", 1)
    packet = second.expectPublish()
    assert (packet.topic, packet.payload, packet.qos) == (topic, b"after-takeover", 1)
    second.ack(packet)


@pytest.mark.parametrize("close", ["disconnect", "drop"])
def test_unacked_qos1_resent_with_dup_and_same_packet_id(
    rawFactory: Raw, uniq: str, close: str
) -> None:
    """MQTT-4.4.0-1: on reconnect with clean session 0, unacknowledged PUBLISHes are resent."""
    cid = f"{uniq}-sub"
    topic = f"{uniq}/t"
    sub = _subscribed(rawFactory(), cid, topic, 1, cleanSession=False)
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.publish(topic, b"unacked", 1)
    first = sub.expectPublish()
    assert (first.payload, first.qos, first.dup) == (b"unacked", 1, False)
    if close == "disconnect":
        sub.disconnect()
        sub.waitClosed()
    else:
        sub.close()
    again = rawFactory()
    assert again.connect(cid, cleanSession=False).sessionPresent is True
    resent = again.expectPublish()
    assert (resent.topic, resent.payload, resent.qos, resent.dup, resent.packetId) == (
        topic,
        b"unacked",
        1,
        True,
        first.packetId,
    )
    again.ack(resent)
    # Acknowledged now: a further reconnect gets nothing resent, only live messages.
    again.disconnect()
    again.waitClosed()
    third = rawFactory()
    assert third.connect(cid, cleanSession=False).sessionPresent is True
    pub.publish(topic, b"next", 1)
    packet = third.expectPublish()
    assert (packet.payload, packet.dup) == (b"next", False)


def test_unacked_qos2_pubrel_resent_on_reconnect(rawFactory: Raw, uniq: str) -> None:
    """A QoS 2 delivery past PUBREC resumes with PUBREL (MQTT-4.4.0-1)."""
    cid = f"{uniq}-sub"
    topic = f"{uniq}/t"
    sub = _subscribed(rawFactory(), cid, topic, 2, cleanSession=False)
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.publish(topic, b"exactly-once", 2)
    packet = sub.expectPublish()
    assert (packet.payload, packet.qos) == (b"exactly-once", 2)
    sub.send(encodeAck(PUBREC, packet.packetId))
    assert sub.expect(Pubrel).packetId == packet.packetId
    sub.close()  # no PUBCOMP
    again = rawFactory()
    assert again.connect(cid, cleanSession=False).sessionPresent is True
    rel = again.expect(Pubrel)
    assert rel.packetId == packet.packetId
    again.send(encodeAck(PUBCOMP, rel.packetId))
    pub.publish(topic, b"next", 2)
    nxt = again.expectPublish()
    assert (nxt.payload, nxt.dup) == (b"next", False)  # not the old message again


def test_inbound_qos2_duplicate_delivered_once(rawFactory: Raw, uniq: str) -> None:
    """The same packet id re-sent before PUBREL is not routed twice (MQTT-4.3.3-2)."""
    topic = f"{uniq}/t"
    sub = _subscribed(rawFactory(), f"{uniq}-sub", topic, 2)
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.send(encodePublish(topic.encode(), b"once", 2, packetId=7))
    pub.expectAck(PUBREC, 7)
    pub.send(encodePublish(topic.encode(), b"once", 2, dup=True, packetId=7))
    pub.expectAck(PUBREC, 7)
    pub.send(encodeAck(PUBREL, 7))
    pub.expectAck(PUBCOMP, 7)
    # After PUBCOMP the id is free again: a new message with it is a new message.
    pub.publish(topic, b"sentinel", 2, packetId=7)
    got = []
    while True:
        packet = sub.expectPublish()
        sub.ack(packet)
        got.append(packet.payload)
        if packet.payload == b"sentinel":
            break
    assert got == [b"once", b"sentinel"]


# Will


@pytest.mark.parametrize("level", [MQTT31, MQTT311], ids=["v31", "v311"])
def test_will_published_when_socket_closes(rawFactory: Raw, uniq: str, level: int) -> None:
    willTopic = f"{uniq}/will"
    watcher = _subscribed(rawFactory(), f"{uniq}-watcher", willTopic, 2)
    dying = rawFactory()
    ack = dying.connect(
        f"{uniq}-dying", level, willTopic=willTopic, willPayload=b"bye", willQos=2, willRetain=True
    )
    assert ack.returnCode == 0
    dying.close()
    will = watcher.expectPublish()
    assert (will.topic, will.payload, will.qos, will.retain) == (willTopic, b"bye", 2, False)
    watcher.ack(will)
    late = _subscribed(rawFactory(), f"{uniq}-late", willTopic, 1)
    retained = late.expectPublish()
    assert (retained.payload, retained.qos, retained.retain) == (b"bye", 1, True)


def test_will_not_published_after_disconnect_raw(rawFactory: Raw, uniq: str) -> None:
    willTopic = f"{uniq}/will"
    watcher = _subscribed(rawFactory(), f"{uniq}-watcher", f"{uniq}/#", 1)
    leaving = rawFactory()
    leaving.connect(f"{uniq}-leaving", willTopic=willTopic, willPayload=b"bye", willQos=1)
    leaving.disconnect()
    assert leaving.waitClosed() == []
    pub = _connected(rawFactory(), f"{uniq}-pub")
    pub.publish(f"{uniq}/sentinel", b"end", 1)
    packet = watcher.expectPublish()
    assert packet.topic == f"{uniq}/sentinel"


def test_will_published_on_keepalive_timeout(
    broker: BrokerProcess, rawFactory: Raw, uniq: str
) -> None:
    willTopic = f"{uniq}/will"
    watcher = _subscribed(rawFactory(), f"{uniq}-watcher", willTopic, 1)
    silent = rawFactory()
    silent.connect(f"{uniq}-silent", keepAlive=1, willTopic=willTopic, willPayload=b"timeout")
    will = watcher.expectPublish(timeout=4.0)
    assert (will.topic, will.payload, will.qos, will.retain) == (willTopic, b"timeout", 0, False)
    assert silent.waitClosed(timeout=1.0) == []
    waitForLog(broker, f"client {uniq}-silent silent for")


# Keep-alive


def test_keepalive_silence_closes_within_one_and_a_half_periods(
    broker: BrokerProcess, rawFactory: Raw, uniq: str
) -> None:
    """MQTT-3.1.2-24: keep alive 1 s and nothing sent → closed after ~1.5 s (well within 3 s)."""
    c = rawFactory()
    c.connect(f"{uniq}-quiet", keepAlive=1)
    assert c.waitClosed(timeout=3.0) == []
    waitForLog(broker, f"client {uniq}-quiet silent for", "keep alive 1s")


def test_keepalive_pings_keep_the_connection_open(rawFactory: Raw, uniq: str) -> None:
    c = rawFactory()
    c.connect(f"{uniq}-pinger", keepAlive=1)
    end = time.monotonic() + 3.0  # twice the 1.5 s limit
    while time.monotonic() < end:
        c.ping(timeout=1.0)
        time.sleep(0.5)  # the stimulus: one PINGREQ every half period
    assert c.isOpen()
    c.ping(timeout=1.0)
    # Then silence: closed again.
    assert c.waitClosed(timeout=3.0) == []


def test_keepalive_zero_disables_the_timer(rawFactory: Raw, uniq: str) -> None:
    c = rawFactory()
    c.connect(f"{uniq}-forever", keepAlive=0)
    c.expectNothing(2.0)  # longer than any 1.5 x 1 s limit would allow
    assert c.isOpen()
    c.ping()


# Bad input closes only the offending connection


BAD_INPUT: dict[str, tuple[bool, bytes, tuple[str, ...]]] = {
    # name: (send CONNECT first?, bytes, log needles)
    "garbage": (False, b"\x00\x02\xde\xad", ("unexpected packet type 0",)),
    "http-request": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 80, ("closing client",)),
    "first-packet-not-connect": (
        False,
        encodeSubscribe(1, [("a", 0)]),
        ("first packet is SUBSCRIBE, not CONNECT", "MQTT-3.1.0-1"),
    ),
    "subscribe-reserved-flags": (
        True,
        b"\x80" + encodeSubscribe(1, [("a", 0)])[1:],
        ("SUBSCRIBE: reserved fixed-header flags are 0x0", "MQTT-2.2.2-2"),
    ),
    "publish-qos3": (
        True,
        bytes([0x36]) + encodePublish(b"a/b", b"x", 1, packetId=1)[1:],
        ("PUBLISH: QoS 3", "MQTT-3.3.1-4"),
    ),
    "remaining-length-5-bytes": (
        True,
        b"\x30\xff\xff\xff\xff\x01",
        ("remaining length longer than 4 bytes",),
    ),
    "packet-too-large": (
        True,
        # Only the header and a little of the body: the length alone must condemn it.
        encodePublish(b"big", b"x" * (SHARED_MAX_PACKET_SIZE + 10))[:200],
        ("PacketTooLarge", f"exceeds the maximum {SHARED_MAX_PACKET_SIZE}"),
    ),
    "second-connect": (
        True,
        encodeConnect(Connect("again")),
        ("second CONNECT on a connection", "MQTT-3.1.0-2"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_closes_only_that_connection(
    broker: BrokerProcess, rawFactory: Raw, pahoFactory: Paho, uniq: str, case: str
) -> None:
    connectFirst, data, needles = BAD_INPUT[case]
    topic = f"{uniq}/alive"
    bystander = pahoFactory(f"{uniq}-bystander")
    bystander.subscribe(topic, 1)
    bad = rawFactory()
    if connectFirst:
        _connected(bad, f"{uniq}-bad")
    bad.send(data)
    assert bad.waitClosed() == []
    who = f"client {uniq}-bad" if connectFirst else "client (not connected)"
    line = waitForLog(broker, who, f"127.0.0.1:{bad.localPort}", *needles)
    assert "closing" in line
    # Everyone else carries on.
    pub = pahoFactory(f"{uniq}-pub")
    pub.publish(topic, b"still here", 1)
    msg = bystander.expect()
    assert (msg.topic, msg.payload) == (topic, b"still here")
    assert not bystander.disconnected.is_set()


def test_oversize_packet_just_under_the_limit_is_accepted(rawFactory: Raw, uniq: str) -> None:
    topic = f"{uniq}/big"
    sub = _subscribed(rawFactory(), f"{uniq}-sub", topic, 0)
    pub = _connected(rawFactory(), f"{uniq}-pub")
    header = len(encodePublish(topic.encode(), b""))
    payload = b"y" * (SHARED_MAX_PACKET_SIZE - header - 2)  # remaining length grows by 2
    packet = encodePublish(topic.encode(), payload)
    assert len(packet) <= SHARED_MAX_PACKET_SIZE
    pub.send(packet)
    got = sub.expectPublish()
    assert got.payload == payload
    assert pub.isOpen()
