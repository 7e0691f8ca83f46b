"""TimedShardStore: times the store's calls to their results, changes nothing else."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import providedBy
from zope.interface.verify import verifyObject

from robustmq.interfaces import IShardStore
from robustmq.storage.memory import MemoryShardStore
from robustmq.storage.timing import BUCKETS, TimedShardStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowStore:
    """Forwards to a memory store but holds each append's result until released."""

    def __init__(self) -> None:
        self.inner = MemoryShardStore()
        self.held: list[tuple[defer.Deferred[Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def append(self, shard: str, records: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.inner.append(shard, records).addBoth(lambda r: self.held.append((d, r)))
        return d


class TimedShardStoreTests(SynchronousTestCase):
    def test_provides_the_stores_interfaces(self) -> None:
        store = MemoryShardStore()
        timed = TimedShardStore(store)
        self.assertTrue(verifyObject(IShardStore, timed))
        self.assertEqual(set(providedBy(store)) - set(providedBy(timed)), set())
        self.assertEqual(timed.name, store.name)
        self.assertEqual(timed.durable, store.durable)

    def test_latency_from_call_to_result(self) -> None:
        clock = FakeClock()
        slow = SlowStore()
        timed = TimedShardStore(slow, clock)
        self.successResultOf(defer.maybeDeferred(timed.open))
        self.successResultOf(timed.createShard("s"))
        d = timed.append("s", [{"value": b"v"}])
        clock.now += 0.003  # the result arrives 3 ms later
        ((held, result),) = slow.held
        held.callback(result)
        self.successResultOf(d)
        t = timed.timings["append"]
        self.assertEqual(t.count, 1)
        self.assertAlmostEqual(t.sum, 0.003)
        cumulative = dict(t.cumulative())
        self.assertEqual(cumulative[0.0025], 0)
        self.assertEqual(cumulative[0.005], 1)
        self.assertEqual(cumulative[float("inf")], 1)
        self.assertEqual(len(t.cumulative()), len(BUCKETS) + 1)

    def test_every_timed_operation_and_failures(self) -> None:
        clock = FakeClock()
        timed = TimedShardStore(MemoryShardStore(), clock)
        self.successResultOf(defer.maybeDeferred(timed.open))
        self.successResultOf(timed.createShard("c", {"compacted": True}))
        self.successResultOf(timed.createShard("log"))
        self.successResultOf(timed.append("log", [{"value": b"1"}]))
        self.successResultOf(timed.read("log", 0))
        self.successResultOf(timed.upsert("c", b"k", b"v"))
        self.successResultOf(timed.deleteKey("c", b"k"))
        for op in ("append", "read", "upsert", "deleteKey"):
            self.assertEqual(timed.timings[op].count, 1, op)
            self.assertEqual(timed.timings[op].failures, 0, op)
        self.failureResultOf(timed.read("no-such-shard", 0))
        self.assertEqual(timed.timings["read"].count, 2)
        self.assertEqual(timed.timings["read"].failures, 1)
