"""MQTT 5.0 server behaviour on in-memory transports and a fake clock.

Test names carry the normative statement ids of the OASIS MQTT 5.0 standard
where one applies.
"""

from __future__ import annotations

import pytest

from robustmq.core.scram import ScramClient
from robustmq.protocols.mqtt import MQTTParser, encode
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    MQTT311,
    Auth,
    Connect,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Reason,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from robustmq.testing.memory import InMemoryBroker

BASE = {"mqtt": {"sys_interval": 0}}


def harness(**mqtt) -> InMemoryBroker:
    return InMemoryBroker({"mqtt": {"sys_interval": 0, **mqtt}})


class Client5:
    """A 5.0 client over the in-memory harness."""

    def __init__(self, h: InMemoryBroker, clientId: str, **connect) -> None:
        self.c = h.connect()
        self.c.parser = MQTTParser(server=False)
        self.c.parser.version = MQTT5
        props = connect.pop("properties", {})
        self.c.sendBytes(
            encode(Connect(clientId, protocolLevel=MQTT5, properties=props, **connect), MQTT5)
        )
        first = self.c.received()
        self.connack = first[0]
        self._early = first[1:]  # what followed the CONNACK (resent or queued messages)

    def send(self, *packets) -> None:
        self.c.sendBytes(b"".join(encode(p, MQTT5) for p in packets))

    def received(self) -> list:
        early, self._early = self._early, []
        return early + self.c.received()

    @property
    def disconnecting(self) -> bool:
        return self.c.disconnecting

    def lose(self) -> None:
        self.c.lose()


def sub(h, cid, *filters, props=None, **kw) -> Client5:
    c = Client5(h, cid, **kw)
    assert c.connack.returnCode == 0, c.connack
    c.send(Subscribe(1, list(filters), props or {}))
    assert c.received()[0].returnCodes
    return c


def dropWithWill(h: InMemoryBroker, clientId: str, sessionExpiry: int, willDelay: int) -> None:
    """Connect C{clientId} with a will (b"gone" on will/<clientId>), then drop the connection."""
    Client5(
        h,
        clientId,
        willTopic=f"will/{clientId}",
        willPayload=b"gone",
        properties={"session_expiry_interval": sessionExpiry},
        willProperties={"will_delay_interval": willDelay},
    ).lose()


def scramAuthentication(data: bytes) -> dict:
    """The AUTH/CONNECT properties carrying one SCRAM-SHA-256 message."""
    return {"authentication_method": "SCRAM-SHA-256", "authentication_data": data}


def scramAsAlice(password: str) -> tuple[ScramClient, Client5]:
    """Run SCRAM-SHA-256 as alice (whose password is s3cret) up to the client's final message.

    Returns the client's SCRAM state and the connection; the server's verdict
    (CONNACK) is the next packet received.
    """
    h = harness(scram_users=[{"username": "alice", "password": "s3cret"}])
    client = ScramClient("alice", password)
    c = Client5(h, "scram", properties=scramAuthentication(client.first()))
    assert isinstance(c.connack, Auth) and c.connack.reasonCode == Reason.CONTINUE_AUTHENTICATION
    serverFirst = c.connack.properties["authentication_data"]
    c.send(Auth(Reason.CONTINUE_AUTHENTICATION, scramAuthentication(client.final(serverFirst))))
    return client, c


def test_connackAdvertisesCapabilities_MQTT_3_2_2():
    h = harness(max_qos=1, retain_available=False, wildcard_subscription=False)
    c = Client5(h, "a")
    p = c.connack.properties
    assert c.connack.returnCode == 0
    assert p["receive_maximum"] == 100
    assert p["maximum_packet_size"] == 1048576
    assert p["topic_alias_maximum"] == 10
    assert p["maximum_qos"] == 1
    assert p["retain_available"] == 0
    assert p["wildcard_subscription_available"] == 0
    assert "shared_subscription_available" not in p  # available: property omitted


