"""Every MQTT 5.0 reason code the broker sends, provoked over a raw socket.

docs/mqtt.md lists each code with when it is sent and the normative
statement; each row names the test here that provokes it.  Codes are
checked against the tables of MQTT 5.0 section 2.4 (which codes each packet
may carry) and the sections cited per test.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from robustmq.protocols.mqtt import encodeConnect
from robustmq.protocols.mqtt._codec import encodeSubscribe
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Connack,
    Connect,
    Reason,
)
from robustmq.testing.process import BrokerProcess, freePort
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0

ACL_FILE = """
[[rules]]
permission = "deny"
action = "subscribe"
topic = "secret/#"
"""


def _http(port: int, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    """Small bounds to run into, a user, an ACL rule and the admin API."""
    httpPort = freePort()
    broker = BrokerProcess()
    (broker.workdir / "acl.toml").write_text(ACL_FILE)
    broker.extraConfig = f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {httpPort}

[mqtt]
sys_interval = 0
max_awaiting_rel = 5
topic_alias_maximum = 2
max_topic_levels = 4
max_client_id_length = 64
max_delayed_messages = 1
close_linger = 1.0

[acl]
file = "{broker.workdir / "acl.toml"}"

[auth]
chain = ["users", "anonymous"]
allow_anonymous = "on"
"""
    broker.httpPort = httpPort  # type: ignore[attr-defined]
    broker.start()
    _http(httpPort, "POST", "/api/v1/users", {"username": "alice", "password": "right"})
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="module")
def restricted() -> Iterator[BrokerProcess]:
    """A node that turns optional features off (and sends bare reason codes)."""
    broker = BrokerProcess(
        """
[mqtt]
sys_interval = 0
max_qos = 1
retain_available = false
wildcard_subscription = false
shared_subscription = false
subscription_identifiers = false
max_packet_size = 1024
reason_strings = false
close_linger = 1.0

[acl]
deny_action = "disconnect"
"""
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def clients() -> Iterator[Any]:
    made: list[RawClient] = []

    def make(broker: BrokerProcess) -> RawClient:
        c = RawClient(broker.port, timeout=TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    return f"rc-{request.node.name[-30:]}-{time.monotonic_ns() % 1_000_000}"


def v5(clients: Any, broker: BrokerProcess, cid: str, **fields: Any) -> RawClient:
    """A raw 5.0 client connected as C{cid}."""
    c = clients(broker)
    ack = c.connect(cid, MQTT5, **fields)
    assert ack.returnCode == 0, ack.properties
    return c


def refused(clients: Any, broker: BrokerProcess, cid: str, **fields: Any) -> Connack:
    """The CONNACK refusing C{cid}'s 5.0 CONNECT; the broker then closes."""
    c = clients(broker)
    ack = c.connect(cid, MQTT5, **fields)
    assert ack.sessionPresent is False
    c.waitClosed(TIMEOUT)
    return ack


def disconnected(c: RawClient) -> int:
    """The reason code of the broker's DISCONNECT; the broker then closes."""
    code = c.expectDisconnect().reasonCode
    c.waitClosed(TIMEOUT)
    return code


# CONNACK (MQTT 5.0 section 3.2.2.2)


def test_connack_0x81_malformed_connect(clients: Any, node: BrokerProcess) -> None:
    """The CONNECT reserved flag set: a Malformed Packet (MQTT-3.1.2-3)."""
    data = bytearray(encodeConnect(Connect("malformed", MQTT5)))
    data[9] |= 0x01  # connect flags: reserved bit
    c = clients(node)
    c.parser.version = MQTT5
    c.send(bytes(data))
    assert c.expect(Connack).returnCode == Reason.MALFORMED_PACKET
    c.waitClosed(TIMEOUT)


def test_connack_0x82_protocol_error(clients: Any, node: BrokerProcess, uid: str) -> None:
    """Request Problem Information 2: a Protocol Error (MQTT 5.0 section 3.1.2.11.7)."""
    ack = refused(clients, node, uid, properties={"request_problem_information": 2})
    assert ack.returnCode == Reason.PROTOCOL_ERROR


def test_connack_0x85_client_identifier_not_valid(clients: Any, node: BrokerProcess) -> None:
    """A client id longer than [mqtt] max_client_id_length (MQTT-3.1.3-8's 0x85)."""
    ack = refused(clients, node, "x" * 65)
    assert ack.returnCode == Reason.CLIENT_IDENTIFIER_NOT_VALID


def test_connack_0x86_bad_user_name_or_password(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    ack = refused(clients, node, uid, username="alice", password=b"wrong")
    assert ack.returnCode == Reason.BAD_USER_NAME_OR_PASSWORD


def test_connack_0x87_not_authorized(clients: Any, node: BrokerProcess, uid: str) -> None:
    """A known user without a password is not authorized (no password to be wrong)."""
    ack = refused(clients, node, uid, username="alice")
    assert ack.returnCode == Reason.NOT_AUTHORIZED


def test_connack_0x8a_banned(clients: Any, node: BrokerProcess, uid: str) -> None:
    _http(node.httpPort, "POST", "/api/v1/bans", {"kind": "clientid", "value": uid})  # type: ignore[attr-defined]
    assert refused(clients, node, uid).returnCode == Reason.BANNED


def test_connack_0x8c_bad_authentication_method(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    ack = refused(clients, node, uid, properties={"authentication_method": "NOPE"})
    assert ack.returnCode == Reason.BAD_AUTHENTICATION_METHOD


def test_connack_0x90_will_topic_not_accepted(clients: Any, node: BrokerProcess, uid: str) -> None:
    """A will topic deeper than [mqtt] max_topic_levels (CONNACK reason 0x90)."""
    ack = refused(clients, node, uid, willTopic="a/b/c/d/e", willPayload=b"w")
    assert ack.returnCode == Reason.TOPIC_NAME_INVALID


def test_connack_0x95_packet_too_large(clients: Any, restricted: BrokerProcess) -> None:
    """A CONNECT above [mqtt] max_packet_size, refused from its length header alone."""
    c = clients(restricted)
    c.sendConnect("big", MQTT5, willTopic="w", willPayload=b"x" * 2000)
    assert c.expect(Connack).returnCode == Reason.PACKET_TOO_LARGE
    c.waitClosed(TIMEOUT)


def test_connack_0x99_will_payload_format_invalid(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    """A will whose Payload Format Indicator is 1 with a non-UTF-8 payload (section 3.1.3.2.3)."""
    ack = refused(
        clients,
        node,
        uid,
        willTopic="will/t",
        willPayload=b"\xff\xfe",
        willProperties={"payload_format_indicator": 1},
    )
    assert ack.returnCode == Reason.PAYLOAD_FORMAT_INVALID


def test_connack_0x9a_retain_not_supported(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    ack = refused(clients, restricted, uid, willTopic="w", willPayload=b"x", willRetain=True)
    assert ack.returnCode == Reason.RETAIN_NOT_SUPPORTED


def test_connack_0x9b_qos_not_supported(clients: Any, restricted: BrokerProcess, uid: str) -> None:
    ack = refused(clients, restricted, uid, willTopic="w", willPayload=b"x", willQos=2)
    assert ack.returnCode == Reason.QOS_NOT_SUPPORTED


def test_connack_0x9d_server_moved(clients: Any, uid: str) -> None:
    with BrokerProcess(
        '[mqtt]\nserver_reference_mode = "server_moved"\nserver_reference = "elsewhere:1883"\n'
    ) as moved:
        ack = refused(clients, moved, uid)
        assert ack.returnCode == Reason.SERVER_MOVED
        assert ack.properties["server_reference"] == "elsewhere:1883"


# DISCONNECT (MQTT 5.0 section 3.14.2.1)


def test_disconnect_0x81_malformed_packet(clients: Any, node: BrokerProcess, uid: str) -> None:
    """A PUBLISH with QoS 3 (MQTT-3.3.1-4)."""
    c = v5(clients, node, uid)
    c.send(b"\x36\x05\x00\x01t\x00\x01")
    assert disconnected(c) == Reason.MALFORMED_PACKET


def test_disconnect_0x82_protocol_error(clients: Any, node: BrokerProcess, uid: str) -> None:
    """A second CONNECT (MQTT-3.1.0-2)."""
    c = v5(clients, node, uid)
    c.send(encodeConnect(Connect(uid, MQTT5)))
    assert disconnected(c) == Reason.PROTOCOL_ERROR


def test_disconnect_0x87_not_authorized(clients: Any, restricted: BrokerProcess, uid: str) -> None:
    """A PUBLISH the ACL denies, with [acl] deny_action = "disconnect" ($SYS is never
    writable by clients)."""
    c = v5(clients, restricted, uid)
    c.publish("$SYS/forged", b"x", 1, complete=False)
    assert disconnected(c) == Reason.NOT_AUTHORIZED


def test_disconnect_0x8b_server_shutting_down(clients: Any, uid: str) -> None:
    with BrokerProcess() as stopping:
        c = v5(clients, stopping, uid)
        stopping.stop()
        assert disconnected(c) == Reason.SERVER_SHUTTING_DOWN


def test_disconnect_0x8d_keep_alive_timeout(clients: Any, node: BrokerProcess, uid: str) -> None:
    """Silent for 1.5 times the keep alive (MQTT-3.1.2-22).  The DISCONNECT used to be
    thrown away by aborting the socket right after writing it."""
    c = v5(clients, node, uid, keepAlive=1)
    assert disconnected(c) == Reason.KEEP_ALIVE_TIMEOUT


def test_disconnect_0x8e_session_taken_over(clients: Any, node: BrokerProcess, uid: str) -> None:
    """Another connection with the same client id (MQTT-3.1.4-3)."""
    old = v5(clients, node, uid)
    v5(clients, node, uid)
    assert disconnected(old) == Reason.SESSION_TAKEN_OVER


def test_disconnect_0x93_receive_maximum_exceeded(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    """One QoS 2 PUBLISH more than the Receive Maximum in the CONNACK (section 3.3.4)."""
    c = v5(clients, node, uid)
    for pid in range(1, 7):
        c.publish("rm/t", b"x", 2, packetId=pid, complete=False)
    assert disconnected(c) == Reason.RECEIVE_MAXIMUM_EXCEEDED


@pytest.mark.parametrize("alias", [0, 3])
def test_disconnect_0x94_topic_alias_invalid(
    clients: Any, node: BrokerProcess, uid: str, alias: int
) -> None:
    """Topic Alias 0 (MQTT-3.3.2-8) or above the Topic Alias Maximum of 2 (MQTT-3.3.2-9)."""
    c = v5(clients, node, uid)
    c.publish("ta/t", b"x", 0, properties={"topic_alias": alias})
    assert disconnected(c) == Reason.TOPIC_ALIAS_INVALID


def test_disconnect_0x95_packet_too_large(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    c = v5(clients, restricted, uid)
    c.publish("big/t", b"x" * 2000, 0)
    assert disconnected(c) == Reason.PACKET_TOO_LARGE


def test_disconnect_0x98_administrative_action(clients: Any, node: BrokerProcess, uid: str) -> None:
    c = v5(clients, node, uid)
    _http(node.httpPort, "DELETE", f"/api/v1/clients/{uid}")  # type: ignore[attr-defined]
    assert disconnected(c) == Reason.ADMINISTRATIVE_ACTION


def test_disconnect_0x9a_retain_not_supported(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    c = v5(clients, restricted, uid)
    c.publish("r/t", b"x", 0, retain=True)
    assert disconnected(c) == Reason.RETAIN_NOT_SUPPORTED


def test_disconnect_0x9b_qos_not_supported(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    c = v5(clients, restricted, uid)
    c.publish("q/t", b"x", 2, complete=False)
    assert disconnected(c) == Reason.QOS_NOT_SUPPORTED


def test_disconnect_0xa1_subscription_identifiers_not_supported(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    c = v5(clients, restricted, uid)
    c.send(encodeSubscribe(1, [("s/t", 0)], {"subscription_identifier": 7}))
    assert disconnected(c) == Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED


# PUBACK / PUBREC (sections 3.4.2.1 and 3.5.2.1)


def _refusal(c: RawClient, qos: int, topic: str, payload: bytes = b"x", **props: Any) -> Any:
    pid = c.publish(topic, payload, qos, complete=False, properties=props or None)
    assert pid is not None
    return c.expectAck(PUBACK if qos == 1 else PUBREC, pid)


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_0x10_no_matching_subscribers(
    clients: Any, node: BrokerProcess, uid: str, qos: int
) -> None:
    c = v5(clients, node, uid)
    assert _refusal(c, qos, f"nobody/{uid}").reasonCode == Reason.NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_0x87_not_authorized(clients: Any, node: BrokerProcess, uid: str, qos: int) -> None:
    """The ACL denies ($SYS), with the default deny_action "ignore"."""
    c = v5(clients, node, uid)
    assert _refusal(c, qos, "$SYS/forged").reasonCode == Reason.NOT_AUTHORIZED
    assert c.ping() is not None


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_0x90_topic_name_invalid(
    clients: Any, node: BrokerProcess, uid: str, qos: int
) -> None:
    """A topic beyond [mqtt] max_topic_levels (4): refused, the connection stays."""
    c = v5(clients, node, uid)
    assert _refusal(c, qos, "a/b/c/d/e").reasonCode == Reason.TOPIC_NAME_INVALID
    assert c.ping() is not None


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_0x97_quota_exceeded(clients: Any, node: BrokerProcess, uid: str, qos: int) -> None:
    """More delayed messages than [mqtt] max_delayed_messages (1)."""
    c = v5(clients, node, uid)
    codes = [_refusal(c, qos, f"$delayed/60/d/{uid}").reasonCode for _ in range(2)]
    assert codes[-1] == Reason.QUOTA_EXCEEDED


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_0x99_payload_format_invalid(
    clients: Any, node: BrokerProcess, uid: str, qos: int
) -> None:
    """Payload Format Indicator 1 and a payload that is not UTF-8 (section 3.3.2.3.2):
    PUBACK/PUBREC 0x99, not a DISCONNECT; the connection stays."""
    c = v5(clients, node, uid)
    ack = _refusal(c, qos, "pfi/t", b"\xff\xfe", payload_format_indicator=1)
    assert ack.reasonCode == Reason.PAYLOAD_FORMAT_INVALID
    if qos == 2:
        # A PUBREC with an error code ends the flow: a PUBREL now finds nothing.
        c.sendAck(PUBREL, ack.packetId)
        assert c.expectAck(PUBCOMP, ack.packetId).reasonCode == 0x92
    assert c.ping() is not None


def test_qos0_payload_format_invalid_is_dropped(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    """At QoS 0 there is nothing to carry 0x99: the message is dropped, not delivered."""
    sub = v5(clients, node, f"{uid}-s")
    sub.subscribe([("pfi0/t", 0)])
    c = v5(clients, node, uid)
    c.publish("pfi0/t", b"\xff", 0, properties={"payload_format_indicator": 1})
    c.publish("pfi0/t", b"ok", 0, properties={"payload_format_indicator": 1})
    assert sub.expectPublish().payload == b"ok"


# PUBREL / PUBCOMP (sections 3.6.2.1 and 3.7.2.1)


def test_pubcomp_0x92_packet_identifier_not_found(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    """A PUBREL for an id not awaiting release is answered, with 0x92 (section 4.3.3)."""
    c = v5(clients, node, uid)
    c.sendAck(PUBREL, 4242)
    assert c.expectAck(PUBCOMP, 4242).reasonCode == Reason.PACKET_IDENTIFIER_NOT_FOUND
    assert c.ping() is not None


def test_pubrel_0x92_packet_identifier_not_found(
    clients: Any, node: BrokerProcess, uid: str
) -> None:
    """A PUBREC for no delivery in flight gets PUBREL 0x92."""
    c = v5(clients, node, uid)
    c.sendAck(PUBREC, 4343)
    assert c.expectAck(PUBREL, 4343).reasonCode == Reason.PACKET_IDENTIFIER_NOT_FOUND


# SUBACK (section 3.9.3) and UNSUBACK (section 3.11.3)


def test_suback_codes(clients: Any, node: BrokerProcess, uid: str) -> None:
    c = v5(clients, node, uid)
    suback = c.subscribe(
        [
            (f"s/{uid}/0", 0),
            (f"s/{uid}/1", 1),
            (f"s/{uid}/2", 2),
            ("secret/x", 1),  # denied by the ACL file
            ("a/#/b", 1),  # '#' not last (MQTT-4.7.1-2)
            ("a/b/c/d/e", 1),  # deeper than max_topic_levels
        ]
    )
    assert suback.returnCodes == [
        Reason.SUCCESS,
        Reason.GRANTED_QOS_1,
        Reason.GRANTED_QOS_2,
        Reason.NOT_AUTHORIZED,
        Reason.TOPIC_FILTER_INVALID,
        Reason.QUOTA_EXCEEDED,
    ]


def test_suback_codes_of_disabled_features(
    clients: Any, restricted: BrokerProcess, uid: str
) -> None:
    c = v5(clients, restricted, uid)
    suback = c.subscribe([(f"s/{uid}", 2), ("s/+", 0), ("$share/g/s/t", 0)])
    assert suback.returnCodes == [
        Reason.GRANTED_QOS_1,  # max_qos = 1
        Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    ]


def test_unsuback_codes(clients: Any, node: BrokerProcess, uid: str) -> None:
    c = v5(clients, node, uid)
    c.subscribe([(f"u/{uid}", 0)])
    assert c.unsubscribe([f"u/{uid}", f"u/{uid}/none", "a/#/b"]).reasonCodes == [
        Reason.SUCCESS,
        Reason.NO_SUBSCRIPTION_EXISTED,
        Reason.TOPIC_FILTER_INVALID,
    ]
