"""The memory store against the IShardStore contract, plus its bounds."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from robustmq.config import StorageSettings
from robustmq.storage.errors import LimitExceededError, ShardLimitError
from robustmq.storage.memory import MemoryShardStore
from robustmq.testing.storage_contract import ShardStoreContractMixin


class MemoryContractTests(ShardStoreContractMixin, TestCase):
    """MemoryShardStore honours the shared contract."""

    async def makeStore(self) -> MemoryShardStore:
        store = MemoryShardStore()
        await store.open()
        return store


class MemoryBoundsTests(TestCase):
    """Every collection of the memory store is bounded as documented."""

    async def test_maxShards(self) -> None:
        store = MemoryShardStore(StorageSettings(max_shards=2))
        await store.open()
        await store.createShard("a")
        await store.createShard("b")
        with self.assertRaises(ShardLimitError):
            await store.createShard("c")
        self.assertFalse(await store.createShard("a"), "an existing shard is not refused")

    async def test_maxRecordsEvictsOldest(self) -> None:
        store = MemoryShardStore()
        await store.open()
        await store.createShard("s", {"max_records": 5})
        await store.append("s", [{"value": b"%d" % i} for i in range(12)])
        self.assertEqual(await store.offsets("s"), (7, 12))
        self.assertEqual([r["offset"] for r in await store.read("s", 0)], list(range(7, 12)))

    async def test_retentionBytes(self) -> None:
        store = MemoryShardStore()
        await store.open()
        await store.createShard("s", {"retention_bytes": 1000})
        for _ in range(20):
            await store.append("s", [{"value": b"x" * 200}])
        records = await store.read("s", 0)
        self.assertLessEqual(sum(200 + 35 for _ in records), 1000)
        self.assertEqual(records[-1]["offset"], 19)
        await store.append("s", [{"value": b"y" * 5000}])
        self.assertEqual([r["offset"] for r in await store.read("s", 0)], [20], "newest kept")

    async def test_retentionMs(self) -> None:
        clock = Clock()
        clock.advance(1)
        store = MemoryShardStore(clock=clock)
        await store.open()
        await store.createShard("s", {"retention_ms": 500})
        await store.append("s", [{"value": b"old"}])
        clock.advance(0.4)
        await store.append("s", [{"value": b"mid"}])
        clock.advance(0.2)
        store.enforceRetention()
        self.assertEqual([r["value"] for r in await store.read("s", 0)], [b"mid"])
        clock.advance(1)
        await store.append("s", [{"value": b"new"}])
        self.assertEqual([r["value"] for r in await store.read("s", 0)], [b"new"])

    async def test_compactedLiveKeysBounded(self) -> None:
        store = MemoryShardStore()
        await store.open()
        await store.createShard("kv", {"compacted": True, "max_records": 3})
        for i in range(100):  # overwrites do not count against the bound
            await store.upsert("kv", b"k%d" % (i % 3), b"%d" % i)
        with self.assertRaises(LimitExceededError):
            await store.upsert("kv", b"k4", b"v")
        await store.deleteKey("kv", b"k0")
        await store.upsert("kv", b"k4", b"v")
        self.assertEqual(sorted(await store.keys("kv")), [b"k1", b"k2", b"k4"])

    async def test_maxGroups(self) -> None:
        store = MemoryShardStore()
        await store.open()
        await store.createShard("s", {"max_groups": 2})
        await store.commitOffset("a", "s", 1)
        await store.commitOffset("b", "s", 1)
        await store.commitOffset("a", "s", 2)
        with self.assertRaises(LimitExceededError):
            await store.commitOffset("c", "s", 1)
