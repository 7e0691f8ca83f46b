"""Damage and exhaustion in the segment store, on real files (issue: survive damage).

Item 1: a damaged record is isolated (records before and after it are served,
the damaged range is reported or skipped, logged once).  Item 2: every repair
and loss found at start-up is logged at warning and counted.  Item 3: a full
disk fails the writes it refuses (nothing half-stored), says so once, and
writes resume by themselves once space is free.
"""

from __future__ import annotations

import json
import os
from typing import Any

from test_segment_recovery import _Base, _value

from robustmq.storage.check import StoreInUseError, checkDataDir
from robustmq.storage.errors import CorruptRecordError, StorageFullError
from robustmq.testing.smalldisk import SmallDisk

FRAME = 135  # a 100-byte value plus 35 bytes of framing


def _patch(path: str, position: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        f.write(data)


def _flip(path: str, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


class DamagedRecordTests(_Base):
    """Item 1: one damaged record costs that record, nothing before or after it."""

    async def readAll(self, store: Any, shard: str, start: int = 0) -> list[int]:
        """Every readable offset from C{start}, stepping over damage the way a consumer would."""
        got: list[int] = []
        offset = start
        end = (await store.offsets(shard))[1]
        while offset < end:
            try:
                batch = await store.read(shard, offset, maxRecords=1000)
            except CorruptRecordError as e:
                offset = e.lastOffset + 1
                continue
            if not batch:
                break
            got.extend(r["offset"] for r in batch)
            offset = batch[-1]["offset"] + 1
        return got

    async def test_flippedLengthByteInActiveSegment(self) -> None:
        """A flipped byte in a frame's length field used to cut the log there (a 'torn tail')."""
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await self.fill(store, "s", 200)
        await self.closeStore(store, clean=False)
        [path] = self.segmentFiles("s")
        _flip(path, 100 * FRAME + 2)  # the length field of record 100
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertEqual(await store.offsets("s"), (0, 200), "nothing truncated")
        first = await store.read("s", 0, maxRecords=1000)
        self.assertEqual([r["offset"] for r in first], list(range(100)))
        with self.assertRaises(CorruptRecordError) as caught:
            await store.read("s", 100)
        self.assertEqual((caught.exception.firstOffset, caught.exception.lastOffset), (100, 100))
        self.assertEqual(caught.exception.shard, "s")
        await self.assertIntact(store, "s", range(101, 200))
        self.assertEqual(await self.readAll(store, "s"), [o for o in range(200) if o != 100])
        damaged = [m for m in self.logged if "offsets 100..100" in m and "damaged" in m]
        self.assertEqual(len(damaged), 1, self.logged)
        self.assertEqual(store.statistics()["damaged_ranges"], 1)

    async def test_damageInSealedSegmentFoundByReadsAndLoggedOnce(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await self.fill(store, "s", 300)
        await self.closeStore(store)
        first = self.segmentFiles("s")[0]
        _patch(first, 5 * FRAME + 3, b"\xff\xff")  # length of record 5: impossible
        _flip(first, 9 * FRAME + 60)  # the value of record 9: CRC mismatch
        store = await self.openStore()
        self.assertEqual(await self.readAll(store, "s"), [o for o in range(300) if o not in (5, 9)])
        self.assertEqual(await self.readAll(store, "s"), [o for o in range(300) if o not in (5, 9)])
        reported = [m for m in self.logged if "are damaged; reads" in m]
        self.assertEqual(len(reported), 2, reported)
        self.assertIn("offsets 5..5", reported[0])
        self.assertIn("offsets 9..9", reported[1])
        # a read of a later range skips damage below it without an error
        self.assertEqual((await store.read("s", 6, maxRecords=2))[0]["offset"], 6)

    async def test_skipPolicy(self) -> None:
        store = await self.openStore(on_corruption="skip")
        await store.createShard("s")
        await self.fill(store, "s", 100)
        await self.closeStore(store)
        _flip(self.segmentFiles("s")[0], 7 * FRAME + 40)
        store = await self.openStore(on_corruption="skip")
        records = await store.read("s", 0, maxRecords=1000)
        offsets = [r["offset"] for r in records]
        self.assertNotIn(7, offsets)
        self.assertEqual(offsets[:8], [0, 1, 2, 3, 4, 5, 6, 8])
        self.assertTrue(any("reads skip them" in m for m in self.logged), self.logged)

    async def test_zeroedSealedSegment(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await self.fill(store, "s", 300)
        await self.closeStore(store)
        segs = self.segmentFiles("s")
        second = segs[1]
        nextBase = int(os.path.basename(segs[2])[:-4])
        base = int(os.path.basename(second)[:-4])
        size = os.path.getsize(second)
        _patch(second, 0, b"\0" * size)
        store = await self.openStore()
        with self.assertRaises(CorruptRecordError) as caught:
            await store.read("s", base)
        self.assertEqual(
            (caught.exception.firstOffset, caught.exception.lastOffset), (base, nextBase - 1)
        )
        self.assertEqual(
            await self.readAll(store, "s"), [o for o in range(300) if not base <= o < nextBase]
        )

    async def test_timestampLookupStepsOverDamage(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await store.append("s", [{"value": _value(o), "timestamp": 1000 + o} for o in range(20)])
        await self.closeStore(store, clean=False)
        _flip(self.segmentFiles("s")[0], 5 * FRAME + 50)
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertEqual(await store.offsetForTimestamp("s", 1005), 6)
        self.assertEqual(await store.offsetForTimestamp("s", 1002), 2)

    async def test_compactedShardKeepsOtherKeys(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("k", {"compacted": True})
        for i in range(20):
            await store.upsert("k", b"key-%d" % i, _value(i))
        await self.closeStore(store)
        _flip(self.segmentFiles("k")[0], 10 * (FRAME + 6) + 60)
        store = await self.openStore(segment_bytes=1 << 20)
        keys = sorted(await store.keys("k"))
        self.assertEqual(len(keys), 19)
        self.assertNotIn(b"key-10", keys)
        self.assertEqual((await store.lookup("k", b"key-11"))["value"], _value(11))


class RecoveryReportTests(_Base):
    """Item 2: repairs and losses at start-up are warnings with shard, range and action."""

    async def test_garbageMetadataLoggedAndConfigRestored(self) -> None:
        store = await self.openStore()
        await store.createShard("k", {"compacted": True, "retention_ms": 5})
        await store.upsert("k", b"a", b"1")
        await self.closeStore(store)
        with open(os.path.join(self.shardDir("k"), "shard.json"), "wb") as f:
            f.write(b"\x00garbage{")
        store = await self.openStore()
        [line] = [m for m in self.logged if "unreadable shard.json" in m]
        self.assertIn("'k'", line)
        self.assertIn("from the checkpoint", line)
        self.assertEqual((await store.listShards())["k"]["compacted"], True)
        self.assertEqual((await store.lookup("k", b"a"))["value"], b"1")
        self.assertEqual(store.statistics()["recovery:metadata_rebuilt"], 1)

    async def test_emptiedActiveSegmentIsALoss(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await self.fill(store, "s", 50)
        await self.closeStore(store)
        [path] = self.segmentFiles("s")
        open(path, "wb").close()
        store = await self.openStore(segment_bytes=1 << 20)
        lost = [m for m in self.logged if "offsets 0..49 were durable" in m]
        self.assertEqual(len(lost), 1, self.logged)
        self.assertIn("'s'", lost[0])
        stats = store.statistics()
        self.assertEqual(stats["recovery:records_lost"], 1)
        self.assertEqual(stats["recovery_lost_offsets"], 50)
        self.assertEqual(await store.append("s", [{"value": b"x"}]), [0])

    async def test_lossAfterACrashFoundThroughTheCheckpoint(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20, sync="always")
        await store.createShard("s")
        await self.fill(store, "s", 30)
        store._periodicCheckpoint()
        await store._barrier()
        await self.closeStore(store, clean=False)
        with open(os.path.join(self.dataDir, "checkpoint.json")) as f:
            self.assertEqual(json.load(f)["shards"]["s"]["next"], 30)
        [path] = self.segmentFiles("s")
        with open(path, "r+b") as f:
            f.truncate(10 * FRAME)
        await self.openStore(segment_bytes=1 << 20, sync="always")
        self.assertTrue(any("offsets 10..29 were durable" in m for m in self.logged), self.logged)

    async def test_truncatedSealedSegment(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await self.fill(store, "s", 300)
        await self.closeStore(store)
        segs = self.segmentFiles("s")
        nextBase = int(os.path.basename(segs[1])[:-4])
        with open(segs[0], "r+b") as f:
            f.truncate(10 * FRAME + 20)
        store = await self.openStore()
        lines = [m for m in self.logged if f"offsets 10..{nextBase - 1} of sealed segment" in m]
        self.assertEqual(len(lines), 1, self.logged)
        await self.assertIntact(store, "s", range(10))
        await self.assertIntact(store, "s", range(nextBase, 300))

    async def test_tornTailAfterACrashIsNotALoss(self) -> None:
        """A half-written last record was never acknowledged: a repair, not a loss."""
        store = await self.openStore(segment_bytes=1 << 20, sync="always")
        await store.createShard("s")
        await self.fill(store, "s", 20)
        store._periodicCheckpoint()
        await store._barrier()
        await self.closeStore(store, clean=False)
        [path] = self.segmentFiles("s")
        with open(path, "ab") as f:
            f.write(b"\x40\x00\x00\x00torn")
        store = await self.openStore(segment_bytes=1 << 20, sync="always")
        self.assertTrue(any("truncated the torn or damaged tail" in m for m in self.logged))
        self.assertFalse(any("were durable" in m for m in self.logged), self.logged)
        self.assertEqual(store.statistics()["recovery:torn_tail_truncated"], 1)


class CheckTests(_Base):
    """C{robustmq ctl storage check}: every damaged range, offline and online."""

    async def test_offlineAndOnline(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await store.createShard("t")
        await self.fill(store, "s", 300)
        await self.fill(store, "t", 10)
        await self.closeStore(store)
        healthy = checkDataDir(self.dataDir, 256)
        self.assertTrue(healthy["ok"], healthy)
        self.assertEqual(healthy["shards"], 2)
        first = self.segmentFiles("s")[0]
        _flip(first, 4 * FRAME + 50)
        _patch(first, 12 * FRAME, b"\0" * FRAME)
        report = checkDataDir(self.dataDir, 256)
        self.assertFalse(report["ok"])
        self.assertEqual(
            [(d["shard"], d["first_offset"], d["last_offset"]) for d in report["damaged"]],
            [("s", 4, 4), ("s", 12, 12)],
        )
        store = await self.openStore()
        with self.assertRaises(StoreInUseError):
            checkDataDir(self.dataDir)
        online = await store.check()
        self.assertEqual(
            [(d["shard"], d["first_offset"], d["last_offset"]) for d in online["damaged"]],
            [("s", 4, 4), ("s", 12, 12)],
        )


class FullDiskTests(_Base):
    """Item 3: a full disk refuses writes cleanly and writes resume once space is freed."""

    def setUp(self) -> None:
        super().setUp()
        self.disk = SmallDisk(4 << 20).mount()
        self.addCleanup(self.disk.unmount)
        self.dataDir = os.path.join(self.disk.path, "data")

    async def fullThenFreed(self, sync: str) -> None:
        store = await self.openStore(sync=sync, segment_bytes=64 * 1024, min_free_bytes=256 * 1024)
        await store.createShard("s")
        await store.createShard("k", {"compacted": True})
        await self.fill(store, "s", 100)
        await store.upsert("k", b"a", b"before")
        self.disk.fill(leave=8 * 1024)
        big = [{"value": b"x" * 20_000} for _ in range(5)]
        pending = [store.append("s", big), store.upsert("k", b"a", b"during")]
        results = []
        for d in pending:
            try:
                results.append(await d)
            except StorageFullError as e:
                results.append(e)
        self.assertIsInstance(results[0], StorageFullError)
        self.assertIsInstance(results[1], StorageFullError)
        health = store.health()
        self.assertEqual((health["writable"], health["state"]), (False, "full"))
        self.assertIn("full", health["reason"])
        with self.assertRaises(StorageFullError):
            await store.append("s", [{"value": b"y"}])
        self.assertEqual(await store.offsets("s"), (0, 100), "nothing of the refused write")
        await self.assertIntact(store, "s", range(100))
        self.assertEqual((await store.lookup("k", b"a"))["value"], b"before")
        store._probeSpace()  # still full: nothing changes
        self.assertFalse(store.health()["writable"])
        self.disk.release()
        store._probeSpace()
        self.assertTrue(store.health()["writable"])
        self.assertEqual(await store.append("s", [{"value": _value(100)}]), [100])
        await store.upsert("k", b"a", b"after")
        full = [m for m in self.logged if "storage full under" in m]
        self.assertEqual(len(full), 1, self.logged)
        self.assertTrue(any("writes resume" in m for m in self.logged))
        self.assertFalse(any("Traceback" in m for m in self.logged), self.logged)
        await self.closeStore(store, clean=False)
        store = await self.openStore(sync=sync, segment_bytes=64 * 1024)
        await self.assertIntact(store, "s", range(101))
        self.assertEqual((await store.lookup("k", b"a"))["value"], b"after")
        self.assertFalse(any("damaged" in m or "were durable" in m for m in self.logged))

    async def test_fullDiskInterval(self) -> None:
        await self.fullThenFreed("interval")

    async def test_fullDiskAlways(self) -> None:
        await self.fullThenFreed("always")

    async def test_createShardOnFullDisk(self) -> None:
        store = await self.openStore(min_free_bytes=64 * 1024)
        self.disk.fill(leave=0)
        with self.assertRaises(StorageFullError):
            await store.createShard("new")
        self.assertNotIn("new", await store.listShards())
        self.disk.release()
        store._probeSpace()
        self.assertTrue(await store.createShard("new"))
        self.assertEqual(await store.append("new", [{"value": b"v"}]), [0])


class GroupCommitTests(_Base):
    """Item 6: under sync = "always" one fsync round covers every batch written meanwhile."""

    async def test_batchesWrittenDuringAnFsyncShareTheNext(self) -> None:
        import threading

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        import robustmq.storage.segment as segment

        release = threading.Event()
        real = segment.syncPaths
        calls: list[list[str]] = []

        def slowSync(paths: list[str]) -> None:
            calls.append(list(paths))
            release.wait(30)  # the first round "takes long"; the others pass through
            real(paths)

        store = await self.openStore(sync="always")
        await store.createShard("a")
        await store.createShard("b")
        self.patch(segment, "syncPaths", slowSync)
        before = store.statistics()
        first = store.append("a", [{"value": b"1"}])
        for _ in range(200):  # the first batch is written and its fsync round started
            if calls:
                break
            await deferLater(reactor, 0.01, lambda: None)
        second = store.append("a", [{"value": b"2"}])
        await deferLater(reactor, 0, lambda: None)
        third = store.append("b", [{"value": b"3"}])
        for _ in range(500):  # both are written and wait for the next round
            if len(store._syncQueue) == 2:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(store._syncQueue), 2)
        self.assertFalse(first.called or second.called or third.called, "nothing before fsync")
        release.set()
        self.assertEqual(await first, [0])
        self.assertEqual(await second, [1])
        self.assertEqual(await third, [0])
        after = store.statistics()
        self.assertEqual(after["fsync_rounds"] - before.get("fsync_rounds", 0), 2)
        self.assertEqual(after["fsync_batches"] - before.get("fsync_batches", 0), 3)
        self.assertEqual(len(calls), 2)
        self.assertIn(os.path.join(self.shardDir("b"), "00000000000000000000.log"), calls[1])
