"""Topic rewriting cannot bypass the ACL, and wildcards do not deliver denied topics.

Client "bob" is denied subscribing to C{secret/#} (a stored rule for his
client id).  A rewrite rule maps subscriptions to C{pub/#} onto
C{secret/$1}: authorisation applies to the filter after rewriting, so
bob's C{pub/#} is refused and he gets neither live nor retained
C{secret/*} messages.  A plain C{#} subscription is granted (it is not
under C{secret/}), but with C{[acl] check_deliveries} (the default) the
messages on C{secret/*} it covers are withheld, checked per delivery; with
C{check_deliveries = false} they are delivered.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from robustmq.testing.paho import PahoClient
from robustmq.testing.process import BrokerProcess, freePort, waitForPort

pytestmark = pytest.mark.timeout(120)


def _node(extra: str) -> Iterator[BrokerProcess]:
    http = freePort()
    node = BrokerProcess(
        f"""
[http]
port = {http}

[[mqtt.rewrite]]
action = "subscribe"
source_topic = "pub/#"
re = "^pub/(.*)$"
dest_topic = "secret/$1"

{extra}
"""
    )
    node.start()
    try:
        waitForPort("127.0.0.1", http)
        rule = {
            "permission": "deny",
            "action": "subscribe",
            "topics": ["secret/#"],
            "clientid": "bob",
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{http}/api/v1/acl",
            data=json.dumps(rule).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    yield from _node("")


@pytest.fixture(scope="module")
def lenientNode() -> Iterator[BrokerProcess]:
    yield from _node("[acl]\ncheck_deliveries = false\n")


def _clients(node: BrokerProcess) -> tuple[PahoClient, PahoClient]:
    bob = PahoClient(node.port, "bob", protocol=mqtt.MQTTv5).connect()
    pub = PahoClient(node.port, f"pub-{uuid.uuid4().hex[:6]}").connect()
    return bob, pub


def test_rewriteDoesNotBypassSubscribeAcl(node: BrokerProcess) -> None:
    """bob's pub/# (rewritten to secret/#) is refused with 0x87; no retained or live
    secret/* message reaches him."""
    bob, pub = _clients(node)
    try:
        pub.publish("secret/retained", b"r", qos=1, retain=True)
        assert bob.subscribe("pub/#", qos=1) == [0x87]
        assert bob.subscribe("sentinel", qos=1) == [1]
        pub.publish("secret/live", b"l", qos=1)
        pub.publish("sentinel", b"end", qos=1)
        assert bob.untilTopic("sentinel") == []
        assert "refusing subscription 'secret/#': not authorized" in node.output()
    finally:
        pub.publish("secret/retained", b"", qos=1, retain=True)
        bob.stop()
        pub.stop()


def test_wildcardDoesNotDeliverDeniedTopics(node: BrokerProcess) -> None:
    """# is granted, but live and retained secret/* messages are withheld from bob;
    other topics arrive."""
    bob, pub = _clients(node)
    try:
        pub.publish("secret/kept", b"r", qos=1, retain=True)
        pub.publish("open/kept", b"o", qos=1, retain=True)
        assert bob.subscribe("#", qos=1) == [1]
        pub.publish("secret/live", b"s", qos=1)
        pub.publish("open/live", b"o", qos=0)
        pub.publish("sentinel", b"end", qos=1)
        topics = [m.topic for m in bob.untilTopic("sentinel")]
        assert "secret/kept" not in topics and "secret/live" not in topics, topics
        assert "open/kept" in topics and "open/live" in topics, topics
    finally:
        for t in ("secret/kept", "open/kept"):
            pub.publish(t, b"", qos=1, retain=True)
        bob.stop()
        pub.stop()


def test_wildcardDeliversWhenSwitchedOff(lenientNode: BrokerProcess) -> None:
    """With check_deliveries = false a granted # receives secret/* too."""
    bob, pub = _clients(lenientNode)
    try:
        assert bob.subscribe("#", qos=1) == [1]
        pub.publish("secret/live", b"s", qos=1)
        pub.publish("sentinel", b"end", qos=1)
        assert [m.topic for m in bob.untilTopic("sentinel")] == ["secret/live"]
    finally:
        bob.stop()
        pub.stop()
