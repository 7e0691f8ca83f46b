"""The s3 store beyond the contract: reopening from the bucket alone, fencing, merging,
an object store that stops answering.  Real SeaweedFS, no mock of the S3 API."""

from __future__ import annotations

import os
import uuid
from typing import Any

from s3server import seaweed
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from robustmq.config import StorageSettings
from robustmq.storage.errors import ShardFencedError, StorageUnavailableError
from robustmq.storage.s3 import S3ShardStore
from robustmq.testing.seaweedfs import SeaweedFSProcess


class _S3Test(TestCase):
    def setUp(self) -> None:
        self.weed = seaweed()
        self.prefix = f"t-{uuid.uuid4().hex}/"

    def settings(self, **kw: Any) -> StorageSettings:
        base: dict[str, Any] = {
            "backend": "s3",
            "s3_endpoint": self.weed.endpoint,
            "s3_bucket": "store-tests",
            "s3_prefix": self.prefix,
            "s3_flush_interval_ms": 2,
        }
        base.update(kw)
        return StorageSettings(**base)

    async def store(self, **kw: Any) -> S3ShardStore:
        store = S3ShardStore(self.settings(**kw))
        await store.open()
        self.addCleanup(store.close)
        return store


class ReopenTests(_S3Test):
    """Any store opened on the bucket sees every acknowledged record."""

    async def test_everythingFromTheBucketAlone(self) -> None:
        """Plain, span and compacted shards, trims and group offsets come back in a new store
        with an empty cache directory."""
        a = await self.store(s3_cache_dir=os.path.abspath(self.mktemp()))
        await a.createShard("log", {"retention_ms": 123})
        await a.createShard("kv", {"compacted": True})
        await a.append("log", [{"value": b"%d" % i, "key": b"k"} for i in range(5)])
        await a.appendSpan("log", {"value": b"batch", "timestamp": 7}, 10)
        await a.append("log", [{"value": b"tail", "headers": [("h", b"v")]}])
        await a.deleteBefore("log", 2)
        await a.upsert("kv", b"a", b"1")
        await a.upsert("kv", b"b", b"2")
        await a.upsert("kv", b"a", b"3")
        await a.deleteKey("kv", b"b")
        await a.commitOffset("group/1", "log", 7, b"meta")
        b = await self.store(s3_cache_dir=os.path.abspath(self.mktemp()))
        self.assertEqual(await b.listShards(), await a.listShards())
        self.assertEqual(await b.offsets("log"), (2, 16))
        self.assertEqual(await b.read("log", 0), await a.read("log", 0))
        self.assertEqual([r["offset"] for r in await b.read("log", 0)], [2, 3, 4, 5, 15])
        self.assertEqual(await b.keys("kv"), [b"a"])
        self.assertEqual((await b.lookup("kv", b"a"))["value"], b"3")
        self.assertEqual(await b.fetchOffset("group/1", "log"), (7, b"meta"))
        # the new store continues the log: it takes the shard
        self.assertEqual(await b.append("log", [{"value": b"more"}]), [16])

    async def test_mergedObjectsReadBack(self) -> None:
        """Many small appends are merged into fewer objects; every record is still there."""
        a = await self.store()
        await a.createShard("s")
        for i in range(40):
            await a.append("s", [{"value": b"v%d" % i}])
        while a._background:
            await defer.DeferredList(list(a._background))
        self.assertGreater(a.counters["merges"], 0)
        self.assertGreater(a.counters["objects_deleted"], 0)
        b = await self.store()
        self.assertEqual(
            [r["value"] for r in await b.read("s", 0)], [b"v%d" % i for i in range(40)]
        )
        self.assertLess(len(b._shards["s"].refs), 40)

    async def test_compactionKeepsLatest(self) -> None:
        """A compacted shard rewritten to its live keys reads the same in a new store."""
        a = await self.store()
        await a.createShard("kv", {"compacted": True})
        for i in range(60):
            await a.upsert("kv", b"k%d" % (i % 3), b"%d" % i)
        await a.deleteKey("kv", b"k0")
        while a._background:
            await defer.DeferredList(list(a._background))
        self.assertGreater(a.counters["merges"], 0)
        b = await self.store()
        self.assertEqual(sorted(await b.keys("kv")), [b"k1", b"k2"])
        self.assertEqual((await b.lookup("kv", b"k1"))["value"], b"58")
        self.assertEqual((await b.lookup("kv", b"k2"))["value"], b"59")


