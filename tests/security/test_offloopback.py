"""Clients on another host: a network namespace joined by a veth pair (robustmq.testing.netns).

The node runs with the default security settings (those of
etc/robustmq.toml: anonymous from loopback only) and listens for Kafka and
AMQP on the host side of the link as well as on loopback; the clients run
inside the namespace, so the node sees them arrive from 10.211.x.y.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from robustmq.testing import netns
from robustmq.testing.process import BrokerProcess, freePort, waitForPort

pytestmark = pytest.mark.timeout(240)

TIMEOUT = 20.0
ALICE_PW = "alice-off-loopback-Pa55"

_why = netns.unavailable()


@pytest.fixture(scope="module")
def remote() -> Iterator[netns.RemoteHost]:
    if _why is not None:
        pytest.skip(f"no network namespaces: {_why}")
    host = netns.RemoteHost().create()
    try:
        yield host
    finally:
        host.cleanup()


class _Node(BrokerProcess):
    kafkaPort: int
    amqpPort: int
    httpPort: int
    remoteHost: str

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.httpPort}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")


def _startNode(remote: netns.RemoteHost, extra: str = "") -> _Node:
    kafkaPort, amqpPort, httpPort = freePort(), freePort(), freePort()
    listeners = ""
    for bind in ("127.0.0.1", remote.hostAddress):
        listeners += f"""
[[listeners]]
protocol = "kafka"
name = "kafka-{bind}"
bind = "{bind}"
port = {kafkaPort}

[[listeners]]
protocol = "amqp"
name = "amqp-{bind}"
bind = "{bind}"
port = {amqpPort}
"""
    node = _Node(
        f"""
[http]
port = {httpPort}

[kafka]
group_initial_rebalance_delay_ms = 0

{extra}
{listeners}
"""
    )
    node.kafkaPort, node.amqpPort, node.httpPort = kafkaPort, amqpPort, httpPort
    node.remoteHost = remote.hostAddress
    node.start()
    waitForPort("127.0.0.1", kafkaPort)
    waitForPort("127.0.0.1", httpPort)
    return node


@pytest.fixture(scope="module")
def node(remote: netns.RemoteHost) -> Iterator[_Node]:
    """The default security settings, with alice in the user store."""
    n = _startNode(remote)
    try:
        n.api("POST", "/api/v1/users", {"username": "alice", "password": ALICE_PW})
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def uniq() -> str:
    return f"off-{uuid.uuid4().hex[:10]}"


def _loopbackRecords(node: _Node, topic: str) -> list[bytes]:
    """What a loopback (anonymous) consumer reads from C{topic} within a few seconds."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{node.kafkaPort}",
            "group.id": topic,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 6
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
    finally:
        c.close()
    return got


_PRODUCE = textwrap.dedent(
    """
    import json, sys, time
    from confluent_kafka import Producer
    conf = json.loads(sys.argv[1])
    errors, reports = [], []
    conf["error_cb"] = lambda e: errors.append(e.str())
    conf["message.timeout.ms"] = 6000
    p = Producer(conf)
    p.produce(sys.argv[2], value=b"from-the-other-host", on_delivery=lambda e, m: reports.append(
        None if e is None else e.str()))
    p.flush(15)
    print(json.dumps({"errors": errors, "reports": reports}))
    """
)


def _remoteProduce(remote: netns.RemoteHost, node: _Node, topic: str, **conf: Any) -> Any:
    conf = {"bootstrap.servers": f"{node.remoteHost}:{node.kafkaPort}", **conf}
    out = remote.run(
        [sys.executable, "-c", _PRODUCE, json.dumps(conf), topic],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_confluentWithoutCredentialsRefused(
    remote: netns.RemoteHost, node: _Node, uniq: str
) -> None:
    """A confluent-kafka producer on another host without SASL: its records fail with the
    SASL error, nothing is written, and the node logs why it refused."""
    result = _remoteProduce(remote, node, uniq)
    assert result["reports"] and all(r is not None for r in result["reports"]), result
    assert "refusing metadata from an unauthenticated client" in node.output()
    assert remote.peerAddress in node.output()
    assert _loopbackRecords(node, uniq) == []


def test_confluentWithScramAccepted(remote: netns.RemoteHost, node: _Node, uniq: str) -> None:
    """The same client with SCRAM-SHA-256 credentials of a stored user produces."""
    result = _remoteProduce(
        remote,
        node,
        uniq,
        **{
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "alice",
            "sasl.password": ALICE_PW,
        },
    )
    assert result["reports"] == [None], result
    assert _loopbackRecords(node, uniq) == [b"from-the-other-host"]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcatWithoutCredentialsRefused(remote: netns.RemoteHost, node: _Node, uniq: str) -> None:
    """kcat -P from another host without SASL writes nothing; with SASL PLAIN it writes."""
    broker = ["-b", f"{node.remoteHost}:{node.kafkaPort}"]
    out = remote.run(
        ["kcat", *broker, "-P", "-t", uniq, "-X", "message.timeout.ms=4000"],
        input=b"anonymous\n",
        capture_output=True,
        timeout=60,
    )
    assert out.returncode != 0 or b"fail" in out.stderr.lower(), out
    assert _loopbackRecords(node, uniq) == []
    sasl = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=PLAIN"]
    sasl += ["-X", "sasl.username=alice", "-X", f"sasl.password={ALICE_PW}"]
    out = remote.run(
        ["kcat", *broker, *sasl, "-P", "-t", uniq],
        input=b"hello\n",
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out
    assert _loopbackRecords(node, uniq) == [b"hello"]
    assert ALICE_PW not in node.output()


def test_loopbackStaysAnonymous(node: _Node, uniq: str) -> None:
    """On loopback the developer default still serves anonymous Kafka clients."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": f"127.0.0.1:{node.kafkaPort}"})
    p.produce(uniq, value=b"local")
    assert p.flush(TIMEOUT) == 0
    assert _loopbackRecords(node, uniq) == [b"local"]
