"""Helpers for the placement tests: a real etcd process and bounded waiting.

L{EtcdProcess} lives in L{robustmq.testing.etcd}; it is re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from robustmq.testing.etcd import EtcdProcess

__all__ = ["WAIT", "EtcdProcess", "sleep", "waitFor"]

#: The longest any placement test waits for one condition.
WAIT = 15.0


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await deferLater(reactor, seconds, lambda: None)


async def waitFor(
    condition: Callable[[], Any], timeout: float = WAIT, what: str = "condition"
) -> Any:
    """Poll C{condition} (plain or async) every 20 ms until it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.02)
