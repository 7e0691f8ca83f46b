"""End-to-end: Debian's mosquitto_pub / mosquitto_sub against a real node over loopback.

mosquitto_sub runs with C{-d} (debug) under C{stdbuf -oL} so that its output
is line-buffered: the test waits for its "received SUBACK" line before
publishing (no sleeps), and reads the QoS and retain flag of each message
from its "received PUBLISH (d0, q1, r0, ...)" lines, while the C{-v} lines
("topic payload") give what the user would see.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from robustmq.testing.mosquitto import MosquittoSub
from robustmq.testing.process import BrokerProcess

TIMEOUT = 5.0
VERSIONS = ["mqttv31", "mqttv311"]

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None or shutil.which("mosquitto_pub") is None,
    reason="mosquitto-clients not installed",
)


@pytest.fixture
def mosquittoSub(broker: BrokerProcess) -> Iterator[Callable[..., MosquittoSub]]:
    """Starts mosquitto_sub processes on the shared node; kills leftovers afterwards."""
    made: list[MosquittoSub] = []

    def start(version: str, *args: str) -> MosquittoSub:
        sub = MosquittoSub(broker.port, version, list(args))
        made.append(sub)
        return sub

    yield start
    for sub in made:
        sub.kill()


def mosquittoPub(port: int, version: str, *args: str) -> None:
    """Run mosquitto_pub to completion; it must exit 0."""
    result = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def shortId() -> str:
    """A client id short enough for MQTT 3.1 (at most 23 characters)."""
    return "e2e" + uuid.uuid4().hex[:12]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_at_each_qos(
    broker: BrokerProcess, mosquittoSub: Callable[..., MosquittoSub], version: str, qos: int
) -> None:
    topic = f"mosq/{shortId()}/q{qos}"
    sub = mosquittoSub(version, "-t", topic, "-q", str(qos), "-C", "3")
    sub.waitSubscribed()
    for i in range(3):
        mosquittoPub(broker.port, version, "-t", topic, "-q", str(qos), "-m", f"message {i}")
    verbose, flags = sub.finish()
    assert verbose == [f"{topic} message 0", f"{topic} message 1", f"{topic} message 2"]
    assert flags == [(topic, 0, qos, 0)] * 3


@pytest.mark.parametrize("version", VERSIONS)
def test_delivered_at_the_lower_of_publish_and_subscription_qos(
    broker: BrokerProcess, mosquittoSub: Callable[..., MosquittoSub], version: str
) -> None:
    topic = f"mosq/{shortId()}/min"
    sub = mosquittoSub(version, "-t", topic, "-q", "1", "-C", "2")
    sub.waitSubscribed()
    mosquittoPub(broker.port, version, "-t", topic, "-q", "2", "-m", "two")
    mosquittoPub(broker.port, version, "-t", topic, "-q", "0", "-m", "zero")
    verbose, flags = sub.finish()
    assert verbose == [f"{topic} two", f"{topic} zero"]
    assert [f[2] for f in flags] == [1, 0]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_and_null_message_clears_it(
    broker: BrokerProcess, mosquittoSub: Callable[..., MosquittoSub], version: str
) -> None:
    topic = f"mosq/{shortId()}/retained"
    mosquittoPub(broker.port, version, "-t", topic, "-q", "1", "-r", "-m", "kept")
    sub = mosquittoSub(version, "-t", topic, "-q", "1", "-C", "1")
    verbose, flags = sub.finish()
    assert verbose == [f"{topic} kept"]
    assert flags == [(topic, 0, 1, 1)]
    # -n -r: a zero-length retained message removes it.
    mosquittoPub(broker.port, version, "-t", topic, "-q", "1", "-r", "-n")
    sub = mosquittoSub(version, "-t", topic, "-q", "1", "-C", "1")
    sub.waitSubscribed()
    mosquittoPub(broker.port, version, "-t", topic, "-q", "1", "-m", "live")
    verbose, flags = sub.finish()
    assert verbose == [f"{topic} live"]  # not "kept", and not an empty retained message
    assert flags == [(topic, 0, 1, 0)]


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_abnormal_end(
    broker: BrokerProcess, mosquittoSub: Callable[..., MosquittoSub], version: str
) -> None:
    base = f"mosq/{shortId()}"
    willTopic = f"{base}/will"
    watcher = mosquittoSub(version, "-t", willTopic, "-q", "1", "-C", "1")
    watcher.waitSubscribed()
    dying = mosquittoSub(
        version,
        "-t",
        f"{base}/anything",
        "--will-topic",
        willTopic,
        "--will-payload",
        "dead client",
        "--will-qos",
        "1",
    )
    dying.waitSubscribed()
    dying.kill(signal.SIGKILL)  # no DISCONNECT: the kernel just closes the socket
    verbose, flags = watcher.finish()
    assert verbose == [f"{willTopic} dead client"]
    assert flags == [(willTopic, 0, 1, 0)]


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_subscriber_gets_messages_sent_while_down(
    broker: BrokerProcess, mosquittoSub: Callable[..., MosquittoSub], version: str
) -> None:
    cid = shortId()
    topic = f"mosq/{cid}/queued"
    # -E: subscribe, then disconnect at once, leaving the persistent session behind.
    first = mosquittoSub(version, "-c", "-i", cid, "-t", topic, "-q", "2", "-E")
    first.finish()
    # QoS 2 last: libmosquitto hands a QoS 2 message to the application only at PUBREL,
    # so an earlier QoS 2 message could be printed after a later QoS 1 one.
    for i, qos in enumerate([1, 1, 2]):
        mosquittoPub(broker.port, version, "-t", topic, "-q", str(qos), "-m", f"offline {i}")
    again = mosquittoSub(version, "-c", "-i", cid, "-t", topic, "-q", "2", "-C", "3")
    verbose, flags = again.finish()
    assert verbose == [f"{topic} offline 0", f"{topic} offline 1", f"{topic} offline 2"]
    assert [f[2] for f in flags] == [1, 1, 2]
