"""Running benchmark workers in child processes and collecting what they report.

Workers talk to the parent through one queue of tagged tuples:
``("ready", name, None)`` once connected, ``("done", name, result)`` at the end,
``("error", name, message)`` if anything failed.  The parent waits for every
worker with a timeout and terminates (by its own ``Process`` handle) any that
outlived it, so a stuck broker never leaves a stuck benchmark behind.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.synchronize
import os
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

from ._client import BenchError

# fork: the workers need nothing but their arguments, and start in a few ms.
_CTX = multiprocessing.get_context("fork")

Job = Callable[[Callable[[], None], multiprocessing.synchronize.Event], dict[str, Any]]
"""A worker body: connects, calls ``ready()``, waits for the go event, returns its result."""


def usable_cpus() -> int:
    """How many CPUs this process may run on (respects ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def split(total: int, parts: int) -> list[range]:
    """Split ``range(total)`` into ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    out = []
    start = 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _child(name: str, job: Job, results: Any, go: multiprocessing.synchronize.Event) -> None:
    try:
        result = job(lambda: results.put(("ready", name, None)), go)
    except BenchError as exc:
        results.put(("error", name, str(exc)))
    except BaseException as exc:  # report anything, the parent decides
        results.put(("error", name, f"{exc!r}\n{traceback.format_exc()}"))
    else:
        results.put(("done", name, result))


class WorkerGroup:
    """A set of worker processes started in stages and released together."""

    def __init__(self) -> None:
        self.results: Any = _CTX.Queue()
        self.go = _CTX.Event()
        self._procs: dict[str, multiprocessing.context.ForkProcess] = {}
        self._ready: set[str] = set()
        self._done: dict[str, dict[str, Any]] = {}

    def start(self, name: str, job: Job) -> None:
        """Start one worker process running ``job``."""
        proc = _CTX.Process(target=_child, args=(name, job, self.results, self.go), daemon=True)
        proc.start()
        self._procs[name] = proc

    def _take(self, timeout: float) -> bool:
        try:
            kind, name, payload = self.results.get(timeout=timeout)
        except queue.Empty:
            return False
        if kind == "error":
            raise BenchError(f"{name}: {payload}")
        if kind == "ready":
            self._ready.add(name)
        else:
            self._done[name] = payload
        return True

    def _wait(
        self, names: set[str], pool: set[str] | dict[str, Any], what: str, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not names <= set(pool):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = ", ".join(sorted(names - set(pool)))
                raise BenchError(f"timed out waiting for {what}: {missing}")
            if not self._take(min(remaining, 0.5)):
                dead = [n for n in names - set(pool) if not self._procs[n].is_alive()]
                if dead and not self._take(0.2):
                    raise BenchError(f"worker died without reporting: {', '.join(dead)}")

    def wait_ready(self, names: list[str], timeout: float) -> None:
        """Block until the named workers are connected (and subscribed)."""
        self._wait(set(names), self._ready, "workers to connect", timeout)

    def release(self) -> None:
        """Let every waiting worker start its measured loop."""
        self.go.set()

    def wait_done(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Block until every worker reported its result; return them by name."""
        self._wait(set(self._procs), self._done, "workers to finish", timeout)
        return dict(self._done)

    def stop(self) -> None:
        """Reap every worker, terminating those still running after a short grace."""
        for proc in self._procs.values():
            proc.join(timeout=2.0)
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
        self.results.close()
