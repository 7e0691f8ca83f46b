"""Fixtures for the admin API tests.

C{node} is one node (auth off) shared by a module's tests, which use their own
client ids and topics (C{uniq}).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from adminhelpers import AdminNode, Paho


@pytest.fixture(scope="module")
def node() -> Iterator[AdminNode]:
    """A node with the admin API (auth off) for the module's tests."""
    n = AdminNode().start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A short prefix unique to this test, for topics and client ids."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-30:]
    return f"{name.strip('-')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def clients(node: AdminNode) -> Iterator[Callable[..., Paho]]:
    """Makes paho clients on C{node}; all are closed after the test."""
    made: list[Paho] = []

    def make(clientId: str, clean: bool = True, port: int | None = None) -> Paho:
        c = Paho(port or node.port, clientId, clean)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
