"""Clients on another host: a network namespace joined by a veth pair (robustmq.testing.netns).

The node runs with the default security settings (those of
etc/robustmq.toml: anonymous from loopback only) and listens for Kafka and
AMQP on the host side of the link as well as on loopback; the clients run
inside the namespace, so the node sees them arrive from 10.211.x.y.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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


CTL = str(__import__("pathlib").Path(sys.executable).with_name("robustmq"))


@pytest.fixture(scope="module")
def strictNode(remote: netns.RemoteHost) -> Iterator[_Node]:
    """Default-deny ([acl] no_match = "deny"), two vhosts; alice may configure and read
    anything in "/" but write only to exchanges named alice.* (set with robustmq ctl)."""
    n = _startNode(remote, '[acl]\nno_match = "deny"\n\n[amqp]\nvhosts = ["/", "other"]\n')
    try:
        n.api("POST", "/api/v1/users", {"username": "alice", "password": ALICE_PW})
        out = subprocess.run(
            [
                CTL,
                "ctl",
                "--url",
                f"http://127.0.0.1:{n.httpPort}",
                "amqp",
                "permissions",
                "set",
                "alice",
                "/",
                ".*",
                "^alice\\.",
                ".*",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert out.returncode == 0, out.stderr
        yield n
    finally:
        n.cleanup()


_PIKA = textwrap.dedent(
    """
    import json, sys, pika
    host, port, vhost, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    params = pika.ConnectionParameters(host, port, vhost,
        pika.PlainCredentials("alice", sys.argv[5]), connection_attempts=1, socket_timeout=10)
    out = {}
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError as e:
        out["open"] = repr(e).replace(chr(92), "")
        print(json.dumps(out)); sys.exit(0)
    ch = conn.channel()
    ch.exchange_declare(exchange, "fanout")
    try:
        ch.basic_publish(exchange, "", b"x")
        ch.queue_declare("alice-probe")  # a round trip: a refused publish closes the channel
        out["publish"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["publish"] = [e.reply_code, e.reply_text]
    conn.close()
    print(json.dumps(out))
    """
)


def _pika(remote: netns.RemoteHost, node: _Node, vhost: str, exchange: str) -> Any:
    out = remote.run(
        [
            sys.executable,
            "-c",
            _PIKA,
            node.remoteHost,
            str(node.amqpPort),
            vhost,
            exchange,
            ALICE_PW,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pikaVhostWithoutPermissions(remote: netns.RemoteHost, strictNode: _Node) -> None:
    """pika from another host opening a vhost where alice has no permissions is refused
    as RabbitMQ refuses it: 530 NOT_ALLOWED, "access to vhost 'other' refused for user 'alice'"."""
    got = _pika(remote, strictNode, "other", "alice.x")
    assert "(530)" in got["open"], got
    assert "NOT_ALLOWED - access to vhost" in got["open"]
    assert "'other' refused for user" in got["open"]
    assert "has no permissions in vhost other" in strictNode.output()


def test_pikaWriteOutsideRegex(remote: netns.RemoteHost, strictNode: _Node) -> None:
    """A publish to an exchange alice may not write to closes the channel with 403."""
    assert _pika(remote, strictNode, "/", "alice.ok") == {"publish": "ok"}
    got = _pika(remote, strictNode, "/", "bob.ex")
    assert got["publish"][0] == 403, got
    assert got["publish"][1] == (
        "ACCESS_REFUSED - write access to exchange 'bob.ex' in vhost '/' refused for user 'alice'"
    )


def test_ctlListsAmqpPermissions(strictNode: _Node) -> None:
    """robustmq ctl amqp permissions list / clear."""
    url = ["--url", f"http://127.0.0.1:{strictNode.httpPort}"]
    out = subprocess.run(
        [CTL, "ctl", *url, "amqp", "permissions", "list"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert "alice" in out.stdout and "^alice\\." in out.stdout, out
    out = subprocess.run(
        [CTL, "ctl", *url, "amqp", "permissions", "clear", "nobody", "/"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode != 0