class RetentionTests(_S3Test):
    """Retention deletes whole objects of the shards this store writes."""

    async def test_retentionBytes(self) -> None:
        a = await self.store()
        await a.createShard("s", {"retention_bytes": 3000})
        for i in range(8):
            await a.append("s", [{"value": b"%d" % i + b"x" * 999}])
        self.assertGreater(a.enforceRetention(), 0)
        await a.append("s", [{"value": b"last"}])  # queued behind the trim
        while a._background:
            await defer.DeferredList(list(a._background))
        start, end = await a.offsets("s")
        self.assertGreater(start, 0)
        self.assertEqual(end, 9)
        records = await a.read("s", 0)
        self.assertEqual(records[0]["offset"], start)
        self.assertEqual(records[-1]["value"], b"last")
        self.assertGreater(a.counters["objects_deleted"], 0)
        b = await self.store()
        self.assertEqual(await b.offsets("s"), (start, 9))
        self.assertEqual(await b.read("s", 0), records)

    async def test_retentionMs(self) -> None:
        a = await self.store()
        await a.createShard("s", {"retention_ms": 1000})
        await a.append("s", [{"value": b"old", "timestamp": 1}])
        await a.append("s", [{"value": b"new"}])
        self.assertEqual(a.enforceRetention(), 1)
        await a.append("s", [{"value": b"newer"}])
        self.assertEqual([r["value"] for r in await a.read("s", 0)], [b"new", b"newer"])


class FencingTests(_S3Test):
    """One writer per shard: a store that lost the shard can never append again."""

    async def test_successorFencesPredecessor(self) -> None:
        a = await self.store()
        await a.createShard("s")
        await a.createShard("kv", {"compacted": True})
        self.assertEqual(await a.append("s", [{"value": b"a%d" % i} for i in range(3)]), [0, 1, 2])
        await a.upsert("kv", b"k", b"from-a")
        b = await self.store()
        self.assertEqual(await b.append("s", [{"value": b"b0"}, {"value": b"b1"}]), [3, 4])
        await b.upsert("kv", b"k", b"from-b")
        with self.assertRaises(ShardFencedError):
            await a.append("s", [{"value": b"late"}])
        with self.assertRaises(ShardFencedError):
            await a.upsert("kv", b"k", b"late")
        with self.assertRaises(ShardFencedError):
            await a.append("s", [{"value": b"later"}])  # for good
        self.assertEqual(a.counters["fenced"], 2)
        c = await self.store()
        self.assertEqual(
            [r["value"] for r in await c.read("s", 0)], [b"a0", b"a1", b"a2", b"b0", b"b1"]
        )
        self.assertEqual((await c.lookup("kv", b"k"))["value"], b"from-b")

    async def test_placementEpoch(self) -> None:
        """With an epoch source, a take-over at a lower epoch than the bucket's is refused."""
        a = await self.store()
        a.epochSource = lambda shard: 5
        await a.createShard("s")
        await a.append("s", [{"value": b"x"}])
        b = await self.store()
        b.epochSource = lambda shard: 4
        with self.assertRaises(ShardFencedError):
            await b.append("s", [{"value": b"stale"}])
        c = await self.store()
        c.epochSource = lambda shard: 6
        self.assertEqual(await c.append("s", [{"value": b"y"}]), [1])
        self.assertEqual(c._shards["s"].epoch, 6)