def test_assignedClientIdentifier_MQTT_3_2_2_16():
    h = harness()
    c = Client5(h, "", cleanSession=False)
    assigned = c.connack.properties["assigned_client_identifier"]
    assert assigned.startswith("auto-")
    assert h.sessions.get(assigned) is not None


def test_sessionExpiry_outlivesConnectionForExactlyThatLong_MQTT_3_1_2_23():
    h = harness()
    s = sub(h, "exp", ("t", 1), cleanSession=False, properties={"session_expiry_interval": 10})
    s.lose()
    p = Client5(h, "pub")
    p.send(Publish("t", b"queued", 1, packetId=1))
    h.clock.advance(9.5)
    back = Client5(h, "exp", cleanSession=False, properties={"session_expiry_interval": 10})
    assert back.connack.sessionPresent
    [m] = back.received()
    assert m.payload == b"queued"
    back.lose()
    h.clock.advance(10.1)
    assert h.sessions.get("exp") is None
    again = Client5(h, "exp", cleanSession=False)
    assert not again.connack.sessionPresent


def test_sessionExpiryZeroEndsWithConnection_MQTT_3_1_2_22():
    h = harness()
    s = sub(h, "zero", ("t", 1))
    s.lose()
    assert h.sessions.get("zero") is None


def test_sessionExpiryCappedAndReported():
    h = harness(max_session_expiry=30)
    c = Client5(h, "cap", properties={"session_expiry_interval": 3600})
    assert c.connack.properties["session_expiry_interval"] == 30


def test_disconnectMayNotSetExpiryAfterZero_MQTT_3_14_2_2():
    h = harness()
    c = Client5(h, "d")
    c.send(Disconnect(0, {"session_expiry_interval": 60}))
    [d] = c.received()
    assert d.reasonCode == Reason.PROTOCOL_ERROR
    assert c.disconnecting


def test_serverKeepAlive_MQTT_3_2_2_21():
    h = harness(max_keepalive=20)
    c = Client5(h, "k", keepAlive=300)
    assert c.connack.properties["server_keep_alive"] == 20
    h.clock.advance(29)
    assert not c.disconnecting
    h.clock.advance(2)
    [d] = c.received()
    assert d.reasonCode == Reason.KEEP_ALIVE_TIMEOUT


def test_responseInformation():
    h = harness(response_information="resp/")
    c = Client5(h, "r", properties={"request_response_information": 1})
    assert c.connack.properties["response_information"] == "resp/r"
    c2 = Client5(h, "r2")
    assert "response_information" not in c2.connack.properties


def test_receiveMaximumLimitsInflightToClient_MQTT_3_3_4_9():
    h = harness()
    s = sub(h, "slow", ("rm", 1), properties={"receive_maximum": 2})
    p = Client5(h, "p")
    for i in range(5):
        p.send(Publish("rm", b"%d" % i, 1, packetId=i + 1))
    got = s.received()
    assert [m.payload for m in got] == [b"0", b"1"]
    s.send(Puback(got[0].packetId))
    assert [m.payload for m in s.received()] == [b"2"]


def test_receiveMaximumExceededByClient_MQTT_3_3_4_7():
    h = harness(max_awaiting_rel=2)
    p = Client5(h, "p")
    p.send(*[Publish("q2", b"x", 2, packetId=i + 1) for i in range(3)])
    *acks, d = p.received()
    assert [a.packetId for a in acks] == [1, 2]
    assert d.reasonCode == Reason.RECEIVE_MAXIMUM_EXCEEDED


def test_maximumPacketSizeToClient_MQTT_3_1_2_25():
    h = harness()
    s = sub(h, "small", ("mp", 1), properties={"maximum_packet_size": 64})
    p = Client5(h, "p")
    p.send(Publish("mp", b"x" * 100, 1, packetId=1), Publish("mp", b"ok", 1, packetId=2))
    [m] = s.received()
    assert m.payload == b"ok"
    assert h.sessions.get("small").inflight.keys() == {m.packetId}


