"""Recovery, durability and bounds of the segment store, on real files."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from robustmq.config import StorageSettings
from robustmq.storage._segment.naming import escape, unescape
from robustmq.storage.errors import CorruptRecordError
from robustmq.storage.segment import SegmentShardStore


def _settings(dataDir: str, **overrides: Any) -> StorageSettings:
    values: dict[str, Any] = {
        "backend": "segment",
        "data_dir": dataDir,
        "sync": "interval",
        "segment_bytes": 4096,
        "index_interval_bytes": 256,
        "max_open_files": 16,
    }
    values.update(overrides)
    return StorageSettings(**values)


def _value(offset: int, size: int = 100) -> bytes:
    seed = b"record-%d-" % offset
    return (seed * (size // len(seed) + 1))[:size]


class _Base(TestCase):
    """Opens stores on one data directory and collects what they log."""

    def setUp(self) -> None:
        self.dataDir = os.path.abspath(self.mktemp())
        self.stores: list[SegmentShardStore] = []
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            text = formatEvent(event)
            if text:
                self.logged.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def tearDown(self) -> None:
        for store in self.stores:
            await store.close()

    async def openStore(self, **overrides: Any) -> SegmentShardStore:
        store = SegmentShardStore(_settings(self.dataDir, **overrides))
        await store.open()
        self.stores.append(store)
        return store

    async def closeStore(self, store: SegmentShardStore, clean: bool = True) -> None:
        await store.close()
        self.stores.remove(store)
        if not clean:  # as if the process had died: no clean-shutdown marker
            os.unlink(os.path.join(self.dataDir, ".clean-shutdown"))

    def shardDir(self, shard: str) -> str:
        return os.path.join(self.dataDir, "shards", escape(shard))

    def segmentFiles(self, shard: str, suffix: str = ".log") -> list[str]:
        return sorted(glob.glob(os.path.join(self.shardDir(shard), "*" + suffix)))

    async def fill(self, store: SegmentShardStore, shard: str, count: int, size: int = 100) -> None:
        for start in range(0, count, 50):
            n = min(50, count - start)
            await store.append(shard, [{"value": _value(o, size)} for o in range(start, start + n)])

    async def assertIntact(
        self, store: SegmentShardStore, shard: str, offsets: range, size: int = 100
    ) -> None:
        got: list[dict[str, Any]] = []
        offset = offsets.start
        while offset < offsets.stop:
            batch = await store.read(shard, offset, maxRecords=offsets.stop - offset)
            self.assertTrue(batch, f"nothing to read at offset {offset}")
            got.extend(batch)
            offset = batch[-1]["offset"] + 1
        self.assertEqual([r["offset"] for r in got], list(offsets))
        for r in got:
            self.assertEqual(r["value"], _value(r["offset"], size))


class NamingTests(TestCase):
    """Shard names map to safe, distinct, reversible directory names."""

    def test_roundTrip(self) -> None:
        names = ["a/b", "a%2Fb", "+/#", ".", "..", "", "ünï/☃", "sp ace", "A-z_9"]
        escaped = [escape(n) for n in names]
        self.assertEqual(len(set(escaped)), len(names))
        for name, e in zip(names, escaped, strict=True):
            self.assertNotIn("/", e)
            self.assertNotIn(".", e)
            self.assertEqual(unescape(e), name)

    def test_longNamesHashed(self) -> None:
        a, b = escape("x" * 300), escape("x" * 299 + "y")
        self.assertNotEqual(a, b)
        self.assertLessEqual(len(a), 200)
        self.assertIsNone(unescape(a))


class ReopenTests(_Base):
    """Everything acknowledged survives close and reopen."""

    async def test_reopenKeepsEverything(self) -> None:
        store = await self.openStore()
        await store.createShard("t/1", {"retention_ms": 0})
        await store.createShard("kv", {"compacted": True})
        await self.fill(store, "t/1", 400)
        for i in range(30):
            await store.upsert("kv", b"k%d" % (i % 5), b"%d" % i, [("n", b"%d" % i)])
        await store.deleteKey("kv", b"k0")
        await store.commitOffset("group/ü", "t/1", 123, b"meta")
        await store.deleteBefore("t/1", 10)
        self.assertGreater(len(self.segmentFiles("t/1")), 5)
        await self.closeStore(store)

        store = await self.openStore()
        shards = await store.listShards()
        self.assertEqual(set(shards), {"t/1", "kv"})
        self.assertTrue(shards["kv"]["compacted"])
        self.assertEqual(await store.offsets("t/1"), (10, 400))
        await self.assertIntact(store, "t/1", range(10, 400))
        self.assertEqual(sorted(await store.keys("kv")), [b"k1", b"k2", b"k3", b"k4"])
        rec = await store.lookup("kv", b"k4")
        self.assertEqual((rec["value"], rec["headers"]), (b"29", [("n", b"29")]))
        self.assertEqual(await store.fetchOffset("group/ü", "t/1"), (123, b"meta"))
        self.assertEqual(await store.append("t/1", [{"value": _value(400)}]), [400])
        await self.assertIntact(store, "t/1", range(10, 401))

    async def test_reopenAfterUncleanStop(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await self.fill(store, "s", 300)
        await self.closeStore(store, clean=False)
        store = await self.openStore()
        self.assertEqual(await store.offsets("s"), (0, 300))
        await self.assertIntact(store, "s", range(300))
        self.assertTrue(any("did not shut down cleanly" in m for m in self.logged))

    async def test_firstStartSaysNothingAlarming(self) -> None:
        """An empty data directory is new, not a crash to recover from."""
        store = await self.openStore()
        await self.closeStore(store, clean=False)
        self.assertTrue(any("new data directory" in m for m in self.logged), self.logged)
        alarming = ("did not shut down", "scanning", "marker", "unclean", "truncated")
        self.assertEqual([m for m in self.logged if any(w in m for w in alarming)], [])

    async def test_spanRecordsSurviveReopen(self) -> None:
        """Span records across segment rolls: offsets and reads after clean and unclean stops,
        and with every index deleted (rebuilt by a scan)."""
        store = await self.openStore()
        await store.createShard("s")
        firsts = []
        for i in range(60):  # 60 spans of 7 offsets, ~300 bytes each: several segments
            firsts.append(await store.appendSpan("s", {"value": _value(i, 300)}, 7))
        self.assertEqual(firsts, list(range(0, 420, 7)))
        self.assertGreater(len(self.segmentFiles("s")), 3)
        for clean, dropIndexes in ((True, False), (False, False), (True, True)):
            await self.closeStore(store, clean=clean)
            if dropIndexes:
                for path in self.segmentFiles("s", ".index"):
                    os.unlink(path)
            store = await self.openStore()
            self.assertEqual(await store.offsets("s"), (0, 420))
            for inside in (0, 3, 209, 419):
                [rec] = await store.read("s", inside, maxRecords=1)
                self.assertEqual((rec["offset"], rec["span"]), (inside // 7 * 7, 7))
                self.assertEqual(rec["value"], _value(inside // 7, 300))
            records = await store.read("s", 0, maxRecords=1000, maxBytes=1 << 20)
            self.assertEqual([r["offset"] for r in records], firsts)
        self.assertEqual(await store.append("s", [{"value": b"after"}]), [420])

    async def test_secondOpenRefused(self) -> None:
        await self.openStore()
        other = SegmentShardStore(_settings(self.dataDir))
        with self.assertRaises(OSError):
            await other.open()


class TornTailTests(_Base):
    """A torn or garbage tail of the active segment is cut off at open."""

    async def test_tornTailTruncated(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await self.fill(store, "s", 20)
        await self.closeStore(store, clean=False)
        [path] = self.segmentFiles("s")
        size = os.path.getsize(path)
        frame = size // 20
        with open(path, "r+b") as f:  # the last record half written
            f.truncate(size - frame // 2)
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertEqual(await store.offsets("s"), (0, 19))
        await self.assertIntact(store, "s", range(19))
        self.assertEqual(os.path.getsize(path), size - frame)
        self.assertTrue(
            any("truncated the torn or damaged tail" in m for m in self.logged), self.logged
        )
        self.assertEqual(await store.append("s", [{"value": _value(19)}]), [19])
        await self.assertIntact(store, "s", range(20))

    async def test_garbageTailTruncated(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await self.fill(store, "s", 10)
        await self.closeStore(store, clean=False)
        [path] = self.segmentFiles("s")
        size = os.path.getsize(path)
        with open(path, "ab") as f:  # pages that reached the disk out of order
            f.write(b"\x00" * 4096 + os.urandom(100))
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertEqual(await store.offsets("s"), (0, 10))
        self.assertEqual(os.path.getsize(path), size)
        await self.assertIntact(store, "s", range(10))


class CorruptionTests(_Base):
    """A record damaged in the middle of the log is detected, not papered over."""

    def flipByte(self, path: str, position: int) -> None:
        with open(path, "r+b") as f:
            f.seek(position)
            byte = f.read(1)
            f.seek(position)
            f.write(bytes([byte[0] ^ 0xFF]))

    async def test_corruptRecordInActiveSegment(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s")
        await self.fill(store, "s", 20)
        await self.closeStore(store, clean=False)
        [path] = self.segmentFiles("s")
        frame = os.path.getsize(path) // 20
        self.flipByte(path, 10 * frame + frame - 5)  # inside record 10's value
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertTrue(any("are damaged; kept in place" in m for m in self.logged))
        self.assertEqual(await store.offsets("s"), (0, 20), "nothing truncated")
        records = await store.read("s", 0)
        self.assertEqual([r["offset"] for r in records], list(range(10)))
        with self.assertRaises(CorruptRecordError):
            await store.read("s", 10)
        await self.assertIntact(store, "s", range(11, 20))

    async def test_corruptRecordInSealedSegment(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        await self.fill(store, "s", 200)
        await self.closeStore(store)
        first = self.segmentFiles("s")[0]
        frame = 135  # 100-byte value + 35 bytes of framing
        self.flipByte(first, 3 * frame + 50)
        store = await self.openStore()
        self.assertEqual([r["offset"] for r in await store.read("s", 0)], [0, 1, 2])
        with self.assertRaises(CorruptRecordError):
            await store.read("s", 3)
        await self.assertIntact(store, "s", range(4, 200))


class IndexRebuildTests(_Base):
    """Missing or damaged index files are rebuilt from the log."""

    async def test_indexDeletedAndRebuilt(self) -> None:
        store = await self.openStore()
        await store.createShard("s")
        t0 = 1_700_000_000_000
        for start in range(0, 500, 50):
            await store.append(
                "s", [{"value": _value(o), "timestamp": t0 + o} for o in range(start, start + 50)]
            )
        await self.closeStore(store)
        indexes = self.segmentFiles("s", ".index")
        self.assertGreater(len(indexes), 5)
        for path in indexes[:-1]:
            os.unlink(path)
        with open(indexes[-1], "r+b") as f:
            f.write(b"garbage")
        store = await self.openStore()
        for offset in (0, 1, 77, 250, 333, 499):
            [rec] = await store.read("s", offset, maxRecords=1)
            self.assertEqual(rec["value"], _value(offset))
            self.assertEqual(await store.offsetForTimestamp("s", t0 + offset), offset)
        await self.assertIntact(store, "s", range(500))
        self.assertTrue(any("rebuil" in m for m in self.logged))
        await self.closeStore(store)
        self.assertEqual(len(self.segmentFiles("s", ".index")), len(self.segmentFiles("s")))
        self.assertEqual(len(self.segmentFiles("s", ".timeindex")), len(self.segmentFiles("s")))

    async def test_lazyIndexLoadRebuilds(self) -> None:
        """An index damaged while the store runs is rebuilt on first use."""
        store = await self.openStore(max_open_files=4)
        await store.createShard("s")
        await self.fill(store, "s", 400)
        await self.closeStore(store)
        store = await self.openStore(max_open_files=4)
        for path in self.segmentFiles("s", ".timeindex"):
            os.unlink(path)
        await self.assertIntact(store, "s", range(400))
        for offset in range(0, 400, 37):
            [rec] = await store.read("s", offset, maxRecords=1)
            self.assertEqual(rec["offset"], offset)

    async def test_loadedIndexesBounded(self) -> None:
        """At most max_open_files sealed segments keep their index in memory."""
        store = await self.openStore(max_open_files=4)
        await store.createShard("s")
        await self.fill(store, "s", 1000)
        await self.assertIntact(store, "s", range(1000))
        segments = store._shards["s"].segments
        self.assertGreater(len(segments), 20)
        loaded = [s for s in segments[:-1] if s.index is not None]
        self.assertLessEqual(len(loaded), 4)


class RetentionTests(_Base):
    """Whole old segments are deleted by size and by age."""

    async def test_retentionBytes(self) -> None:
        store = await self.openStore()
        await store.createShard("s", {"retention_bytes": 3 * 4096})
        await self.fill(store, "s", 500)
        before = len(self.segmentFiles("s"))
        deleted = store.enforceRetention()
        self.assertGreater(deleted, 0)
        await store.deleteBefore("s", 0)  # a round trip through the I/O thread
        await store.append("s", [{"value": _value(500)}])
        self.assertEqual(len(self.segmentFiles("s")), before - deleted)
        start, end = await store.offsets("s")
        self.assertGreater(start, 0)
        self.assertEqual(end, 501)
        total = sum(os.path.getsize(p) for p in self.segmentFiles("s"))
        self.assertLess(total, 3 * 4096 + 2 * 4096)
        await self.assertIntact(store, "s", range(start, 501))

    async def test_retentionMs(self) -> None:
        store = await self.openStore()
        await store.createShard("s", {"retention_ms": 60_000})
        old = int(time.time() * 1000) - 3_600_000
        await store.append("s", [{"value": _value(o), "timestamp": old} for o in range(100)])
        await store.append("s", [{"value": _value(o)} for o in range(100, 150)])
        store.enforceRetention()
        start, end = await store.offsets("s")
        self.assertGreater(start, 50)
        self.assertEqual(end, 150)
        await self.assertIntact(store, "s", range(start, 150))
        self.assertEqual(await store.offsetForTimestamp("s", 0), start)

    async def test_expiredActiveSegmentRolled(self) -> None:
        store = await self.openStore(segment_bytes=1 << 20)
        await store.createShard("s", {"retention_ms": 1000})
        old = int(time.time() * 1000) - 10_000
        await store.append("s", [{"value": b"x", "timestamp": old} for _ in range(5)])
        store.enforceRetention()
        self.assertEqual(await store.offsets("s"), (5, 5))
        self.assertEqual(await store.read("s", 0), [])
        self.assertEqual(await store.append("s", [{"value": b"y"}]), [5])
        await self.closeStore(store)
        store = await self.openStore(segment_bytes=1 << 20)
        self.assertEqual(await store.offsets("s"), (5, 6))


class CompactionTests(_Base):
    """Keyed shards keep the latest value per key; tombstones go."""

    async def test_compaction(self) -> None:
        store = await self.openStore()
        await store.createShard("kv", {"compacted": True})
        for i in range(400):
            await store.upsert("kv", b"key-%d" % (i % 10), _value(i))
        for k in range(3):
            await store.deleteKey("kv", b"key-%d" % k)
        await store.compact("kv")
        files = self.segmentFiles("kv")
        self.assertLessEqual(len(files), 3)
        self.assertEqual(sorted(await store.keys("kv")), [b"key-%d" % k for k in range(3, 10)])
        for k in range(3, 10):
            latest = max(i for i in range(400) if i % 10 == k)
            rec = await store.lookup("kv", b"key-%d" % k)
            self.assertEqual((rec["offset"], rec["value"]), (latest, _value(latest)))
        everything = await store.read("kv", 0, maxRecords=10_000)
        self.assertEqual(len(everything), 7, "one record per live key, no tombstones")
        self.assertEqual(await store.upsert("kv", b"new", b"v"), 403)
        await self.closeStore(store, clean=False)

        store = await self.openStore()
        self.assertEqual(len(await store.keys("kv")), 8)
        self.assertEqual((await store.lookup("kv", b"key-9"))["value"], _value(399))
        self.assertEqual(await store.offsets("kv"), (0, 404))

    async def test_automaticCompaction(self) -> None:
        store = await self.openStore()
        await store.createShard("kv", {"compacted": True})
        for i in range(2000):
            await store.upsert("kv", b"k%d" % (i % 4), _value(i))
        await store.upsert("kv", b"k0", b"last")  # let a running compaction finish
        total = sum(os.path.getsize(p) for p in self.segmentFiles("kv"))
        self.assertLess(total, 2000 * 135 / 2)
        self.assertEqual((await store.lookup("kv", b"k0"))["value"], b"last")
        self.assertTrue(any("compacted kv" in m for m in self.logged))

    async def test_unfinishedCompactionDiscarded(self) -> None:
        store = await self.openStore()
        await store.createShard("kv", {"compacted": True})
        await store.upsert("kv", b"a", b"1")
        await self.closeStore(store, clean=False)
        leftover = os.path.join(self.shardDir("kv"), f"{0:020d}-{1:020d}.cleaned")
        with open(leftover, "wb") as f:
            f.write(b"partial")
        store = await self.openStore()
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual((await store.lookup("kv", b"a"))["value"], b"1")


class FileHandleBoundTests(_Base):
    """Many shards never hold more than max_open_files descriptors."""

    def openFds(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def fdTargets(self) -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return out

    async def test_twoThousandShards(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd")
        baseline = self.openFds()
        limit = 16
        store = await self.openStore(max_open_files=limit, sync="os")
        peak = self.openFds()
        shards = [f"device/{i}/state" for i in range(2000)]
        for i in range(0, len(shards), 250):
            await_ = [store.createShard(s) for s in shards[i : i + 250]]
            for d in await_:
                await d
            peak = max(peak, self.openFds())
        for rnd in range(2):
            ds = [store.append(s, [{"value": b"%d-%d" % (rnd, j)}]) for j, s in enumerate(shards)]
            for d in ds:
                await d
            peak = max(peak, self.openFds())
        for j, s in enumerate(shards):
            records = await store.read(s, 0)
            self.assertEqual([r["value"] for r in records], [b"0-%d" % j, b"1-%d" % j])
            if j % 100 == 0:
                peak = max(peak, self.openFds())
        self.assertLessEqual(store.openFileCount(), limit)
        self.assertLessEqual(peak - baseline, limit, f"peak {peak}, baseline {baseline}")
        await self.closeStore(store)
        leaked = [t for t in self.fdTargets() if t.startswith(self.dataDir)]
        self.assertEqual(leaked, [], "files left open after close")


_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task
    from robustmq.config import StorageSettings
    from robustmq.storage.segment import SegmentShardStore

    async def main(reactor):
        store = SegmentShardStore(
            StorageSettings(data_dir=sys.argv[1], sync="always", segment_bytes=65536), reactor
        )
        await store.open()
        await store.createShard("crash")
        print("ready", flush=True)
        offset = 0
        while True:
            batch = [{"value": (b"v%d-" % (offset + i)) * 20} for i in range(10)]
            offsets = await store.append("crash", batch)
            offset = offsets[-1] + 1
            print(offsets[-1], flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """
)


class CrashTests(_Base):
    """SIGKILL mid-stream loses nothing that was acknowledged (sync = always)."""

    async def test_sigkill(self) -> None:
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(_CRASH_SCRIPT)
        proc = subprocess.Popen(
            [sys.executable, script, self.dataDir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        acked = -1
        deadline = time.monotonic() + 30
        try:
            assert proc.stdout is not None
            self.assertEqual(proc.stdout.readline().strip(), b"ready", proc.stderr)
            while acked < 2000 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                acked = int(line)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(10)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertGreater(acked, 100, "the child acknowledged too little to test anything")
        store = await self.openStore(sync="always", segment_bytes=65536)
        start, end = await store.offsets("crash")
        self.assertEqual(start, 0)
        self.assertGreaterEqual(end, acked + 1)
        records = []
        while len(records) < end:
            records.extend(await store.read("crash", len(records), maxRecords=5000))
        self.assertEqual([r["offset"] for r in records], list(range(end)))
        for r in records:
            self.assertEqual(r["value"], (b"v%d-" % r["offset"]) * 20)
