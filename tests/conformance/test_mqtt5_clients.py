"""MQTT 5.0 over real sockets: paho-mqtt's v5 client and mosquitto's -V mqttv5 tools.

The same features are covered exhaustively, with a fake clock, in
tests/unit/test_mqtt5_protocol.py; here they are driven by unmodified
client libraries against a real node, to prove the wire format is what
real clients expect.
"""

from __future__ import annotations

import queue
import subprocess
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from robustmq.testing.process import BrokerProcess

TIMEOUT = 5.0

CONFIG = """
[mqtt]
sys_interval = 0
max_session_expiry = 600
response_information = "replies/"
max_delayed_messages = 10

[[mqtt.auto_subscribe]]
topic = "auto/${clientid}"
qos = 1
"""


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(CONFIG)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


class V5:
    """A paho MQTT 5 client on its own network thread."""

    def __init__(self, port: int, clientId: str, clean: bool = True, **props) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=clientId, protocol=mqtt.MQTTv5
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connacks: queue.Queue[tuple] = queue.Queue()
        self.subacks: queue.Queue[list] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put((f, rc, p))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        connectProps = Properties(PacketTypes.CONNECT)
        for k, v in props.items():
            setattr(connectProps, k, v)
        self.client.connect("127.0.0.1", port, clean_start=clean, properties=connectProps)
        self.client.loop_start()
        self.flags, self.reason, self.properties = self.connacks.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, options: SubscribeOptions, **props) -> list:
        p = None
        if props:
            p = Properties(PacketTypes.SUBSCRIBE)
            for k, v in props.items():
                setattr(p, k, v)
        self.client.subscribe(topic, options=options, properties=p)
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **props):
        p = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            setattr(p, k, v)
        info = self.client.publish(topic, payload, qos, retain, properties=p)
        if qos:
            info.wait_for_publish(TIMEOUT)
        return info

    def expect(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def nothing(self, wait: float = 0.5) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(node) -> Iterator:
    made: list[V5] = []

    def make(clientId: str, **kw) -> V5:
        c = V5(node.port, clientId, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


def test_connackProperties(clients, uid):
    c = clients(f"caps-{uid}", SessionExpiryInterval=3600, RequestResponseInformation=1)
    assert c.reason == 0
    p = c.properties
    assert p.SessionExpiryInterval == 600  # capped by max_session_expiry
    assert p.ResponseInformation == f"replies/caps-{uid}"
    assert p.ReceiveMaximum == 100
    assert p.TopicAliasMaximum == 10
    assert p.MaximumPacketSize == 1048576


def test_userPropertiesAndPublishPropertiesPassThrough(clients, uid):
    s = clients(f"s-{uid}")
    assert s.subscribe(f"pp/{uid}", SubscribeOptions(qos=1))[0].value == 1
    p = clients(f"p-{uid}")
    p.publish(
        f"pp/{uid}",
        b"{}",
        1,
        UserProperty=[("trace", "abc"), ("trace", "def")],
        ContentType="application/json",
        ResponseTopic=f"reply/{uid}",
        CorrelationData=b"\x01\x02",
        PayloadFormatIndicator=1,
    )
    m = s.expect()
    assert m.properties.UserProperty == [("trace", "abc"), ("trace", "def")]
    assert m.properties.ContentType == "application/json"
    assert m.properties.ResponseTopic == f"reply/{uid}"
    assert m.properties.CorrelationData == b"\x01\x02"
    assert m.properties.PayloadFormatIndicator == 1


def test_noLocalRetainAsPublishedAndSubscriptionIdentifiers(clients, uid):
    c = clients(f"nl-{uid}")
    c.subscribe(f"nl/{uid}/#", SubscribeOptions(qos=1, noLocal=True), SubscriptionIdentifier=11)
    c.subscribe(
        f"nl/{uid}/+", SubscribeOptions(qos=0, retainAsPublished=True), SubscriptionIdentifier=22
    )
    c.publish(f"nl/{uid}/x", b"own", 1, retain=True)
    m = c.expect()  # only via the subscription without No Local
    assert m.properties.SubscriptionIdentifier == [22]
    assert m.retain  # Retain As Published on that subscription
    other = clients(f"other-{uid}")
    other.publish(f"nl/{uid}/x", b"theirs", 1)
    m = c.expect()
    assert sorted(m.properties.SubscriptionIdentifier) == [11, 22]
    assert m.qos == 1
    c.nothing()


def test_sessionExpiryKeepsQueuedMessages(node, clients, uid):
    cid = f"persist-{uid}"
    s = clients(cid, clean=False, SessionExpiryInterval=60)
    s.subscribe(f"q/{uid}", SubscribeOptions(qos=1))
    s.close()
    clients(f"p-{uid}").publish(f"q/{uid}", b"while away", 1)
    again = clients(cid, clean=False, SessionExpiryInterval=60)
    assert again.flags.session_present
    assert again.expect().payload == b"while away"


def test_sharedSubscriptionOneCopyPerGroup(clients, uid):
    a = clients(f"a-{uid}")
    b = clients(f"b-{uid}")
    for c in (a, b):
        c.subscribe(f"$share/g{uid}/sh/{uid}", SubscribeOptions(qos=1))
    p = clients(f"p-{uid}")
    for i in range(20):
        p.publish(f"sh/{uid}", b"%d" % i, 1)
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < 20 and time.monotonic() < deadline:
        for c in (a, b):
            try:
                got.append(c.messages.get(timeout=0.05).payload)
            except queue.Empty:
                pass
    assert sorted(got) == sorted(b"%d" % i for i in range(20))
    a.nothing(0.3)
    b.nothing(0.3)


def test_topicAliasFromPaho(clients, uid):
    s = clients(f"s-{uid}")
    s.subscribe(f"ta/{uid}", SubscribeOptions(qos=0))
    p = clients(f"p-{uid}")
    p.publish(f"ta/{uid}", b"1", 1, TopicAlias=3)
    p.publish("", b"2", 1, TopicAlias=3)
    assert [(m.topic, m.payload) for m in (s.expect(), s.expect())] == [
        (f"ta/{uid}", b"1"),
        (f"ta/{uid}", b"2"),
    ]


def test_messageExpiryForwardedDecremented(clients, uid):
    cid = f"me-{uid}"
    s = clients(cid, clean=False, SessionExpiryInterval=60)
    s.subscribe(f"me/{uid}", SubscribeOptions(qos=1))
    s.close()
    clients(f"p-{uid}").publish(f"me/{uid}", b"x", 1, MessageExpiryInterval=30)
    time.sleep(1.2)
    again = clients(cid, clean=False, SessionExpiryInterval=60)
    m = again.expect()
    assert m.properties.MessageExpiryInterval <= 29


def test_delayedPublishAndAutoSubscribe(clients, uid):
    cid = f"dev-{uid}"
    dev = clients(cid)
    p = clients(f"p-{uid}")
    sent = time.monotonic()
    p.publish(f"$delayed/1/auto/{cid}", b"later", 1)
    m = dev.expect()  # delivered through the auto-subscription auto/${clientid}
    assert (m.topic, m.payload) == (f"auto/{cid}", b"later")
    assert time.monotonic() - sent >= 0.9


def test_v5AndV311Interoperate(node, clients, uid):
    old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"old-{uid}", protocol=mqtt.MQTTv311)
    got: queue.Queue = queue.Queue()
    subscribed: queue.Queue = queue.Queue()
    old.on_message = lambda c, u, m: got.put(m)
    old.on_subscribe = lambda *a: subscribed.put(1)
    old.connect("127.0.0.1", node.port)
    old.loop_start()
    try:
        old.subscribe(f"mix/{uid}", 1)
        subscribed.get(timeout=TIMEOUT)
        new = clients(f"new-{uid}")
        new.publish(f"mix/{uid}", b"plain payload", 1, UserProperty=[("k", "v")], ContentType="t")
        m = got.get(timeout=TIMEOUT)
        assert (m.payload, m.qos) == (b"plain payload", 1)
        new.subscribe(f"mix/{uid}", SubscribeOptions(qos=1))
        old.publish(f"mix/{uid}", b"from 3.1.1", 1).wait_for_publish(TIMEOUT)
        m5 = new.expect()
        assert m5.payload == b"from 3.1.1"
    finally:
        old.disconnect()
        old.loop_stop()


def test_mosquittoV5UserProperties(node, uid):
    topic = f"mosq5/{uid}"
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(node.port),
            "-V",
            "mqttv5",
            "-t",
            topic,
            "-C",
            "1",
            "-F",
            "%t %p %P",
            "-W",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(node.port),
                "-V",
                "mqttv5",
                "-t",
                topic,
                "-m",
                "hello5",
                "-q",
                "1",
                "-D",
                "publish",
                "user-property",
                "colour",
                "blue",
            ],
            check=True,
            timeout=10,
        )
        out, _ = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.strip() == f"{topic} hello5 colour:blue"