def test_packetTooLargeFromClient():
    h = harness(max_packet_size=64)
    p = Client5(h, "p")
    p.send(Publish("mp", b"x" * 100))
    [d] = p.received()
    assert d.reasonCode == Reason.PACKET_TOO_LARGE
    assert p.disconnecting


def test_topicAliasFromClient_MQTT_3_3_2_12():
    h = harness(topic_alias_maximum=3)
    s = sub(h, "s", ("alias/topic", 0))
    p = Client5(h, "p")
    p.send(Publish("alias/topic", b"1", properties={"topic_alias": 2}))
    p.send(Publish("", b"2", properties={"topic_alias": 2}))
    assert [(m.topic, m.payload) for m in s.received()] == [
        ("alias/topic", b"1"),
        ("alias/topic", b"2"),
    ]
    p.send(Publish("x", b"3", properties={"topic_alias": 4}))
    [d] = p.received()
    assert d.reasonCode == Reason.TOPIC_ALIAS_INVALID


def test_unknownTopicAliasIsProtocolError():
    h = harness()
    p = Client5(h, "p")
    p.send(Publish("", b"x", properties={"topic_alias": 1}))
    [d] = p.received()
    assert d.reasonCode == Reason.PROTOCOL_ERROR


def test_topicAliasToClient_MQTT_3_3_2_17():
    h = harness()
    s = sub(h, "s", ("ta", 0), properties={"topic_alias_maximum": 4})
    p = Client5(h, "p")
    p.send(Publish("ta", b"1"), Publish("ta", b"2"))
    first, second = s.received()
    assert first.topic == "ta" and first.properties["topic_alias"] == 1
    assert second.topic == "" and second.properties["topic_alias"] == 1


def test_messageExpiry_MQTT_3_3_2_5_and_6():
    h = harness()
    s = sub(h, "off", ("me", 1), cleanSession=False, properties={"session_expiry_interval": 100})
    s.lose()
    p = Client5(h, "p")
    p.send(Publish("me", b"short", 1, packetId=1, properties={"message_expiry_interval": 2}))
    p.send(Publish("me", b"long", 1, packetId=2, properties={"message_expiry_interval": 10}))
    h.clock.advance(3)
    back = Client5(h, "off", cleanSession=False, properties={"session_expiry_interval": 100})
    [m] = back.received()
    assert m.payload == b"long"
    assert m.properties["message_expiry_interval"] == 7  # decremented by the time held
    assert h.broker.stats.messagesExpired == 1


def test_expiredRetainedNotDelivered():
    h = harness()
    p = Client5(h, "p")
    p.send(Publish("rx", b"r", 0, retain=True, properties={"message_expiry_interval": 1}))
    h.clock.advance(2)
    s = Client5(h, "s")
    s.send(Subscribe(1, [("rx", 0)]))
    assert len(s.received()) == 1  # only the SUBACK


def test_propertiesPassedThroughUnchanged():
    h = harness()
    s = sub(h, "s", ("pp", 1))
    props = {
        "payload_format_indicator": 1,
        "content_type": "text/plain",
        "response_topic": "reply/here",
        "correlation_data": b"\x00\x01",
        "user_property": [("k", "v"), ("k", "v2")],
    }
    Client5(h, "p").send(Publish("pp", b"hello", 1, packetId=1, properties=props))
    [m] = s.received()
    assert m.properties == props


def test_payloadFormatInvalid():
    h = harness()
    p = Client5(h, "p")
    p.send(Publish("pf", b"\xff\xfe", 1, packetId=1, properties={"payload_format_indicator": 1}))
    [ack] = p.received()
    assert ack.reasonCode == Reason.PAYLOAD_FORMAT_INVALID


def test_noLocal_MQTT_3_8_3_3():
    h = harness()
    me = sub(h, "me", ("nl", 0 | 4))
    me.send(Publish("nl", b"mine"))
    assert me.received() == []
    Client5(h, "other").send(Publish("nl", b"theirs"))
    assert [m.payload for m in me.received()] == [b"theirs"]


