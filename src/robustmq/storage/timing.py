"""Latency of a shard store's calls, for the storage histograms in C{/metrics}.

L{TimedShardStore} wraps any L{IShardStore}: C{append}, C{read}, C{upsert}
and C{deleteKey} are timed from the call to their Deferred firing (success
or failure), so group commit and fsync waits are part of what is measured
(C{appendSpan}, where the store has it, counts as C{append}); every other
method and attribute is the wrapped store's own, and the wrapper provides
every interface the store provides.  Each timed
operation keeps a L{Timing}: cumulative counts per fixed latency bucket,
the shape of a Prometheus histogram, without depending on a metrics library.

The node wraps its store in L{robustmq.service.makeService} when the admin
service (which exports the histograms) is enabled.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from robustmq.interfaces import IShardStore

#: Upper bounds (seconds) of the latency buckets; a last, unbounded one follows.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: The store operations that are timed.
TIMED_OPERATIONS = ("append", "read", "upsert", "deleteKey")


class Timing:
    """Latencies of one operation: a count per bucket, their sum, failures.

    @ivar counts: non-cumulative counts, one per L{BUCKETS} bound plus the
        unbounded last bucket.
    """

    __slots__ = ("counts", "sum", "failures")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.failures = 0

    def observe(self, seconds: float) -> None:
        """Count one call that took C{seconds}."""
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        """Calls observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, calls at or below it) per bucket, ending with (inf, count)."""
        out = []
        total = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@implementer(IShardStore)
class TimedShardStore:
    """An L{IShardStore} that times the calls it passes to C{store}.

    @ivar timings: operation name → its L{Timing}.
    """

    def __init__(self, store: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.store = store
        self.clock = clock
        self.timings: dict[str, Timing] = {op: Timing() for op in TIMED_OPERATIONS}
        # Whatever optional interfaces the store provides, the wrapper provides too
        # (callers test for them with providedBy).
        directlyProvides(self, providedBy(store))

    def __getattr__(self, name: str) -> Any:
        # Everything not timed (open, close, offsets, name, durable, ...) is the store's.
        return getattr(self.store, name)

    def _timed(self, timing: Timing, start: float, d: Deferred[Any]) -> Deferred[Any]:
        def done(result: Any) -> Any:
            timing.observe(self.clock() - start)
            if isinstance(result, Failure):
                timing.failures += 1
            return result

        d.addBoth(done)
        return d

    def append(self, shard: str, records: Any) -> Deferred[Any]:
        start = self.clock()
        return self._timed(self.timings["append"], start, self.store.append(shard, records))

    def appendSpan(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Timed as C{append} (stores with span records, see L{robustmq.interfaces})."""
        start = self.clock()
        d = self.store.appendSpan(*args, **kwargs)
        return self._timed(self.timings["append"], start, d)

    def read(
        self, shard: str, offset: int, maxRecords: int = 1000, maxBytes: int = 1048576
    ) -> Deferred[Any]:
        start = self.clock()
        d = self.store.read(shard, offset, maxRecords, maxBytes)
        return self._timed(self.timings["read"], start, d)

    def upsert(self, shard: str, key: bytes, value: Any, headers: Any = ()) -> Deferred[Any]:
        start = self.clock()
        d = self.store.upsert(shard, key, value, headers)
        return self._timed(self.timings["upsert"], start, d)

    def deleteKey(self, shard: str, key: bytes) -> Deferred[Any]:
        start = self.clock()
        return self._timed(self.timings["deleteKey"], start, self.store.deleteKey(shard, key))


__all__ = ["BUCKETS", "TIMED_OPERATIONS", "TimedShardStore", "Timing"]