class SecurityRecordsTests(_S3Test):
    """Users, ACL rules and bans kept in the shard store (a stateless node's metadata)."""

    async def test_recordsAndOrderSurvive(self) -> None:
        from robustmq.core.security.metadata import ShardMetadataStore

        a = await self.store()
        meta = ShardMetadataStore(a)
        await meta.load()
        for rule in ("r3", "r1", "r2"):
            await meta.put("acl", rule, {"rule": rule})
        await meta.put("users", "alice", {"hash": "x"})
        await meta.put("acl", "r1", {"rule": "r1", "changed": True})  # keeps its place
        self.assertTrue(await meta.delete("acl", "r2"))
        self.assertFalse(await meta.delete("acl", "nope"))
        seen: list[tuple[str, str]] = []
        again = ShardMetadataStore(await self.store())
        again.watch("acl", lambda kind, key, value: seen.append((kind, key)))
        await again.load()
        self.assertEqual(
            again.items("acl"), [("r3", {"rule": "r3"}), ("r1", {"rule": "r1", "changed": True})]
        )
        self.assertEqual(again.get("users", "alice"), {"hash": "x"})
        self.assertEqual(seen, [("acl", "r3"), ("acl", "r1")], "watchers hear what was loaded")


class OutageTests(TestCase):
    """An object store that stops answering (SIGSTOP): acks wait, then fail; recovery after."""

    def setUp(self) -> None:
        self.weed = SeaweedFSProcess().start()
        self.addCleanup(self.weed.cleanup)
        os.environ.update(self.weed.credentials())

    async def test_pausedStore(self) -> None:
        settings = StorageSettings(
            backend="s3",
            s3_endpoint=self.weed.endpoint,
            s3_bucket="outage",
            s3_prefix="o/",
            s3_flush_interval_ms=2,
            s3_ack_timeout_ms=1500,
            s3_request_timeout_ms=400,
        )
        store = S3ShardStore(settings)
        await store.open()
        self.addCleanup(store.close)
        await store.createShard("s")
        self.assertEqual(await store.append("s", [{"value": b"before"}]), [0])
        self.assertEqual(store.health(), (True, "ok"))
        self.weed.pause()
        try:
            d = store.append("s", [{"value": b"during"}])
            await deferLater(reactor, 0.3, lambda: None)
            self.assertFalse(d.called, "acknowledged while the object store is paused")
            with self.assertRaises(StorageUnavailableError):
                await d  # fails on its own: the store is still paused
            self.assertTrue(self.weed.paused)
            self.assertFalse(store.health()[0])
            self.assertEqual(await store.offsets("s"), (0, 1), "no ack, nothing readable")
            self.assertEqual(store.counters["acks_failed"], 1)
        finally:
            self.weed.resume()
        [after] = await store.append("s", [{"value": b"after"}])
        self.assertTrue(store.health()[0])
        values = [r["value"] for r in await store.read("s", 0)]
        # The failed write was either never stored, or (its request was still in the
        # paused server's socket) stored after all: never acknowledged, never twice.
        self.assertIn(values, ([b"before", b"after"], [b"before", b"during", b"after"]))
        # Offsets never go back: the failed write's offset stays used (a hole if it
        # was not stored), so a caller that numbered records itself stays in step.
        self.assertEqual(after, 2)
        other = S3ShardStore(settings)
        await other.open()
        self.addCleanup(other.close)
        self.assertEqual([r["value"] for r in await other.read("s", 0)], values)

    async def test_closeWhilePaused(self) -> None:
        """close() with the object store paused still finishes, failing what was not stored."""
        settings = StorageSettings(
            backend="s3",
            s3_endpoint=self.weed.endpoint,
            s3_bucket="outage",
            s3_prefix="c/",
            s3_ack_timeout_ms=800,
            s3_request_timeout_ms=300,
        )
        store = S3ShardStore(settings)
        await store.open()
        await store.createShard("s")
        await store.append("s", [{"value": b"stored"}])
        self.weed.pause()
        try:
            d = store.append("s", [{"value": b"lost"}])
            await store.close()
            with self.assertRaises(StorageUnavailableError):
                await d
        finally:
            self.weed.resume()
        again = S3ShardStore(settings)
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual(
            [r["value"] for r in await again.read("s", 0)][:1], [b"stored"], "acked data kept"
        )
