"""Fixtures for AMQP end-to-end tests: a real node with an AMQP listener, real clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 10.0


def amqpConfig(port: int, extra: str = "") -> str:
    """Extra TOML for L{BrokerProcess}: an AMQP listener on C{port}, plus C{extra}."""
    return f"""
[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {port}

{extra}
"""


class AMQPNode:
    """A running node and its AMQP port."""

    def __init__(self, extra: str = "", dataDir: str | None = None) -> None:
        self.amqpPort = freePort()
        self.process = BrokerProcess(amqpConfig(self.amqpPort, extra), dataDir=dataDir)

    @property
    def url(self) -> str:
        """An amqp:// URL for the default guest user."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqpPort}/%2F"

    def start(self) -> AMQPNode:
        self.process.start()
        waitForPort("127.0.0.1", self.amqpPort)
        return self

    def stop(self) -> None:
        self.process.stop()

    def cleanup(self) -> None:
        self.process.cleanup()


@pytest.fixture(scope="session")
def amqpNode() -> Iterator[AMQPNode]:
    """One node with an AMQP listener for the whole session."""
    node = AMQPNode().start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test, for queues and exchanges."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-40:]
    return f"{name}-{uuid.uuid4().hex[:8]}"
