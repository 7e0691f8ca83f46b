"""Helpers of the worker tests: clients placed on chosen workers by reconnecting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from robustmq.testing.workers import WorkerNode

#: Connections tried before a test gives up finding a client on another worker
#: (the kernel hashes each connection's addresses: with 2 workers the chance
#: of missing one worker in 24 tries is 2**-23).
ATTEMPTS = 24


def onEveryWorker(
    node: WorkerNode, make: Callable[[int], tuple[Any, str]], close: Callable[[Any], None]
) -> dict[int, Any]:
    """Make clients (C{make(n)} -> (client, client id)) until each worker holds one;
    returns worker -> client and closes the extra ones."""
    placed: dict[int, Any] = {}
    for n in range(ATTEMPTS):
        client, clientId = make(n)
        worker = node.workerOf(clientId)
        if worker in placed:
            close(client)
        else:
            placed[worker] = client
        if len(placed) == node.workers:
            return placed
    raise AssertionError(f"{ATTEMPTS} connections never reached every worker: {sorted(placed)}")


def connectOn(
    node: WorkerNode,
    make: Callable[[], Any],
    clientId: str,
    close: Callable[[Any], None],
    accept: Callable[[int], bool],
) -> tuple[Any, int]:
    """Connect C{make()} (client id C{clientId}) again and again until the worker it lands
    on satisfies C{accept}; returns the client and its worker."""
    for _ in range(ATTEMPTS):
        client = make()
        worker = node.workerOf(clientId)
        if accept(worker):
            return client, worker
        close(client)
        time.sleep(0.05)
    raise AssertionError(f"{clientId} never landed on a wanted worker in {ATTEMPTS} tries")
