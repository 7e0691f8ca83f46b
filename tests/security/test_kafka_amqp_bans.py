"""Bans, flapping detection and the accept rate apply to Kafka and AMQP connections.

A user ban refuses the user's Kafka SASL login and AMQP login and closes
their open connections; flapping detection bans a user whose Kafka logins
come too often; an address ban refuses new sockets at once.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from confluent_kafka import KafkaError, Producer

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 10.0
PW = "bans-Pa55word"


class _Node(BrokerProcess):
    http: int
    kafka: int
    amqp: int

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def node() -> Iterator[_Node]:
    http, kafka, amqp = freePort(), freePort(), freePort()
    n = _Node(
        f"""
[http]
port = {http}

[limits]
flapping_enabled = true
flapping_max_connects = 4
flapping_window = 60.0

[[listeners]]
protocol = "kafka"
bind = "127.0.0.1"
port = {kafka}

[[listeners]]
protocol = "amqp"
bind = "127.0.0.1"
port = {amqp}
"""
    )
    n.http, n.kafka, n.amqp = http, kafka, amqp
    n.start()
    try:
        waitForPort("127.0.0.1", http)
        for user in ("carol", "dave", "erin"):
            n.api("POST", "/api/v1/users", {"username": user, "password": PW})
        yield n
    finally:
        n.cleanup()


def _kafkaLogin(node: _Node, user: str) -> list[KafkaError]:
    """One SASL PLAIN client that fetches metadata; the errors it saw."""
    errors: list[KafkaError] = []
    p = Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{node.kafka}",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": user,
            "sasl.password": PW,
            "error_cb": errors.append,
        }
    )
    try:
        p.list_topics(timeout=3)
        return errors
    except Exception:  # noqa: BLE001 - the refusal shows in errors
        pass
    deadline = time.monotonic() + 3
    while not errors and time.monotonic() < deadline:
        p.poll(0.2)
    return errors


def _amqp(node: _Node, user: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            node.amqp,
            credentials=pika.PlainCredentials(user, PW),
            connection_attempts=1,
        )
    )


def test_userBanRefusesAndCloses(node: _Node) -> None:
    conn = _amqp(node, "carol")
    node.api("POST", "/api/v1/bans", {"kind": "username", "value": "carol", "duration": 60})
    deadline = time.monotonic() + TIMEOUT
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        while time.monotonic() < deadline:
            conn.process_data_events(0.2)
    assert closed.value.reply_code == 320  # CONNECTION_FORCED
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        _amqp(node, "carol")
    errors = _kafkaLogin(node, "carol")
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert "refusing SASL PLAIN login of carol: user carol is banned" in node.output()


def test_flappingKafkaUserBanned(node: _Node) -> None:
    """Logins of one user beyond flapping_max_connects within the window ban the user
    (each librdkafka client opens more than one connection, so it takes a few clients)."""
    assert not any(e.code() == KafkaError._AUTHENTICATION for e in _kafkaLogin(node, "dave"))
    for _ in range(10):
        errors = _kafkaLogin(node, "dave")
        if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
            break
    else:
        raise AssertionError("dave was never refused")
    bans = node.api("GET", "/api/v1/bans")["data"]
    ban = next(b for b in bans if b["value"] == "dave")
    assert (ban["kind"], ban["by"]) == ("username", "flapping")


def test_addressBanRefusesSockets(node: _Node) -> None:
    node.api("POST", "/api/v1/bans", {"kind": "ip", "value": "127.0.0.1", "duration": 5})
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            _amqp(node, "erin")
        errors = _kafkaLogin(node, "erin")
        assert errors, "the Kafka socket was not refused"
        assert "refused: address 127.0.0.1 is banned" in node.output()
    finally:
        node.api("DELETE", "/api/v1/bans/ip/127.0.0.1")
