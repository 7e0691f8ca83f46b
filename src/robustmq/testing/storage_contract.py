"""
A reusable contract test for L{robustmq.interfaces.IShardStore} adapters.

Third-party adapters check themselves against the same behaviour as the
built-in ones::

    from twisted.trial.unittest import TestCase
    from robustmq.testing.storage_contract import ShardStoreContractMixin

    class MyStoreContractTests(ShardStoreContractMixin, TestCase):
        async def makeStore(self):
            store = MyStore(...)
            await store.open()
            return store

C{makeStore} may return the opened store, a Deferred or a coroutine firing
with it.  The mixin closes every store it made at the end of each test.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from robustmq.interfaces import IShardStore, ISpanShardStore

__all__ = ["ShardStoreContractMixin"]


class ShardStoreContractMixin:
    """Mix into a C{twisted.trial.unittest.TestCase} and implement L{makeStore}."""

    # provided by the TestCase this is mixed into
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIn: Any
    assertNotIn: Any
    assertIsInstance: Any
    assertGreaterEqual: Any
    assertLessEqual: Any
    assertRaises: Any
    addCleanup: Any
    fail: Any

    def makeStore(self) -> Any:
        """Return an opened L{IShardStore} (or a Deferred/coroutine firing with one)."""
        raise NotImplementedError("ShardStoreContractMixin users implement makeStore()")

    async def store(self) -> Any:
        """Make a store and arrange for it to be closed after the test."""
        made = self.makeStore()
        if inspect.isawaitable(made):
            made = await made
        self.addCleanup(lambda: defer.maybeDeferred(made.close))
        return made

    async def assertFailsWith(self, d: Any, *errors: type[BaseException]) -> BaseException:
        """Await C{d} and check that it fails with one of C{errors}."""
        try:
            await d
        except errors as e:
            return e
        except BaseException as e:  # pragma: no cover - reported as a failure
            self.fail(f"expected {errors}, got {e!r}")
        self.fail(f"expected {errors}, but it succeeded")
        raise AssertionError  # pragma: no cover

    # -- the interface ------------------------------------------------

    async def test_providesInterface(self) -> None:
        """The store provides every method and attribute of IShardStore."""
        store = await self.store()
        self.assertTrue(verifyObject(IShardStore, store))
        self.assertIsInstance(store.name, str)

    # -- shards ---------------------------------------------------------

    async def test_createShard(self) -> None:
        """createShard fires True the first time and False for an existing shard."""
        store = await self.store()
        self.assertTrue(await store.createShard("a/b"))
        self.assertFalse(await store.createShard("a/b"))
        shards = await store.listShards()
        self.assertIn("a/b", shards)
        self.assertFalse(shards["a/b"].get("compacted", False))

    async def test_listShardsConfig(self) -> None:
        """listShards reports each shard's config, including overrides."""
        store = await self.store()
        await store.createShard("plain")
        await store.createShard("kv", {"compacted": True, "retention_ms": 1234})
        shards = await store.listShards()
        self.assertEqual(set(shards), {"plain", "kv"})
        self.assertTrue(shards["kv"]["compacted"])
        self.assertEqual(shards["kv"]["retention_ms"], 1234)

    async def test_oddShardNames(self) -> None:
        """Names with slashes, wildcards, dots and unicode are distinct shards."""
        store = await self.store()
        names = ["a/b", "a%2Fb", "+/#", "..", ".", "", "ünï/☃", "x" * 300]
        for i, name in enumerate(names):
            self.assertTrue(await store.createShard(name))
            await store.append(name, [{"value": str(i).encode()}])
        self.assertEqual(set(await store.listShards()), set(names))
        for i, name in enumerate(names):
            [record] = await store.read(name, 0)
            self.assertEqual(record["value"], str(i).encode())

    async def test_deleteShard(self) -> None:
        """deleteShard fires True if the shard existed, and its records go."""
        store = await self.store()
        await store.createShard("s")
        await store.append("s", [{"value": b"v"}])
        self.assertTrue(await store.deleteShard("s"))
        self.assertFalse(await store.deleteShard("s"))
        self.assertNotIn("s", await store.listShards())
        await store.createShard("s")
        self.assertEqual(await store.offsets("s"), (0, 0))
        self.assertEqual(await store.read("s", 0), [])

    async def test_missingShard(self) -> None:
        """Every per-shard operation on a missing shard fails with KeyError."""
        store = await self.store()
        await store.createShard("kv", {"compacted": True})
        await store.deleteShard("kv")
        calls = [
            lambda: store.append("nope", [{"value": b"v"}]),
            lambda: store.read("nope", 0),
            lambda: store.offsetForTimestamp("nope", 0),
            lambda: store.offsets("nope"),
            lambda: store.deleteBefore("nope", 1),
            lambda: store.upsert("kv", b"k", b"v"),
            lambda: store.lookup("kv", b"k"),
            lambda: store.deleteKey("kv", b"k"),
            lambda: store.keys("kv"),
            lambda: store.commitOffset("g", "nope", 1),
            lambda: store.fetchOffset("g", "nope"),
        ]
        for call in calls:
            await self.assertFailsWith(defer.maybeDeferred(call), KeyError)

    # -- append and read ------------------------------------------------

    async def test_appendAssignsOffsets(self) -> None:
        """Offsets start at 0 and are consecutive across batches."""
        store = await self.store()
        await store.createShard("s")
        self.assertEqual(await store.append("s", [{"value": b"a"}, {"value": b"b"}]), [0, 1])
        self.assertEqual(await store.append("s", [{"value": b"c"}]), [2])
        self.assertEqual(await store.append("s", []), [])
        self.assertEqual(await store.offsets("s"), (0, 3))

    async def test_concurrentAppends(self) -> None:
        """Appends not awaited one by one still get distinct offsets in call order."""
        store = await self.store()
        await store.createShard("s")
        await store.createShard("t")
        ds = [store.append("s" if i % 2 else "t", [{"value": b"%d" % i}] * 3) for i in range(20)]
        results = await defer.gatherResults(ds)
        self.assertEqual(
            [o for r in results[1::2] for o in r], list(range(30)), "offsets of shard s"
        )
        records = await store.read("s", 0)
        self.assertEqual(
            [r["value"] for r in records], [b"%d" % i for i in range(1, 20, 2) for _ in range(3)]
        )

    async def test_recordFieldsRoundTrip(self) -> None:
        """Key, value, headers and timestamp come back as written."""
        store = await self.store()
        await store.createShard("s")
        batch = [
            {"key": b"k", "value": b"v", "timestamp": 1_700_000_000_000, "headers": [("h", b"1")]},
            {"value": b""},
            {"key": b"", "value": None, "headers": [("a", b""), ("ü", b"\x00\xff")]},
        ]
        await store.append("s", batch)
        records = await store.read("s", 0)
        self.assertEqual(len(records), 3)
        first, second, third = records
        self.assertEqual(
            first,
            {
                "offset": 0,
                "timestamp": 1_700_000_000_000,
                "key": b"k",
                "value": b"v",
                "headers": [("h", b"1")],
            },
        )
        self.assertEqual((second["key"], second["value"], second["headers"]), (None, b"", []))
        self.assertIsInstance(second["timestamp"], int)
        self.assertGreaterEqual(second["timestamp"], 1_000_000_000_000)
        self.assertEqual(third["key"], b"")
        self.assertIsNone(third["value"])
        self.assertEqual(third["headers"], [("a", b""), ("ü", b"\x00\xff")])

    async def test_readFromOffset(self) -> None:
        """read starts at the given offset; past the end it is empty."""
        store = await self.store()
        await store.createShard("s")
        await store.append("s", [{"value": b"%d" % i} for i in range(10)])
        records = await store.read("s", 7)
        self.assertEqual([r["offset"] for r in records], [7, 8, 9])
        self.assertEqual(await store.read("s", 10), [])
        self.assertEqual(await store.read("s", 1000), [])

    async def test_readMaxRecords(self) -> None:
        """read returns at most maxRecords records."""
        store = await self.store()
        await store.createShard("s")
        await store.append("s", [{"value": b"x"} for _ in range(50)])
        records = await store.read("s", 5, maxRecords=7)
        self.assertEqual([r["offset"] for r in records], list(range(5, 12)))

    async def test_readMaxBytes(self) -> None:
        """read stops before maxBytes but always returns one record if any exists."""
        store = await self.store()
        await store.createShard("s")
        await store.append("s", [{"value": b"x" * 1000} for _ in range(10)])
        few = await store.read("s", 0, maxBytes=3500)
        self.assertGreaterEqual(len(few), 1)
        self.assertLessEqual(len(few), 3)
        self.assertEqual([r["offset"] for r in few], list(range(len(few))))
        one = await store.read("s", 4, maxBytes=1)
        self.assertEqual([r["offset"] for r in one], [4])
        big = b"y" * 300_000
        await store.append("s", [{"value": big}])
        [record] = await store.read("s", 10, maxBytes=10)
        self.assertEqual(record["value"], big)

    async def test_offsetForTimestamp(self) -> None:
        """The first offset whose timestamp is at or after the target, or None."""
        store = await self.store()
        await store.createShard("s")
        await store.append(
            "s", [{"value": b"v", "timestamp": t} for t in (100, 200, 150, 300, 300, 400)]
        )
        self.assertEqual(await store.offsetForTimestamp("s", 0), 0)
        self.assertEqual(await store.offsetForTimestamp("s", 100), 0)
        self.assertEqual(await store.offsetForTimestamp("s", 101), 1)
        self.assertEqual(await store.offsetForTimestamp("s", 160), 1)
        self.assertEqual(await store.offsetForTimestamp("s", 201), 3)
        self.assertEqual(await store.offsetForTimestamp("s", 400), 5)
        self.assertIsNone(await store.offsetForTimestamp("s", 401))

    async def test_deleteBefore(self) -> None:
        """Records before the offset become unreadable and the start moves."""
        store = await self.store()
        await store.createShard("s")
        await store.append("s", [{"value": b"%d" % i, "timestamp": 1000 + i} for i in range(10)])
        self.assertEqual(await store.deleteBefore("s", 4), 4)
        self.assertEqual(await store.offsets("s"), (4, 10))
        records = await store.read("s", 0)
        self.assertEqual([r["offset"] for r in records], list(range(4, 10)))
        self.assertEqual(await store.offsetForTimestamp("s", 0), 4)
        self.assertEqual(await store.deleteBefore("s", 2), 4, "never moves back")
        self.assertEqual(await store.deleteBefore("s", 99), 10, "clamped to the next offset")
        self.assertEqual(await store.read("s", 0), [])
        self.assertEqual(await store.append("s", [{"value": b"n"}]), [10])
        self.assertEqual([r["value"] for r in await store.read("s", 0)], [b"n"])

    async def test_badRecord(self) -> None:
        """A value that is not bytes fails the append and changes nothing."""
        store = await self.store()
        await store.createShard("s")
        await self.assertFailsWith(store.append("s", [{"value": b"ok"}, {"value": 42}]), TypeError)
        self.assertEqual(await store.offsets("s"), (0, 0))

    # -- compacted shards --------------------------------------------------

    async def test_upsertLookup(self) -> None:
        """upsert fires with an offset; lookup returns the latest record of the key."""
        store = await self.store()
        await store.createShard("kv", {"compacted": True})
        o1 = await store.upsert("kv", b"a", b"1")
        o2 = await store.upsert("kv", b"b", b"2", [("h", b"x")])
        o3 = await store.upsert("kv", b"a", b"3")
        self.assertEqual([o1, o2, o3], [0, 1, 2])
        rec = await store.lookup("kv", b"a")
        self.assertEqual((rec["offset"], rec["key"], rec["value"]), (2, b"a", b"3"))
        rec = await store.lookup("kv", b"b")
        self.assertEqual(rec["headers"], [("h", b"x")])
        self.assertIsNone(await store.lookup("kv", b"zz"))
        self.assertEqual(sorted(await store.keys("kv")), [b"a", b"b"])

    async def test_deleteKey(self) -> None:
        """deleteKey removes a live key (True) and reports a missing one (False)."""
        store = await self.store()
        await store.createShard("kv", {"compacted": True})
        await store.upsert("kv", b"a", b"1")
        await store.upsert("kv", b"b", b"2")
        self.assertTrue(await store.deleteKey("kv", b"a"))
        self.assertFalse(await store.deleteKey("kv", b"a"))
        self.assertIsNone(await store.lookup("kv", b"a"))
        self.assertEqual(await store.keys("kv"), [b"b"])
        await store.upsert("kv", b"a", b"again")
        self.assertEqual((await store.lookup("kv", b"a"))["value"], b"again")

    async def test_manyUpserts(self) -> None:
        """Overwriting a few keys many times keeps the latest value of each."""
        store = await self.store()
        await store.createShard("kv", {"compacted": True})
        for i in range(300):
            await store.upsert("kv", b"k%d" % (i % 7), b"%d" % i)
        self.assertEqual(len(await store.keys("kv")), 7)
        for k in range(7):
            latest = max(i for i in range(300) if i % 7 == k)
            self.assertEqual((await store.lookup("kv", b"k%d" % k))["value"], b"%d" % latest)

    async def test_keyedOperationsNeedCompactedShard(self) -> None:
        """upsert/lookup/deleteKey/keys on a plain shard fail with ValueError."""
        store = await self.store()
        await store.createShard("plain")
        for call in (
            lambda: store.upsert("plain", b"k", b"v"),
            lambda: store.lookup("plain", b"k"),
            lambda: store.deleteKey("plain", b"k"),
            lambda: store.keys("plain"),
        ):
            await self.assertFailsWith(defer.maybeDeferred(call), ValueError)

    # -- span records (the optional ISpanShardStore) ----------------------

    async def spanStore(self) -> Any:
        """A store providing L{ISpanShardStore}, or skip the test."""
        from twisted.trial.unittest import SkipTest

        store = await self.store()
        if not ISpanShardStore.providedBy(store):
            raise SkipTest("the store does not provide the optional ISpanShardStore")
        self.assertTrue(verifyObject(ISpanShardStore, store))
        return store

    async def test_spanOffsets(self) -> None:
        """A span record takes its count of offsets; reads inside it return it, with its span."""
        store = await self.spanStore()
        await store.createShard("s")
        self.assertEqual(await store.append("s", [{"value": b"a"}]), [0])
        self.assertEqual(await store.appendSpan("s", {"value": b"batch", "timestamp": 5}, 5), 1)
        self.assertEqual(await store.append("s", [{"value": b"c"}]), [6])
        self.assertEqual(await store.appendSpan("s", {"value": b"one"}, 1), 7)
        self.assertEqual(await store.offsets("s"), (0, 8))
        everything = await store.read("s", 0)
        self.assertEqual(
            [(r["offset"], r.get("span")) for r in everything],
            [(0, None), (1, 5), (6, None), (7, None)],
        )
        self.assertEqual((everything[1]["value"], everything[1]["timestamp"]), (b"batch", 5))
        for inside in (1, 3, 5):
            records = await store.read("s", inside)
            self.assertEqual([r["offset"] for r in records], [1, 6, 7], f"read from {inside}")
        self.assertEqual([r["offset"] for r in await store.read("s", 6)], [6, 7])
        self.assertEqual([r["offset"] for r in await store.read("s", 2, maxRecords=1)], [1])
        self.assertEqual(await store.read("s", 8), [])

    async def test_spanConcurrentWithAppends(self) -> None:
        """Span appends and plain appends not awaited one by one keep call order."""
        store = await self.spanStore()
        await store.createShard("s")
        ds = []
        for i in range(10):
            ds.append(store.appendSpan("s", {"value": b"s%d" % i}, 3))
            ds.append(store.append("s", [{"value": b"p%d" % i}]))
        results = await defer.gatherResults(ds)
        self.assertEqual(results[0::2], list(range(0, 40, 4)))
        self.assertEqual(results[1::2], [[o] for o in range(3, 40, 4)])
        self.assertEqual(await store.offsets("s"), (0, 40))
        records = await store.read("s", 0)
        self.assertEqual(
            [r["offset"] for r in records], sorted([*range(0, 40, 4), *range(3, 40, 4)])
        )

    async def test_spanDeleteBeforeAndTimestamps(self) -> None:
        """deleteBefore inside a span keeps it readable; timestamps answer at least the start."""
        store = await self.spanStore()
        await store.createShard("s")
        await store.appendSpan("s", {"value": b"x", "timestamp": 100}, 4)
        await store.appendSpan("s", {"value": b"y", "timestamp": 200}, 4)
        self.assertEqual(await store.offsetForTimestamp("s", 150), 4)
        self.assertEqual(await store.offsetForTimestamp("s", 50), 0)
        self.assertIsNone(await store.offsetForTimestamp("s", 201))
        self.assertEqual(await store.deleteBefore("s", 6), 6)
        self.assertEqual(await store.offsets("s"), (6, 8))
        [record] = await store.read("s", 0)
        self.assertEqual((record["offset"], record["span"], record["value"]), (4, 4, b"y"))
        self.assertEqual(await store.offsetForTimestamp("s", 0), 6)
        self.assertEqual(await store.deleteBefore("s", 8), 8)
        self.assertEqual(await store.read("s", 0), [])

    async def test_spanRefused(self) -> None:
        """Bad spans and span records in compacted shards fail with ValueError, changing nothing."""
        store = await self.spanStore()
        await store.createShard("s")
        await store.createShard("kv", {"compacted": True})
        for bad in (0, -1, True, 2**31, "3"):
            await self.assertFailsWith(store.appendSpan("s", {"value": b"v"}, bad), ValueError)
        await self.assertFailsWith(
            store.appendSpan("kv", {"key": b"k", "value": b"v"}, 2), ValueError
        )
        await self.assertFailsWith(store.appendSpan("nope", {"value": b"v"}, 2), KeyError)
        self.assertEqual(await store.offsets("s"), (0, 0))

    # -- consumer groups ---------------------------------------------------

    async def test_groupOffsets(self) -> None:
        """commitOffset / fetchOffset per (group, shard), overwriting."""
        store = await self.store()
        await store.createShard("s")
        await store.createShard("t")
        self.assertIsNone(await store.fetchOffset("g", "s"))
        self.assertIsNone(await store.commitOffset("g", "s", 5))
        await store.commitOffset("g", "t", 7, b"meta")
        await store.commitOffset("h/ü", "s", 1)
        self.assertEqual(await store.fetchOffset("g", "s"), (5, b""))
        self.assertEqual(await store.fetchOffset("g", "t"), (7, b"meta"))
        self.assertEqual(await store.fetchOffset("h/ü", "s"), (1, b""))
        await store.commitOffset("g", "s", 9, b"m2")
        self.assertEqual(await store.fetchOffset("g", "s"), (9, b"m2"))

    async def test_deleteShardDropsGroupOffsets(self) -> None:
        """A recreated shard has no committed offsets left over."""
        store = await self.store()
        await store.createShard("s")
        await store.commitOffset("g", "s", 5)
        await store.deleteShard("s")
        await store.createShard("s")
        self.assertIsNone(await store.fetchOffset("g", "s"))
