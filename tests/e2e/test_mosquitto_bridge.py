"""A mosquitto broker bridged to a RobustMQ node, both ways (Debian's mosquitto).

mosquitto's bridge (``connection`` / ``address`` / ``topic`` in
mosquitto.conf) connects with the protocol level's top bit set (its
``try_private`` default) to say that it is a bridge.  RobustMQ accepts that
for 3.1 and 3.1.1 and gives the connection bridge semantics, as mosquitto
itself does for such connections: what the bridge publishes is not sent back
to it (No Local), and retained messages keep their RETAIN flag on the way to
it (Retain As Published), so that mosquitto retains them too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustmq.protocols.mqtt._packets import MQTT311
from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto not installed")


class Mosquitto:
    """A mosquitto broker on a free loopback port, bridged to C{remotePort}."""

    def __init__(self, workdir: Path, remotePort: int, protocol: str) -> None:
        self.port = freePort()
        self.log = workdir / "mosquitto.log"
        config = workdir / "mosquitto.conf"
        config.write_text(
            f"""
per_listener_settings false
allow_anonymous true
persistence false
log_dest file {self.log}
log_type all
listener {self.port} 127.0.0.1

connection robustmq
address 127.0.0.1:{remotePort}
bridge_protocol_version {protocol}
try_private true
cleansession true
restart_timeout 1
notifications false
topic out/# out 1
topic in/# in 1
topic both/# both 1
"""
        )
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        waitForPort("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(params=["mqttv311", "mqttv31"])
def bridged(request: pytest.FixtureRequest) -> Iterator[tuple[BrokerProcess, Mosquitto]]:
    """A RobustMQ node and a mosquitto bridged to it; ready once the bridge is up."""
    node = BrokerProcess("[mqtt]\nsys_interval = 0\n")
    node.start()
    mosquitto = Mosquitto(node.workdir, node.port, request.param)
    try:
        node.waitForOutput(", bridge, clean=", timeout=10)
        # The bridge subscribes (in/#, both/#) right after its CONNACK.
        time.sleep(0.3)
        yield node, mosquitto
    finally:
        mosquitto.stop()
        node.cleanup()


def client(port: int, cid: str) -> RawClient:
    c = RawClient(port, timeout=TIMEOUT)
    assert c.connect(cid, MQTT311).returnCode == 0
    return c


def test_messages_cross_the_bridge_both_ways(bridged: tuple[BrokerProcess, Mosquitto]) -> None:
    node, mosquitto = bridged
    atRobust = client(node.port, "at-robust")
    atMosquitto = client(mosquitto.port, "at-mosquitto")
    atRobust.subscribe([("out/#", 1)])
    atMosquitto.subscribe([("in/#", 1)])
    time.sleep(0.3)  # mosquitto forwards out/# without a subscription of its own
    atMosquitto.publish("out/a", b"from mosquitto", 1)
    atRobust.publish("in/a", b"from robustmq", 1)
    got = atRobust.expectPublish()
    assert (got.topic, got.payload) == ("out/a", b"from mosquitto")
    got = atMosquitto.expectPublish()
    assert (got.topic, got.payload) == ("in/a", b"from robustmq")


def test_no_message_comes_back_across_the_bridge(bridged: tuple[BrokerProcess, Mosquitto]) -> None:
    """both/# goes both ways: a message crosses once and is not echoed (No Local for
    the bridge).  Without it each side would see its message again, and again."""
    node, mosquitto = bridged
    atRobust = client(node.port, "loop-robust")
    atMosquitto = client(mosquitto.port, "loop-mosquitto")
    atRobust.subscribe([("both/#", 1)])
    atMosquitto.subscribe([("both/#", 1)])
    atMosquitto.publish("both/m", b"m", 1)
    atRobust.publish("both/r", b"r", 1)
    seenAtRobust = sorted(atRobust.expectPublish().payload for _ in range(2))
    seenAtMosquitto = sorted(atMosquitto.expectPublish().payload for _ in range(2))
    assert seenAtRobust == seenAtMosquitto == [b"m", b"r"]
    atRobust.expectNothing(1.0)
    atMosquitto.expectNothing(0.2)


def test_retained_messages_stay_retained_across_the_bridge(
    bridged: tuple[BrokerProcess, Mosquitto],
) -> None:
    """A retained message published at RobustMQ reaches mosquitto with RETAIN set
    (Retain As Published for the bridge), so mosquitto retains it for later subscribers."""
    node, mosquitto = bridged
    client(node.port, "retain-pub").publish("in/r", b"kept", 1, retain=True)
    deadline = time.monotonic() + TIMEOUT
    while True:
        # A subscriber that arrives before the message reaches mosquitto gets it live,
        # without RETAIN; one that arrives after gets mosquitto's retained copy.
        late = client(mosquitto.port, f"late-{time.monotonic_ns()}")
        late.subscribe([("in/r", 1)])
        try:
            got = late.expectPublish(timeout=0.5)
            if got.retain:
                break
        except TimeoutError:
            pass
        late.close()
        if time.monotonic() > deadline:
            raise AssertionError("mosquitto never retained the message")
    assert (got.topic, got.payload) == ("in/r", b"kept")
