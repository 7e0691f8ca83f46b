"""2,100 silent Kafka sockets do not lock other clients out: they are closed when idle.

The node runs with a 2,600 open-files limit and a 3 s
C{connections_max_idle_ms} (the authentication timeout is set long, so it
is the idle bound that closes them).  A first wave of 2,100 sockets that
never send a byte is opened; MQTT clients keep connecting meanwhile; every
socket of the wave is closed by the node.  A second wave of 2,100 then fits
again (without the idle bound the two waves would exceed the limit and the
node could no longer accept anyone), and MQTT clients still connect.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from kafkanode import KafkaNodeProcess

pytestmark = pytest.mark.timeout(300)

WAVE = 2100


@pytest.fixture(scope="module")
def node() -> Iterator[KafkaNodeProcess]:
    n = KafkaNodeProcess("connections_max_idle_ms = 3000\nauthentication_timeout_ms = 600000\n")
    n.fileLimit = 2600
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


def _wave(port: int) -> list[socket.socket]:
    socks = []
    deadline = time.monotonic() + 60
    while len(socks) < WAVE:
        assert time.monotonic() < deadline, f"only {len(socks)} sockets connected"
        s = socket.socket()
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def _closedByNode(socks: list[socket.socket], timeout: float) -> int:
    """How many of C{socks} saw the node close them within C{timeout} seconds."""
    poller = select.poll()
    byFd = {s.fileno(): s for s in socks}
    for fd in byFd:
        poller.register(fd, select.POLLIN | select.POLLHUP)
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            if fd in closed:
                continue
            try:
                data = byFd[fd].recv(1)
            except ConnectionError:
                data = b""
            if data == b"":
                closed.add(fd)
                poller.unregister(fd)
    return len(closed)


def _mqttConnects(node: KafkaNodeProcess, n: int, tag: str) -> None:
    """n MQTT clients connect and publish (mosquitto_pub in its own process: this test
    process holds more sockets than a select()-based client can watch)."""
    for i in range(n):
        out = subprocess.run(
            ["mosquitto_pub", "-p", str(node.port), "-i", f"{tag}-{i}", "-t", "t", "-m", "x"],
            capture_output=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr


def test_idleSocketsClosedWhileMqttConnects(node: KafkaNodeProcess) -> None:
    first = _wave(node.kafkaPort)
    try:
        _mqttConnects(node, 10, "during-first")
        assert _closedByNode(first, 60) == WAVE
    finally:
        for s in first:
            s.close()
    assert "connections_max_idle_ms" in node.output()
    second = _wave(node.kafkaPort)
    try:
        _mqttConnects(node, 10, "during-second")
        assert _closedByNode(second, 60) == WAVE
    finally:
        for s in second:
            s.close()
    _mqttConnects(node, 5, "after")
