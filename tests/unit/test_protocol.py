"""The MQTT server protocol against in-memory transports and a fake clock."""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from robustmq.interfaces import IProtocolPlugin, ISessionConnection
from robustmq.protocols.mqtt import mqttPlugin
from robustmq.protocols.mqtt._packets import (
    MQTT31,
    MQTT311,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from robustmq.testing.memory import InMemoryBroker


def online(h: InMemoryBroker, clientId: str, clean: bool = True, **kw) -> object:
    c = h.connect()
    c.send(Connect(clientId, cleanSession=clean, **kw))
    [connack] = c.received()
    assert connack.returnCode == 0
    return c


@pytest.fixture
def h():
    return InMemoryBroker({"mqtt": {"sys_interval": 0}})


def test_interfaces(h):
    c = online(h, "a")
    verifyObject(ISessionConnection, c.protocol)
    verifyObject(IProtocolPlugin, mqttPlugin)


@pytest.mark.parametrize("bytewise", [False, True])
def test_pubSubAllQos(h, bytewise):
    sub = online(h, "sub")
    sub.send(Subscribe(1, [("t/#", 2)]), bytewise=bytewise)
    assert sub.received() == [Suback(1, [2])]
    pub = online(h, "pub")
    pub.send(
        Publish("t/0", b"zero", 0),
        Publish("t/1", b"one", 1, packetId=10),
        Publish("t/2", b"two", 2, packetId=11),
        bytewise=bytewise,
    )
    assert pub.received() == [Puback(10), Pubrec(11)]
    pub.send(Pubrel(11))
    assert pub.received() == [Pubcomp(11)]
    got = sub.received()
    assert [(p.topic, p.payload, p.qos, p.retain) for p in got] == [
        ("t/0", b"zero", 0, False),
        ("t/1", b"one", 1, False),
        ("t/2", b"two", 2, False),
    ]
    sub.send(Puback(got[1].packetId), Pubrec(got[2].packetId))
    assert sub.received() == [Pubrel(got[2].packetId)]
    sub.send(Pubcomp(got[2].packetId))
    assert h.sessions.get("sub").inflight == {}


def test_firstPacketMustBeConnect(h):
    c = h.connect()
    c.send(Pingreq())
    assert c.disconnecting
    assert c.received() == []


def test_secondConnectClosesConnection(h):
    c = online(h, "x")
    c.send(Connect("x"))
    assert c.disconnecting


def test_emptyClientIdRules(h):
    c = h.connect()
    c.send(Connect("", cleanSession=True))
    [ack] = c.received()
    assert ack.returnCode == 0 and c.protocol.clientId.startswith("auto-")
    c = h.connect()
    c.send(Connect("", cleanSession=False))
    assert c.received() == [Connack(False, 2)]
    assert c.disconnecting
    c = h.connect()
    c.send(Connect("", protocolLevel=MQTT31))
    assert c.received() == [Connack(False, 2)]


def test_unsupportedLevelGetsConnack1(h):
    from robustmq.protocols.mqtt import encode

    c = h.connect()
    c.sendBytes(encode(Connect("x")).replace(b"MQTT\x04", b"MQTT\x07"))
    assert c.received() == [Connack(False, 1)]
    assert c.disconnecting


def test_keepAliveEnforcedAtOneAndAHalf(h):
    c = online(h, "k", keepAlive=10)
    h.clock.advance(14)
    c.send(Pingreq())
    assert c.received() == [Pingresp()]
    h.clock.advance(14.9)
    assert not c.disconnecting
    h.clock.advance(0.2)
    assert c.disconnecting


def test_connectTimeout(h):
    c = h.connect()
    h.clock.advance(h.settings.mqtt.connect_timeout + 1)
    assert c.disconnecting


def test_retainedDeliveredOnSubscribeWithFlag(h):
    pub = online(h, "p")
    pub.send(Publish("r/1", b"kept", 1, retain=True, packetId=1))
    sub = online(h, "s")
    sub.send(Subscribe(2, [("r/#", 1)]))
    suback, message = sub.received()
    assert suback == Suback(2, [1])
    assert (message.topic, message.payload, message.retain, message.qos) == (
        "r/1",
        b"kept",
        True,
        1,
    )
    # Live delivery clears RETAIN (MQTT-3.3.1-9).
    pub.send(Publish("r/1", b"new", 0, retain=True))
    [live] = sub.received()
    assert (live.payload, live.retain) == (b"new", False)
    # An empty retained payload clears it.
    pub.send(Publish("r/1", b"", 0, retain=True))
    late = online(h, "late")
    late.send(Subscribe(3, [("r/#", 0)]))
    assert late.received() == [Suback(3, [0])]


def test_overlappingSubscriptionsOneCopyHighestQos(h):
    sub = online(h, "s")
    sub.send(Subscribe(1, [("a/#", 1), ("a/b", 2), ("+/b", 0)]))
    sub.received()
    pub = online(h, "p")
    pub.send(Publish("a/b", b"x", 2, packetId=5))
    got = sub.received()
    assert len(got) == 1 and got[0].qos == 2


def test_willOnAbnormalCloseOnly(h):
    watcher = online(h, "w")
    watcher.send(Subscribe(1, [("will/#", 1)]))
    watcher.received()
    a = online(h, "a", willTopic="will/a", willPayload=b"a died", willQos=1)
    a.lose()
    [will] = watcher.received()
    assert (will.topic, will.payload, will.qos) == ("will/a", b"a died", 1)
    b = online(h, "b", willTopic="will/b", willPayload=b"b died")
    b.send(Disconnect())
    assert b.disconnecting
    b.lose()
    assert watcher.received() == []


def test_persistentSessionQueuesAndResendsWithDup(h):
    s = online(h, "p1", clean=False)
    s.send(Subscribe(1, [("q", 1)]))
    s.received()
    pub = online(h, "pub")
    pub.send(Publish("q", b"m1", 1, packetId=1))
    [first] = s.received()
    s.lose()  # never acknowledged
    pub.send(Publish("q", b"m2", 1, packetId=2), Publish("q", b"m0", 0))
    again = h.connect()
    again.send(Connect("p1", cleanSession=False))
    connack, resent, queued = again.received()
    assert connack == Connack(True, 0)
    assert (resent.payload, resent.dup, resent.packetId) == (b"m1", True, first.packetId)
    assert (queued.payload, queued.dup) == (b"m2", False)
    # QoS 0 was not queued for the offline session (queue_qos0_offline = false).


def test_cleanSessionDiscardsState(h):
    s = online(h, "c1", clean=False)
    s.send(Subscribe(1, [("q", 1)]))
    s.lose()
    c = h.connect()
    c.send(Connect("c1", cleanSession=True))
    assert c.received() == [Connack(False, 0)]
    assert "q" not in h.sessions.get("c1").subscriptions


def test_takeoverClosesOldConnection(h):
    first = online(h, "same", clean=False)
    first.send(Subscribe(1, [("t", 1)]))
    second = h.connect()
    second.send(Connect("same", cleanSession=False))
    assert second.received() == [Connack(True, 0)]
    assert first.disconnecting
    first.lose()
    pub = online(h, "pub")
    pub.send(Publish("t", b"to-second", 1, packetId=1))
    [m] = second.received()
    assert m.payload == b"to-second"


def test_inflightWindowAndQueue():
    h = InMemoryBroker({"mqtt": {"max_inflight": 2, "sys_interval": 0}})
    sub = online(h, "s")
    sub.send(Subscribe(1, [("w", 1)]))
    sub.received()
    pub = online(h, "p")
    for i in range(5):
        pub.send(Publish("w", str(i).encode(), 1, packetId=i + 1))
    got = sub.received()
    assert [m.payload for m in got] == [b"0", b"1"]
    sub.send(Puback(got[0].packetId))
    [m] = sub.received()
    assert m.payload == b"2"


def test_slowConsumerPausesPublisherInsteadOfDropping():
    h = InMemoryBroker({"mqtt": {"max_queued_messages": 4, "sys_interval": 0}})
    sub = online(h, "s")
    sub.send(Subscribe(1, [("x", 1)]))
    sub.received()
    sub.protocol.pauseProducing()  # the subscriber's socket buffer is full
    pub = online(h, "p")
    for i in range(4):
        pub.send(Publish("x", str(i).encode(), 1, packetId=i + 1))
    assert pub.transport.producerState == "paused"
    # Bytes already read still get routed, past the bound but within twice it.
    for i in range(4, 8):
        pub.send(Publish("x", str(i).encode(), 1, packetId=i + 1))
    assert h.broker.stats.messagesDropped == 0
    assert len(pub.received()) == 8  # every PUBACK
    sub.protocol.resumeProducing()
    got = sub.received()
    assert [m.payload for m in got] == [str(i).encode() for i in range(8)]
    assert pub.transport.producerState == "producing"


def test_packetsAfterCongestionAreHeldNotDropped():
    h = InMemoryBroker({"mqtt": {"max_queued_messages": 2, "sys_interval": 0}})
    sub = online(h, "s")
    sub.send(Subscribe(1, [("x", 1)]))
    sub.received()
    sub.protocol.pauseProducing()
    pub = online(h, "p")
    publishes = [Publish("x", b"%d" % i, 1, packetId=i + 1) for i in range(6)]
    pub.send(*publishes, Pingreq())  # one network read
    # The PINGREQ waits behind the held PUBLISHes.
    assert [type(p).__name__ for p in pub.received()] == ["Puback", "Puback"]
    assert len(h.sessions.get("s").queue) == 2
    sub.protocol.resumeProducing()
    assert [m.payload for m in sub.received()] == [b"%d" % i for i in range(6)]
    assert pub.received()[-1] == Pingresp()
    assert h.broker.stats.messagesDropped == 0


def test_qos0ToACongestedSubscriberNeverPausesThePublisher():
    """Survive damage item 4: a subscriber that reads nothing gets QoS 0 messages up to
    its queue bound, then they are dropped for it (counted); the publisher is never
    paused, and other subscribers get everything."""
    h = InMemoryBroker({"mqtt": {"max_queued_messages": 2, "sys_interval": 0}})
    stuck = online(h, "stuck")
    stuck.send(Subscribe(1, [("x", 0)]))
    stuck.received()
    stuck.protocol.pauseProducing()
    healthy = online(h, "healthy")
    healthy.send(Subscribe(1, [("x", 0)]))
    healthy.received()
    pub = online(h, "p")
    pub.send(*[Publish("x", b"%d" % i) for i in range(10)], Pingreq())
    assert pub.received() == [Pingresp()]
    assert pub.transport.producerState == "producing"
    assert len(healthy.received()) == 10
    assert len(h.sessions.get("stuck").queue) == 2
    assert h.broker.stats.mqttDropped[0] == 8


def test_oneWaitForCongestedSubscribersIsBounded():
    """Survive damage item 4: subscribers congesting one after another (new client ids)
    do not extend a publisher's wait beyond congestion_timeout."""
    h = InMemoryBroker(
        {"mqtt": {"max_queued_messages": 1, "congestion_timeout": 5.0, "sys_interval": 0}}
    )
    pub = online(h, "p")
    for n in range(3):  # at 0, 2 and 4 s
        sub = online(h, f"s{n}")
        sub.send(Subscribe(1, [("x", 1)]))
        sub.received()
        sub.protocol.pauseProducing()
        pub.send(Publish("x", b"m", 1, packetId=n + 1))
        assert pub.transport.producerState == "paused"
        h.clock.advance(2.0)
    # 6 s in: the wait began at 0 and ended at 5, although the last subscriber
    # congested at 4 (its own timer runs to 9).
    assert pub.transport.producerState == "producing"


def test_cyclingSubscribersHoldAPublisherAtMostHalfTheTime():
    """Survive damage item 4: a client that congests again and again with new client ids
    (QoS 1) cannot hold a publisher indefinitely: after one full-length wait the publisher
    is not paused again for congestion_timeout; the sessions it fills meanwhile overflow."""
    h = InMemoryBroker(
        {"mqtt": {"max_queued_messages": 1, "congestion_timeout": 5.0, "sys_interval": 0}}
    )
    pub = online(h, "p")
    paused = 0.0
    step = 0.5
    pid = 0
    for n in range(60):  # 30 s: a new stuck subscriber every half second
        sub = online(h, f"s{n}")
        sub.send(Subscribe(1, [("x", 1)]))
        sub.received()
        sub.protocol.pauseProducing()
        if pub.transport.producerState == "producing":
            pid += 1
            pub.send(Publish("x", b"m", 1, packetId=pid))
        if pub.transport.producerState == "paused":
            paused += step
        h.clock.advance(step)
    assert paused <= 30 / 2 + 1, paused
    assert pid > 3  # it kept publishing


def test_hardBoundDropsBeyondTwiceTheQueue():
    h = InMemoryBroker({"mqtt": {"max_queued_messages": 2, "sys_interval": 0}})
    both = online(h, "both")  # congested by its own publishes: it cannot be paused
    both.send(Subscribe(1, [("loop", 1)]))
    both.received()
    both.protocol.pauseProducing()
    both.send(*[Publish("loop", b"%d" % i, 1, packetId=i + 1) for i in range(10)])
    assert h.broker.stats.messagesDropped == 6
    assert len(h.sessions.get("both").queue) == 4


def test_stuckSubscriberReleasesPublishersAfterTimeout():
    h = InMemoryBroker(
        {"mqtt": {"max_queued_messages": 2, "congestion_timeout": 5.0, "sys_interval": 0}}
    )
    sub = online(h, "s")
    sub.send(Subscribe(1, [("x", 1)]))
    sub.protocol.pauseProducing()
    pub = online(h, "p")
    pub.send(Publish("x", b"0", 1, packetId=1), Publish("x", b"1", 1, packetId=2))
    assert pub.transport.producerState == "paused"
    h.clock.advance(5.1)
    assert pub.transport.producerState == "producing"
    pub.send(*[Publish("x", b"more", 1, packetId=3 + i) for i in range(5)])
    assert h.broker.stats.messagesDropped == 5  # overflowing: drop_new at the bound
    assert pub.transport.producerState == "producing"


def test_subscriberThatPublishesIsNeverPausedByItsOwnCongestion():
    h = InMemoryBroker({"mqtt": {"max_queued_messages": 2, "sys_interval": 0}})
    both = online(h, "both")
    both.send(Subscribe(1, [("loop", 1)]))
    both.received()
    both.protocol.pauseProducing()
    both.send(*[Publish("loop", b"%d" % i, 1, packetId=i + 1) for i in range(3)])
    assert both.transport.producerState == "producing"


def test_offlineSessionQueueOverflowPolicy():
    h = InMemoryBroker(
        {"mqtt": {"max_queued_messages": 2, "queue_overflow": "drop_oldest", "sys_interval": 0}}
    )
    s = online(h, "off", clean=False)
    s.send(Subscribe(1, [("o", 1)]))
    s.lose()
    pub = online(h, "p")
    pub.send(*[Publish("o", b"%d" % i, 1, packetId=i + 1) for i in range(4)])
    assert pub.transport.producerState == "producing"
    assert h.broker.stats.messagesDropped == 2
    back = h.connect()
    back.send(Connect("off", cleanSession=False))
    assert [m.payload for m in back.received()[1:]] == [b"2", b"3"]


def test_qos2DuplicateRoutedOnce(h):
    sub = online(h, "s")
    sub.send(Subscribe(1, [("d", 0)]))
    sub.received()
    pub = online(h, "p")
    pub.send(Publish("d", b"once", 2, packetId=9))
    pub.send(Publish("d", b"once", 2, packetId=9, dup=True))
    assert pub.received() == [Pubrec(9), Pubrec(9)]
    assert len(sub.received()) == 1
    pub.send(Pubrel(9))
    pub.send(Publish("d", b"again", 2, packetId=9))
    assert len(sub.received()) == 1


def test_unsubscribe(h):
    sub = online(h, "s")
    sub.send(Subscribe(1, [("u", 0)]), Unsubscribe(2, ["u"]))
    assert sub.received() == [Suback(1, [0]), Unsuback(2)]
    pub = online(h, "p")
    pub.send(Publish("u", b"x"))
    assert sub.received() == []


def test_invalidFilterGetsFailureCode(h):
    sub = online(h, "s")
    sub.send(Subscribe(1, [("a/#/b", 0), ("ok", 1)]))
    assert sub.received() == [Suback(1, [0x80, 1])]


def test_dollarTopicsNotMatchedByWildcards(h):
    sub = online(h, "s")
    sub.send(Subscribe(1, [("#", 0), ("+/x", 0)]))
    sub.received()
    h.broker.publishInternal("$SYS/x", b"v")
    assert sub.received() == []


def test_malformedClosesOnlyThatConnection(h):
    good = online(h, "good")
    good.send(Subscribe(1, [("t", 0)]))
    good.received()
    bad = online(h, "bad")
    bad.sendBytes(b"\x36\x05\x00\x01t\x00\x01")  # QoS 3
    assert bad.disconnecting
    assert h.broker.stats.malformedPackets == 1
    pub = online(h, "p")
    pub.send(Publish("t", b"still here"))
    assert [m.payload for m in good.received()] == [b"still here"]


def test_maxPacketSize():
    h = InMemoryBroker({"mqtt": {"max_packet_size": 64, "sys_interval": 0}})
    c = online(h, "c")
    c.send(Publish("t", b"x" * 100))
    assert c.disconnecting


def test_connectionLimit():
    h = InMemoryBroker({"limits": {"max_connections": 2}, "mqtt": {"sys_interval": 0}})
    online(h, "a")
    online(h, "b")
    from twisted.internet.address import IPv4Address

    assert h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None


def test_mqtt31Works(h):
    sub = online(h, "s31", protocolLevel=MQTT31)
    sub.send(Subscribe(1, [("v/#", 1)]))
    sub.received()
    pub = online(h, "p311", protocolLevel=MQTT311)
    pub.send(Publish("v/1", b"hi", 1, packetId=3))
    [m] = sub.received()
    assert (m.payload, m.qos) == (b"hi", 1)


def test_sharedGroupSkipsAMemberThatCannotTakeMessages():
    """Issue item 8: with two connected QoS 0 members both receive; once one stops
    reading (its queue backs up) the other gets the rest instead of every second
    message going to a queue that is not read."""
    h = InMemoryBroker({"mqtt": {"sys_interval": 0}})
    a = online(h, "a")
    b = online(h, "b")
    for m in (a, b):
        m.send(Subscribe(1, [("$share/g/t", 0)]))
        m.received()
    pub = online(h, "p")
    pub.send(*[Publish("t", b"%d" % i) for i in range(4)])
    assert len(a.received()) == 2 and len(b.received()) == 2
    a.protocol.pauseProducing()  # a's socket is full
    pub.send(*[Publish("t", b"%d" % i) for i in range(4, 10)])
    got = [m.payload for m in b.received()]
    queued = [m.payload for m, *_ in h.sessions.get("a").queue]
    assert len(queued) <= 1  # at most the one that found a's socket full
    assert sorted(got + queued, key=int) == [b"%d" % i for i in range(4, 10)]

