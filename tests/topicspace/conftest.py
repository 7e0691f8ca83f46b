"""Fixtures for the topic-space tests: one node per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from topicspacenode import TopicSpaceNode


@pytest.fixture(scope="module")
def node() -> Iterator[TopicSpaceNode]:
    """One node for a test module."""
    n = TopicSpaceNode().start()
    try:
        yield n
    finally:
        n.cleanup()
