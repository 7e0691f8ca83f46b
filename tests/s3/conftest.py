"""Fixtures for the object-storage end-to-end tests: a real SeaweedFS per module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from robustmq.testing.seaweedfs import SeaweedFSProcess


@pytest.fixture(scope="module")
def weed() -> Iterator[SeaweedFSProcess]:
    """A SeaweedFS whose access keys are in this process's environment (nodes inherit it)."""
    server = SeaweedFSProcess().start()
    saved = {k: os.environ.get(k) for k in server.credentials()}
    os.environ.update(server.credentials())
    try:
        yield server
    finally:
        server.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
