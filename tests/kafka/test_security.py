"""End-to-end: SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS with real Kafka clients.

One node requires SASL on its Kafka listeners (a plain one and a TLS one);
its users are the C{[[mqtt.scram_users]]} table that SCRAM uses (the stop-gap
until the security work's user store lands), so a PLAIN login with a wrong
password for one of them is refused too.  A second node serves Kafka over
TLS without SASL.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from kafka.errors import KafkaError as KpError
from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaConsumer, KafkaProducer
from robustmq.testing.process import freePort, waitForPort
from robustmq.transports.testcerts import generateTestCertificates

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class _Node(KafkaNodeProcess):
    tlsPort: int

    def start(self, timeout: float = 20.0) -> _Node:
        super().start(timeout)
        waitForPort("127.0.0.1", self.tlsPort, timeout)
        return self


def _tlsListener(port: int, certs: dict[str, Path]) -> str:
    return f"""
[[listeners]]
protocol = "kafka"
transport = "tls"
bind = "127.0.0.1"
port = {port}
certfile = "{certs["server"]}"
keyfile = "{certs["server_key"]}"
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generateTestCertificates(tmp_path_factory.mktemp("certs"))


def _startNode(extra: str, certs: dict[str, Path]) -> _Node:
    tlsPort = freePort()
    node = _Node(extra + _tlsListener(tlsPort, certs))
    node.tlsPort = tlsPort
    return node.start()


@pytest.fixture(scope="module")
def saslNode(certs: dict[str, Path]) -> Iterator[_Node]:
    """A node that requires SASL, with alice/wonderland in the SCRAM users table."""
    node = _startNode(
        'sasl_required = true\n\n[[mqtt.scram_users]]\nusername = "alice"\npassword = "wonderland"\n',
        certs,
    )
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def tlsNode(certs: dict[str, Path]) -> Iterator[_Node]:
    """A node with a Kafka listener over TLS and no SASL."""
    node = _startNode("", certs)
    try:
        yield node
    finally:
        node.cleanup()


def _confluentSasl(mechanism: str, password: str) -> dict[str, Any]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": "alice",
        "sasl.password": password,
    }


