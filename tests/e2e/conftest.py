"""Fixtures for end-to-end tests: a real node in a subprocess, real clients over loopback.

One node (C{broker}) is shared by the whole session: every test uses its own
topics and client ids (C{uniq}), so tests do not see each other's traffic.
Tests that need a special configuration, a restart or a signal start their own
L{BrokerProcess}.  Every client a fixture hands out is closed after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from robustmq.testing.paho import TIMEOUT, PahoClient
from robustmq.testing.process import BrokerProcess
from robustmq.testing.rawclient import RawClient

#: The shared node: $SYS every second, and a small packet size limit to test against.
SHARED_MAX_PACKET_SIZE = 65536
SHARED_CONFIG = f"""
[mqtt]
sys_interval = 1
max_packet_size = {SHARED_MAX_PACKET_SIZE}
"""

PROTOCOLS = {"mqttv31": mqtt.MQTTv31, "mqttv311": mqtt.MQTTv311}

#: No end-to-end test may take longer than this, whatever the node does.
TEST_TIMEOUT = 60


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test in this directory a hard timeout (unless it sets its own)."""
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerProcess]:
    """One node for the whole session."""
    node = BrokerProcess(SHARED_CONFIG)
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A short prefix unique to this test, for topics and client ids."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-40:]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pahoFactory(broker: BrokerProcess) -> Iterator[Callable[..., PahoClient]]:
    """Makes connected paho clients on the shared node; stops them all afterwards."""
    made: list[PahoClient] = []

    def make(
        clientId: str,
        protocol: int = mqtt.MQTTv311,
        cleanSession: bool = True,
        port: int | None = None,
        connect: bool = True,
        keepAlive: int = 60,
    ) -> PahoClient:
        client = PahoClient(port or broker.port, clientId, protocol, cleanSession, keepAlive)
        made.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in made:
        client.stop()


@pytest.fixture
def rawFactory(broker: BrokerProcess) -> Iterator[Callable[..., RawClient]]:
    """Makes raw-socket clients on the shared node; closes them all afterwards."""
    made: list[RawClient] = []

    def make(port: int | None = None) -> RawClient:
        client = RawClient(port or broker.port, timeout=TIMEOUT)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def waitFor(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    """Poll C{predicate} until true; fail after C{timeout}. (For log lines and files.)"""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)