def test_retainAsPublished_MQTT_3_3_1_12_and_13():
    h = harness()
    rap = sub(h, "rap", ("rp", 8))
    plain = sub(h, "plain", ("rp", 0))
    Client5(h, "p").send(Publish("rp", b"x", retain=True))
    assert rap.received()[0].retain is True
    assert plain.received()[0].retain is False


@pytest.mark.parametrize("handling, first, again", [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
def test_retainHandling_MQTT_3_3_1_9_to_11(handling, first, again):
    h = harness()
    Client5(h, "p").send(Publish("rh", b"kept", retain=True))
    s = Client5(h, "s")
    s.send(Subscribe(1, [("rh", handling << 4)]))
    assert len(s.received()) - 1 == first
    s.send(Subscribe(2, [("rh", handling << 4)]))
    assert len(s.received()) - 1 == again


def test_subscriptionIdentifiersOnePublishWithAll_MQTT_3_3_4_3():
    h = harness()
    s = Client5(h, "s")
    s.send(Subscribe(1, [("si/#", 1)], {"subscription_identifier": 7}))
    s.send(Subscribe(2, [("si/+", 0)], {"subscription_identifier": 9}))
    s.received()
    Client5(h, "p").send(Publish("si/x", b"x", 1, packetId=1))
    [m] = s.received()
    assert sorted(m.properties["subscription_identifier"]) == [7, 9]
    assert m.qos == 1


def test_sharedSubscriptionDeliversOncePerGroup():
    h = harness()
    a = sub(h, "a", ("$share/g/sh", 1))
    b = sub(h, "b", ("$share/g/sh", 1))
    other = sub(h, "c", ("$share/h/sh", 1))
    p = Client5(h, "p")
    for i in range(10):
        p.send(Publish("sh", b"%d" % i, 1, packetId=i + 1))
    got = a.received() + b.received()
    assert sorted(m.payload for m in got) == sorted(b"%d" % i for i in range(10))
    assert len(a.received()) == 0 and 3 <= len(got) // 2 <= 7
    assert len(other.received()) == 10


def test_sharedQueueFormAndNoRetained():
    h = harness()
    Client5(h, "p").send(Publish("q/x", b"r", retain=True))
    s = Client5(h, "s")
    s.send(Subscribe(1, [("$queue/q/#", 0)]))
    assert len(s.received()) == 1  # SUBACK only: no retained for shared subscriptions
    Client5(h, "p2").send(Publish("q/x", b"live"))
    assert [m.payload for m in s.received()] == [b"live"]


def test_sharedNoLocalIsProtocolError_MQTT_3_8_3_4():
    h = harness()
    s = Client5(h, "s")
    s.send(Subscribe(1, [("$share/g/t", 4)]))
    [d] = s.received()
    assert d.reasonCode == Reason.PROTOCOL_ERROR


def test_departedSharedMemberMessagesRedelivered():
    h = harness(shared_subscription_strategy="sticky")
    a = sub(h, "a", ("$share/g/rd", 1))
    p = Client5(h, "p")
    p.send(*[Publish("rd", b"%d" % i, 1, packetId=i + 1) for i in range(3)])
    assert len(a.received()) == 3  # never acknowledged
    b = sub(h, "b", ("$share/g/rd", 1))
    a.lose()
    assert sorted(m.payload for m in b.received()) == [b"0", b"1", b"2"]


def test_willDelay_MQTT_3_1_3_9():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    dropWithWill(h, "dies", sessionExpiry=60, willDelay=5)
    h.clock.advance(4)
    assert w.received() == []
    h.clock.advance(2)
    assert [m.payload for m in w.received()] == [b"gone"]


def test_willNotSentWhenResumedInTime():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    dropWithWill(h, "back", sessionExpiry=60, willDelay=5)
    h.clock.advance(2)
    Client5(h, "back", cleanSession=False, properties={"session_expiry_interval": 60})
    h.clock.advance(10)
    assert w.received() == []


def test_newConnectionWithCleanStartAlsoDeletesADelayedWill_MQTT_3_1_2_8():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    # Offline with its will waiting, then a Clean Start connection: the session ends,
    # but the new connection came before the delay, so the will is deleted.
    dropWithWill(h, "fresh", sessionExpiry=60, willDelay=5)
    h.clock.advance(2)
    Client5(h, "fresh", cleanSession=True)
    # Still connected when a Clean Start connection takes over (the old socket closes).
    live = Client5(
        h,
        "live",
        willTopic="will/live",
        willPayload=b"gone",
        properties={"session_expiry_interval": 60},
        willProperties={"will_delay_interval": 5},
    )
    Client5(h, "live", cleanSession=True)
    live.lose()
    h.clock.advance(10)
    assert w.received() == []


def test_takeoverPublishesAWillWithoutDelay():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    old = Client5(h, "nodelay", willTopic="will/nodelay", willPayload=b"gone")
    Client5(h, "nodelay")
    old.lose()
    assert [m.payload for m in w.received()] == [b"gone"]


def test_willAtSessionEndWhenSooner():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    dropWithWill(h, "short", sessionExpiry=2, willDelay=30)
    h.clock.advance(2.5)
    assert [m.payload for m in w.received()] == [b"gone"]


def test_disconnectWithWillMessage():
    h = harness()
    w = sub(h, "w", ("will/#", 0))
    c = Client5(h, "dw", willTopic="will/dw", willPayload=b"bye")
    c.send(Disconnect(Reason.DISCONNECT_WITH_WILL))
    c.lose()
    assert [m.payload for m in w.received()] == [b"bye"]


def test_takeoverSendsDisconnect0x8E():
    h = harness()
    first = Client5(h, "same")
    Client5(h, "same")
    [d] = first.received()
    assert d.reasonCode == Reason.SESSION_TAKEN_OVER


def test_malformedGetsDisconnect0x81():
    h = harness()
    c = Client5(h, "m")
    c.c.sendBytes(b"\x36\x05\x00\x01t\x00\x01")
    [d] = c.received()
    assert d.reasonCode == Reason.MALFORMED_PACKET


def test_duplicatePropertyIsProtocolError_MQTT_2_2_2_2():
    h = harness()
    c = Client5(h, "dup")
    # PUBLISH QoS 0 to "t" with Content Type twice.
    props = b"\x08" + b"\x03\x00\x01a" + b"\x03\x00\x01b"
    c.c.sendBytes(bytes((0x30, 3 + len(props) + 1)) + b"\x00\x01t" + props + b"x")
    [d] = c.received()
    assert d.reasonCode == Reason.PROTOCOL_ERROR


def test_serverMoved():
    h = harness(server_reference="other:1883", server_reference_mode="server_moved")
    c = Client5(h, "x")
    assert c.connack.returnCode == Reason.SERVER_MOVED
    assert c.connack.properties["server_reference"] == "other:1883"


def test_unsubackReasonCodes():
    h = harness()
    s = sub(h, "s", ("u", 0))
    s.send(Unsubscribe(2, ["u", "never"]))
    assert s.received() == [Unsuback(2, [0, Reason.NO_SUBSCRIPTION_EXISTED])]


def test_noMatchingSubscribers():
    h = harness()
    p = Client5(h, "p")
    p.send(Publish("nobody", b"x", 1, packetId=3))
    assert p.received() == [Puback(3, Reason.NO_MATCHING_SUBSCRIBERS)]


def test_pubrelUnknownId():
    h = harness()
    p = Client5(h, "p")
    p.send(Pubrel(42))
    assert p.received() == [Pubcomp(42, Reason.PACKET_IDENTIFIER_NOT_FOUND)]


def test_pubrecErrorEndsFlow():
    h = harness()
    s = sub(h, "s", ("q2", 2))
    Client5(h, "p").send(Publish("q2", b"x", 2, packetId=1))
    [m] = s.received()
    s.send(Pubrec(m.packetId, Reason.UNSPECIFIED_ERROR))
    assert s.received() == []
    assert h.sessions.get("s").inflight == {}


def test_scramEnhancedAuthentication_MQTT_4_12():
    client, c = scramAsAlice("s3cret")
    [connack] = c.received()
    assert connack.returnCode == 0
    assert client.verify(connack.properties["authentication_data"])
    assert c.c.protocol.username == "alice"


def test_scramWrongPassword():
    _, c = scramAsAlice("nope")
    [connack] = c.received()
    assert connack.returnCode == Reason.BAD_USER_NAME_OR_PASSWORD


def test_unknownAuthMethod():
    h = harness()
    c = Client5(h, "x", properties={"authentication_method": "KERBEROS"})
    assert c.connack.returnCode == Reason.BAD_AUTHENTICATION_METHOD


def test_delayedPublish():
    h = harness()
    s = sub(h, "s", ("later", 0))
    p = Client5(h, "p")
    p.send(Publish("$delayed/5/later", b"x", 1, packetId=1))
    assert p.received() == [Puback(1)]
    h.clock.advance(4.9)
    assert s.received() == []
    h.clock.advance(0.2)
    assert [(m.topic, m.payload) for m in s.received()] == [("later", b"x")]


def test_delayedQuota():
    h = harness(max_delayed_messages=1)
    p = Client5(h, "p")
    p.send(
        Publish("$delayed/5/a", b"x", 1, packetId=1), Publish("$delayed/5/a", b"y", 1, packetId=2)
    )
    assert p.received() == [Puback(1), Puback(2, Reason.QUOTA_EXCEEDED)]


def test_exclusiveSubscription():
    h = harness()
    a = Client5(h, "a")
    a.send(Subscribe(1, [("$exclusive/ex", 1)]))
    assert a.received() == [Suback(1, [1])]
    b = Client5(h, "b")
    b.send(Subscribe(1, [("$exclusive/ex", 1)]))
    assert b.received() == [Suback(1, [Reason.QUOTA_EXCEEDED])]
    Client5(h, "p").send(Publish("ex", b"x"))
    assert len(a.received()) == 1
    a.send(Unsubscribe(2, ["$exclusive/ex"]))
    a.received()
    b.send(Subscribe(3, [("$exclusive/ex", 1)]))
    assert b.received() == [Suback(3, [1])]


def test_topicRewriteAndAutoSubscribe():
    h = InMemoryBroker(
        {
            "mqtt": {
                "sys_interval": 0,
                "rewrite": [
                    {
                        "action": "publish",
                        "source_topic": "old/#",
                        "re": "^old/(.+)$",
                        "dest_topic": "new/$1",
                    }
                ],
                "auto_subscribe": [{"topic": "cmd/${clientid}", "qos": 1}],
            }
        }
    )
    dev = Client5(h, "dev1")
    s = sub(h, "s", ("new/#", 0))
    Client5(h, "p").send(Publish("old/a/b", b"x"), Publish("cmd/dev1", b"go", 1, packetId=1))
    assert [m.topic for m in s.received()] == ["new/a/b"]
    assert [(m.topic, m.payload) for m in dev.received()] == [("cmd/dev1", b"go")]


def test_featureSwitches():
    h = harness(
        shared_subscription=False, wildcard_subscription=False, subscription_identifiers=False
    )
    c = Client5(h, "f")
    c.send(Subscribe(1, [("$share/g/x", 0), ("a/+", 0), ("a/b", 0)]))
    assert c.received() == [
        Suback(
            1,
            [
                Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                0,
            ],
        )
    ]
    c.send(Subscribe(2, [("a/c", 0)], {"subscription_identifier": 3}))
    [d] = c.received()
    assert d.reasonCode == Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED


def test_qosAndRetainNotSupported():
    h = harness(max_qos=1, retain_available=False)
    c = Client5(h, "q")
    c.send(Subscribe(1, [("x", 2)]))
    assert c.received() == [Suback(1, [1])]
    c.send(Publish("x", b"x", 2, packetId=1))
    [d] = c.received()
    assert d.reasonCode == Reason.QOS_NOT_SUPPORTED
    c2 = Client5(h, "r")
    c2.send(Publish("x", b"x", retain=True))
    [d] = c2.received()
    assert d.reasonCode == Reason.RETAIN_NOT_SUPPORTED


def test_v5PropertiesNeverLeakTo311Subscriber():
    h = harness()
    old = h.connect()
    old.send(Connect("old", protocolLevel=MQTT311))
    old.received()
    old.send(Subscribe(1, [("mix", 1)]))
    old.received()
    Client5(h, "new").send(
        Publish(
            "mix",
            b"plain",
            1,
            packetId=1,
            properties={"user_property": [("a", "b")], "content_type": "x"},
        )
    )
    [m] = old.received()
    assert (m.payload, m.qos) == (b"plain", 1)
    s5 = sub(h, "s5", ("mix", 0))
    old.send(Publish("mix", b"from311", 0))
    [m5] = s5.received()
    assert (m5.payload, m5.properties) == (b"from311", {})


def test_packetIdsInOrderAfterQueuedMessagesExpire_MQTT_3_3_2_5():
    """Issue item 8: queued QoS 1 messages whose Message Expiry passed are not sent
    (MQTT-3.3.2-5); the rest arrive in publish order with packet identifiers allocated
    in order, none skipped for the expired ones."""
    h = harness()
    s = sub(h, "s", ("e", 1), properties={"receive_maximum": 1})
    p = Client5(h, "p")
    for i in range(6):
        props = {"message_expiry_interval": 1} if i % 2 else {}
        p.send(Publish("e", b"%d" % i, 1, packetId=i + 1, properties=props))
    [first] = s.received()
    h.clock.advance(2)
    delivered = [first]
    for _ in range(2):
        s.send(Puback(delivered[-1].packetId))
        [nxt] = s.received()
        delivered.append(nxt)
    s.send(Puback(delivered[-1].packetId))
    assert s.received() == []
    assert [(m.payload, m.packetId) for m in delivered] == [(b"0", 1), (b"2", 2), (b"4", 3)]


def test_lingerAfterServerDisconnect_MQTT_4_13_2_1():
    """Issue item 1: after DISCONNECT 0x93 the connection lingers (what the client still
    sends is dropped), is no client any more, and is aborted after close_linger."""
    h = harness(max_awaiting_rel=1, close_linger=2.0)
    c = Client5(h, "lingering")
    c.send(*[Publish("t", b"x", 2, packetId=i) for i in (1, 2)])
    packets = c.received()
    assert packets[-1] == Disconnect(Reason.RECEIVE_MAXIMUM_EXCEEDED, packets[-1].properties)
    assert c.disconnecting and not c.c.transport.disconnected
    assert len(h.broker.lingering) == 1 and not h.broker.connections
    c.send(Publish("t", b"more", 1, packetId=3))  # read and dropped
    assert c.received() == []
    h.clock.advance(2.0)
    assert c.c.transport.disconnected  # aborted at the bound
    assert not h.broker.lingering


def test_lingeringConnectionsAreBounded():
    """At [limits] max_lingering a server-initiated close is immediate (no linger)."""
    h = InMemoryBroker(
        {"mqtt": {"sys_interval": 0, "max_awaiting_rel": 1}, "limits": {"max_lingering": 0}}
    )
    c = Client5(h, "bounded")
    c.send(*[Publish("t", b"x", 2, packetId=i) for i in (1, 2)])
    assert c.received()[-1].type == Disconnect.type
    assert c.disconnecting and not h.broker.lingering


def test_authenticatorErrorIsServerUnavailable_0x88():
    """An authenticator that fails (not one that says no) refuses with CONNACK 0x88."""
    from twisted.internet import defer

    from robustmq.core.auth import AuthChain

    class Broken:
        name = "broken"

        def authenticate(self, credentials):
            return defer.fail(RuntimeError("backend down"))

    h = harness()
    h.broker.auth = AuthChain([Broken()])
    c = Client5(h, "unlucky")
    assert c.connack.returnCode == Reason.SERVER_UNAVAILABLE
    assert c.disconnecting
