"""Fixtures for the Kafka tests: a real node with a Kafka listener, real clients.

One node (C{kafkaNode}) is shared by a module's tests; each test uses its
own topics and group ids (C{uniq}).  Tests that need a restart or special
settings start their own L{KafkaNodeProcess}.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kafkanode import KafkaNodeProcess


@pytest.fixture(scope="module")
def kafkaNode() -> Iterator[KafkaNodeProcess]:
    """One node with a Kafka listener for the module's tests."""
    node = KafkaNodeProcess()
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test, for topics and groups."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-30:]
    return f"{name}-{uuid.uuid4().hex[:8]}"
