"""End-to-end: paho-mqtt clients (MQTT 3.1 and 3.1.1) against a real node over loopback.

Where a test must show that something did I{not} arrive, it publishes a
sentinel after it from the same publisher: MQTT keeps one publisher's order
per topic filter, so anything wrongly delivered would arrive before the
sentinel.  No test relies on a sleep to decide what happened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from robustmq import __version__
from robustmq.testing.process import BrokerProcess
from robustmq.testing.rawclient import RawClient

Factory = Callable[..., Any]

TIMEOUT = 5.0
PROTOCOLS = {"mqttv31": mqtt.MQTTv31, "mqttv311": mqtt.MQTTv311}

protocols = pytest.mark.parametrize("proto", list(PROTOCOLS), ids=list(PROTOCOLS))


# Publish / subscribe and QoS


@protocols
@pytest.mark.parametrize("pubQos", [0, 1, 2])
@pytest.mark.parametrize("subQos", [0, 1, 2])
def test_delivered_qos_is_the_minimum(
    pahoFactory: Factory, uniq: str, proto: str, pubQos: int, subQos: int
) -> None:
    """A message published at QoS p to a subscription granted QoS s arrives at min(p, s)."""
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    topic = f"{uniq}/qos"
    assert sub.subscribe(topic, subQos) == [subQos]
    payload = f"p{pubQos}-s{subQos}".encode()
    pub.publish(topic, payload, pubQos)
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
        topic,
        payload,
        min(pubQos, subQos),
        False,
    )
    sub.expectNothing(0.2)


@protocols
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_order_of_200_messages(pahoFactory: Factory, uniq: str, proto: str, qos: int) -> None:
    """200 messages from one publisher arrive complete and in order at every QoS."""
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    topic = f"{uniq}/order"
    sub.subscribe(topic, qos)
    for i in range(200):
        pub.client.publish(topic, b"%d" % i, qos)
    got = sub.expectMany(200, 3 * TIMEOUT)
    assert [m.payload for m in got] == [b"%d" % i for i in range(200)]
    assert {m.qos for m in got} == {qos}
    assert not any(m.retain for m in got)


@protocols
def test_wildcards(pahoFactory: Factory, uniq: str, proto: str) -> None:
    """'+' matches exactly one level, '#' the parent and any number of levels."""
    plus = pahoFactory(f"{uniq}-plus", PROTOCOLS[proto])
    hash_ = pahoFactory(f"{uniq}-hash", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    plus.subscribe(f"{uniq}/+/temp", 1)
    hash_.subscribe(f"{uniq}/#", 1)
    topics = [f"{uniq}/a/temp", f"{uniq}/b/hum", f"{uniq}/a/b/temp", uniq, f"{uniq}/temp"]
    for t in topics:
        pub.publish(t, t.encode(), 1)
    sentinel = f"{uniq}/zz/temp"
    pub.publish(sentinel, b"end", 1)
    assert [m.topic for m in plus.untilTopic(sentinel)] == [f"{uniq}/a/temp"]
    assert [m.topic for m in hash_.untilTopic(sentinel)] == topics


@protocols
def test_unsubscribe_stops_delivery(pahoFactory: Factory, uniq: str, proto: str) -> None:
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    a, b = f"{uniq}/a", f"{uniq}/b"
    sub.subscribe([(a, 1), (b, 1)])
    pub.publish(a, b"before", 1)
    assert sub.expect().payload == b"before"
    sub.unsubscribe(a)
    pub.publish(a, b"after", 1)
    pub.publish(b, b"sentinel", 1)
    assert sub.untilTopic(b) == []


@protocols
def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos(
    pahoFactory: Factory, uniq: str, proto: str
) -> None:
    """MQTT-3.3.5-1: 'a/#' at QoS 1 and 'a/b' at QoS 2 → one copy of a/b at QoS 2."""
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    assert sub.subscribe([(f"{uniq}/a/#", 1), (f"{uniq}/a/b", 2)]) == [1, 2]
    pub.publish(f"{uniq}/a/b", b"both", 2)
    # A QoS 2 marker on the same topic: paho hands QoS 2 messages over at PUBREL,
    # in order, so any second copy of "both" (QoS 1 via a/#, or QoS 2) comes first.
    pub.publish(f"{uniq}/a/b", b"marker", 2)
    got = []
    while not got or got[-1].payload != b"marker":
        got.append(sub.expect())
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{uniq}/a/b", b"both", 2),
        (f"{uniq}/a/b", b"marker", 2),
    ]
    sentinel = f"{uniq}/a/c"
    pub.publish(sentinel, b"again", 2)
    msg = sub.expect()
    assert (msg.topic, msg.qos) == (sentinel, 1)


# $-topics and $SYS


def test_dollar_topics_not_matched_by_first_level_wildcards(
    broker: BrokerProcess, pahoFactory: Factory, uniq: str
) -> None:
    """MQTT-4.7.2-1: '#' and '+/...' do not match topics starting with '$'; explicit filters do."""
    explicit = pahoFactory(f"{uniq}-explicit")
    assert explicit.subscribe([("$SYS/#", 0), (f"$foo/{uniq}", 1)]) == [0, 1]
    # $SYS values are retained: they arrive on subscribe once published (every second).
    first = explicit.expect()
    assert first.topic.startswith("$SYS/broker/"), first
    everything = pahoFactory(f"{uniq}-hash")
    plus = pahoFactory(f"{uniq}-plus")
    pub = pahoFactory(f"{uniq}-pub")
    everything.subscribe("#", 1)
    plus.subscribe([(f"+/{uniq}", 1), ("+/broker/version", 0), ("+/broker/#", 0)])
    pub.publish(f"$foo/{uniq}", b"dollar", 1)
    sentinel = f"bar/{uniq}"
    pub.publish(sentinel, b"sentinel", 1)
    # Only this test's topics and $-topics matter on the shared node.
    seen = [m.topic for m in everything.untilTopic(sentinel) if uniq in m.topic or "$" in m.topic]
    assert seen == []
    assert [m.topic for m in plus.untilTopic(sentinel)] == []
    # The explicit filter does see it.
    got = [m for m in explicit.untilTopic(f"$foo/{uniq}")]
    assert all(m.topic.startswith("$SYS/") for m in got)
    # And later $SYS republications are not delivered to '#' or '+/broker/#' either.
    deadline = time.monotonic() + 3 * TIMEOUT
    while explicit.expect(max(0.01, deadline - time.monotonic())).retain:
        pass
    pub.publish(sentinel, b"sentinel-2", 1)
    assert [m.topic for m in everything.untilTopic(sentinel) if "$" in m.topic] == []
    assert plus.untilTopic(sentinel) == []


def test_sys_topics_published(broker: BrokerProcess, pahoFactory: Factory, uniq: str) -> None:
    """$SYS/broker/version, uptime, clients/connected and messages/received, republished."""
    sub = pahoFactory(f"{uniq}-sys")
    sub.subscribe("$SYS/broker/#", 0)
    wanted = {
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
    }
    values: dict[str, bytes] = {}
    deadline = time.monotonic() + 3 * TIMEOUT
    while not wanted <= values.keys():
        msg = sub.expect(max(0.01, deadline - time.monotonic()))
        values[msg.topic] = msg.payload
    assert values["$SYS/broker/version"] == f"RobustMQ {__version__}".encode()
    assert re.fullmatch(rb"\d+ seconds", values["$SYS/broker/uptime"])
    assert int(values["$SYS/broker/clients/connected"]) >= 1
    received = int(values["$SYS/broker/messages/received"])
    # Counters move: publish some messages, wait for a later value that counts them.
    pub = pahoFactory(f"{uniq}-pub")
    for i in range(3):
        pub.publish(f"{uniq}/count", b"%d" % i, 1)
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        msg = sub.expect(max(0.01, deadline - time.monotonic()))
        if msg.topic == "$SYS/broker/messages/received" and int(msg.payload) >= received + 3:
            assert not msg.retain  # a live republication, not the retained copy
            break


# Retained messages


@protocols
def test_retained_delivered_on_subscribe_with_retain_flag(
    pahoFactory: Factory, uniq: str, proto: str
) -> None:
    live = pahoFactory(f"{uniq}-live", PROTOCOLS[proto])
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    topic = f"{uniq}/state"
    live.subscribe(topic, 2)
    pub.publish(topic, b"on", 1, retain=True)
    msg = live.expect()
    # MQTT-3.3.1-9: an established subscription gets it with RETAIN cleared.
    assert (msg.payload, msg.qos, msg.retain) == (b"on", 1, False)
    late = pahoFactory(f"{uniq}-late", PROTOCOLS[proto])
    late.subscribe(f"{uniq}/#", 2)
    msg = late.expect()
    # MQTT-3.3.1-6/-8: a new subscription gets it with RETAIN set.
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"on", 1, True)
    # Granted QoS lower than the retained message's: delivered at the granted QoS.
    low = pahoFactory(f"{uniq}-low", PROTOCOLS[proto])
    low.subscribe(topic, 0)
    msg = low.expect()
    assert (msg.payload, msg.qos, msg.retain) == (b"on", 0, True)


@protocols
def test_retained_replaced_by_newer(pahoFactory: Factory, uniq: str, proto: str) -> None:
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    topic = f"{uniq}/state"
    pub.publish(topic, b"v1", 1, retain=True)
    pub.publish(topic, b"v2", 0, retain=True)
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    sub.subscribe(topic, 1)
    msg = sub.expect()
    assert (msg.payload, msg.qos, msg.retain) == (b"v2", 0, True)
    pub.publish(topic, b"live", 1)
    msg = sub.expect()
    assert (msg.payload, msg.retain) == (b"live", False)


@protocols
def test_retained_cleared_by_empty_payload(pahoFactory: Factory, uniq: str, proto: str) -> None:
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    topic = f"{uniq}/state"
    other = f"{uniq}/other"
    pub.publish(topic, b"x", 1, retain=True)
    pub.publish(other, b"kept", 1, retain=True)
    pub.publish(topic, b"", 1, retain=True)
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    sub.subscribe(f"{uniq}/#", 1)
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.retain) == (other, b"kept", True)
    pub.publish(topic, b"live", 1)
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"live", False)


# Will


@protocols
def test_will_published_on_abnormal_close(pahoFactory: Factory, uniq: str, proto: str) -> None:
    """The will (with its QoS and retain flag) is published when the socket just closes."""
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    willTopic = f"{uniq}/will"
    sub.subscribe(willTopic, 2)
    dying = pahoFactory(f"{uniq}-dying", PROTOCOLS[proto], connect=False)
    dying.connect(will=(willTopic, b"gone", 1, True))
    dying.client.loop_stop()  # no DISCONNECT, no reconnect: the socket just goes away
    dying._started = False
    dying.client.socket().close()
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (willTopic, b"gone", 1, False)
    late = pahoFactory(f"{uniq}-late", PROTOCOLS[proto])
    late.subscribe(willTopic, 2)
    msg = late.expect()
    assert (msg.payload, msg.qos, msg.retain) == (b"gone", 1, True)


@protocols
def test_will_not_published_after_disconnect(pahoFactory: Factory, uniq: str, proto: str) -> None:
    sub = pahoFactory(f"{uniq}-sub", PROTOCOLS[proto])
    willTopic = f"{uniq}/will"
    sub.subscribe(f"{uniq}/#", 1)
    leaving = pahoFactory(f"{uniq}-leaving", PROTOCOLS[proto], connect=False)
    leaving.connect(will=(willTopic, b"gone", 1, False))
    leaving.disconnect()
    # A probe with the same client id: once it is connected the old connection is surely done.
    probe = pahoFactory(f"{uniq}-leaving", PROTOCOLS[proto])
    probe.publish(f"{uniq}/sentinel", b"end", 1)
    assert sub.untilTopic(f"{uniq}/sentinel") == []


# Persistent sessions


@protocols
def test_persistent_session_keeps_subscriptions_and_queues_qos12(
    pahoFactory: Factory, uniq: str, proto: str
) -> None:
    """clean_session=False: QoS 1/2 messages published while offline arrive on reconnect."""
    cid = f"{uniq}-persistent"
    sub = pahoFactory(cid, PROTOCOLS[proto], cleanSession=False)
    assert sub.sessionPresent is False
    topic = f"{uniq}/offline"
    sub.subscribe(topic, 2)
    sub.disconnect()
    sub.stop()
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    pub.publish(topic, b"q1", 1)
    pub.publish(topic, b"q2", 2)
    again = pahoFactory(cid, PROTOCOLS[proto], cleanSession=False)
    # MQTT 3.1's CONNACK has no Session Present flag (its first byte is reserved, 0).
    assert again.sessionPresent is (proto != "mqttv31")
    got = again.expectMany(2)
    assert [(m.payload, m.qos) for m in got] == [(b"q1", 1), (b"q2", 2)]
    # The subscription itself survived: live messages flow without re-subscribing.
    pub.publish(topic, b"live", 1)
    msg = again.expect()
    assert (msg.payload, msg.qos) == (b"live", 1)


@protocols
def test_clean_session_discards_the_old_session(
    pahoFactory: Factory, uniq: str, proto: str
) -> None:
    cid = f"{uniq}-client"
    sub = pahoFactory(cid, PROTOCOLS[proto], cleanSession=False)
    topic = f"{uniq}/t"
    sub.subscribe(topic, 1)
    sub.disconnect()
    sub.stop()
    pub = pahoFactory(f"{uniq}-pub", PROTOCOLS[proto])
    pub.publish(topic, b"while-away", 1)
    clean = pahoFactory(cid, PROTOCOLS[proto], cleanSession=True)
    assert clean.sessionPresent is False
    pub.publish(topic, b"not-subscribed", 1)
    clean.subscribe(f"{uniq}/sentinel", 1)
    pub.publish(f"{uniq}/sentinel", b"end", 1)
    assert clean.untilTopic(f"{uniq}/sentinel") == []
    clean.disconnect()
    clean.stop()
    # And a later persistent connection starts from nothing too.
    later = pahoFactory(cid, PROTOCOLS[proto], cleanSession=False)
    assert later.sessionPresent is False


def test_paho_sees_broker_close_on_takeover(pahoFactory: Factory, uniq: str) -> None:
    """A second connection with the same client id closes the first (MQTT-3.1.4-2)."""
    first = pahoFactory(f"{uniq}-same", cleanSession=False)
    first.client.reconnect_delay_set(60, 120)  # do not fight back for the client id
    first.subscribe(f"{uniq}/t", 1)
    with RawClient(first.port, timeout=TIMEOUT) as second:
        ack = second.connect(f"{uniq}-same", cleanSession=False)
        assert (ack.returnCode, ack.sessionPresent) == (0, True)
        assert first.disconnected.wait(TIMEOUT)
        pub = pahoFactory(f"{uniq}-pub")
        pub.publish(f"{uniq}/t", b"to-second", 1)
        packet = second.expectPublish()
        assert (packet.topic, packet.payload, packet.qos) == (f"{uniq}/t", b"to-second", 1)


def test_mqttv31_and_v311_interoperate(pahoFactory: Factory, uniq: str) -> None:
    v31 = pahoFactory(f"{uniq}-v31", mqtt.MQTTv31)
    v311 = pahoFactory(f"{uniq}-v311", mqtt.MQTTv311)
    v31.subscribe(f"{uniq}/to31", 2)
    v311.subscribe(f"{uniq}/to311", 2)
    v311.publish(f"{uniq}/to31", b"hello 3.1", 2)
    v31.publish(f"{uniq}/to311", b"hello 3.1.1", 2)
    assert (v31.expect().payload, v311.expect().payload) == (b"hello 3.1", b"hello 3.1.1")