def _confluentRoundTrip(conf: dict[str, Any], topic: str) -> list[bytes]:
    """Produce three records with C{conf}, then read them back with the same security settings."""
    from confluent_kafka import Consumer

    p = Producer({**conf, "linger.ms": 5})
    for i in range(3):
        p.produce(topic, value=b"m%d" % i)
    assert p.flush(TIMEOUT) == 0
    c = Consumer(
        {**conf, "group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
    finally:
        c.close()
    return got


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluentSaslRightPassword(saslNode: _Node, uniq: str, mechanism: str) -> None:
    """librdkafka authenticates with each mechanism, then produces and consumes."""
    conf = {"bootstrap.servers": saslNode.bootstrap, **_confluentSasl(mechanism, "wonderland")}
    assert _confluentRoundTrip(conf, uniq) == [b"m0", b"m1", b"m2"]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluentSaslWrongPassword(saslNode: _Node, uniq: str, mechanism: str) -> None:
    """A wrong password gets librdkafka's authentication error and nothing is produced."""
    errors: list[KafkaError] = []
    p = Producer(
        {
            "bootstrap.servers": saslNode.bootstrap,
            **_confluentSasl(mechanism, "looking-glass"),
            "error_cb": errors.append,
            "message.timeout.ms": 1000,
        }
    )
    p.produce(uniq, value=b"never")
    deadline = time.monotonic() + TIMEOUT
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        assert time.monotonic() < deadline, errors
        p.poll(0.2)
    assert p.flush(TIMEOUT) == 0  # the record fails (times out) rather than being written
    assert f"SASL {mechanism} failed for alice" in saslNode.output()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafkaPythonSasl(saslNode: _Node, uniq: str, mechanism: str) -> None:
    """kafka-python: the right password produces and consumes; a wrong one is refused."""
    common = {
        "bootstrap_servers": saslNode.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
    }
    p = KafkaProducer(sasl_plain_password="wonderland", **common)
    assert p.send(uniq, b"kp").get(TIMEOUT).offset == 0
    p.close()
    c = KafkaConsumer(
        uniq,
        sasl_plain_password="wonderland",
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT * 1000),
        **common,
    )
    assert next(iter(c)).value == b"kp"
    c.close()
    refusals = saslNode.output().count(f"SASL {mechanism} failed for alice")
    with pytest.raises(KpError):  # it cannot bootstrap: every attempt is refused
        KafkaProducer(sasl_plain_password="looking-glass", bootstrap_timeout_ms=2000, **common)
    assert saslNode.output().count(f"SASL {mechanism} failed for alice") > refusals


def test_saslSsl(saslNode: _Node, certs: dict[str, Path], uniq: str) -> None:
    """SASL over TLS (SASL_SSL) with SCRAM-SHA-512."""
    conf = {
        "bootstrap.servers": f"127.0.0.1:{saslNode.tlsPort}",
        **_confluentSasl("SCRAM-SHA-512", "wonderland"),
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(certs["ca"]),
    }
    assert _confluentRoundTrip(conf, uniq) == [b"m0", b"m1", b"m2"]


def test_confluentTls(tlsNode: _Node, certs: dict[str, Path], uniq: str) -> None:
    """librdkafka over TLS (security.protocol=SSL) verifying the node's certificate."""
    conf = {
        "bootstrap.servers": f"localhost:{tlsNode.tlsPort}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(certs["ca"]),
    }
    assert _confluentRoundTrip(conf, uniq) == [b"m0", b"m1", b"m2"]


def test_kafkaPythonTls(tlsNode: _Node, certs: dict[str, Path], uniq: str) -> None:
    """kafka-python over TLS, and what it writes is read over plain TCP."""
    p = KafkaProducer(
        bootstrap_servers=f"127.0.0.1:{tlsNode.tlsPort}",
        security_protocol="SSL",
        ssl_cafile=str(certs["ca"]),
    )
    assert p.send(uniq, b"secret").get(TIMEOUT).offset == 0
    p.close()
    c = KafkaConsumer(
        uniq,
        bootstrap_servers=tlsNode.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT * 1000),
    )
    assert next(iter(c)).value == b"secret"
    c.close()


def test_tlsRefusesPlaintextClient(tlsNode: _Node, uniq: str) -> None:
    """A client speaking plain Kafka to the TLS port gets no metadata."""
    errors: list[KafkaError] = []
    p = Producer({"bootstrap.servers": f"127.0.0.1:{tlsNode.tlsPort}", "error_cb": errors.append})
    deadline = time.monotonic() + TIMEOUT
    while not errors:
        assert time.monotonic() < deadline
        p.poll(0.2)
    with pytest.raises(Exception):  # noqa: B017,PT011
        p.list_topics(timeout=1)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcatTls(tlsNode: _Node, certs: dict[str, Path], uniq: str) -> None:
    """Debian's kcat produces and consumes over TLS."""
    tls = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs['ca']}"]
    broker = ["-b", f"localhost:{tlsNode.tlsPort}"]
    lines = "".join(f"tls{i}\n" for i in range(10))
    subprocess.run(
        ["kcat", *broker, *tls, "-P", "-t", uniq], input=lines.encode(), check=True, timeout=TIMEOUT
    )
    out = subprocess.run(
        ["kcat", *broker, *tls, "-C", "-t", uniq, "-o", "beginning", "-c", "10", "-e"],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    assert out.stdout.decode().split() == [f"tls{i}" for i in range(10)]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_failedLoginAnsweredAndLogged(saslNode: _Node, uniq: str, mechanism: str) -> None:
    """A login as an unknown user: librdkafka is told SASL authentication failed at once
    (no timeout), and the node logs the mechanism and the user name, never the password."""
    user = f"nobody-{uniq[-8:]}"
    password = f"pw-{uniq}"
    errors: list[KafkaError] = []
    p = Producer(
        {
            "bootstrap.servers": saslNode.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": password,
            "error_cb": errors.append,
        }
    )
    deadline = time.monotonic() + TIMEOUT
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        assert time.monotonic() < deadline, errors
        p.poll(0.2)
    assert any("Authentication failed" in e.str() for e in errors), errors
    saslNode.waitForOutput(f"SASL {mechanism} failed for {user}")
    assert password not in saslNode.output()
