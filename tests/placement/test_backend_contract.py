"""One IPlacementBackend contract, run against the embedded store and a real etcd."""

from __future__ import annotations

import itertools
import os
import shutil
from typing import Any

from placementhelpers import EtcdProcess, sleep, waitFor
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from robustmq.interfaces import IPlacementBackend
from robustmq.placement.embedded import EmbeddedBackend
from robustmq.placement.errors import LeaseNotFoundError, LimitError
from robustmq.placement.etcd import EtcdBackend, prefixEnd
from robustmq.placement.kv import KeyValue


class BackendContract:
    """Tests every backend must pass; subclasses provide makeBackend()."""

    #: A lease TTL the backend honours (etcd rounds up to its minimum).
    ttl = 1.0

    async def makeBackend(self) -> Any:
        raise NotImplementedError

    async def backend(self) -> Any:
        b = await self.makeBackend()
        self.addCleanup(b.close)
        return b

    async def test_provides(self) -> None:
        verifyObject(IPlacementBackend, await self.backend())

    async def test_putGetDeleteList(self) -> None:
        b = await self.backend()
        r1 = await b.put("nodes/a", b"1")
        r2 = await b.put("nodes/b", b"2")
        await b.put("nodesx/c", b"3")
        self.assertGreater(r2, r1)
        kv = await b.get("nodes/a")
        self.assertEqual(
            (kv.key, kv.value, kv.createRevision, kv.modRevision), ("nodes/a", b"1", r1, r1)
        )
        r3 = await b.put("nodes/a", b"1b")
        kv = await b.get("nodes/a")
        self.assertEqual((kv.value, kv.createRevision, kv.modRevision), (b"1b", r1, r3))
        self.assertEqual([kv.key for kv in await b.list("nodes/")], ["nodes/a", "nodes/b"])
        self.assertEqual([kv.value for kv in await b.list("nodes")], [b"1b", b"2", b"3"])
        self.assertTrue(await b.delete("nodes/a"))
        self.assertFalse(await b.delete("nodes/a"))
        self.assertIsNone(await b.get("nodes/a"))
        self.assertEqual([kv.key for kv in await b.list("nodes/")], ["nodes/b"])
        self.assertEqual(await b.list("nothing/"), [])

    async def test_binaryValues(self) -> None:
        b = await self.backend()
        value = bytes(range(256))
        await b.put("bin", value)
        self.assertEqual((await b.get("bin")).value, value)
        await b.put("empty", b"")
        self.assertEqual((await b.get("empty")).value, b"")

    async def test_compareAndSet(self) -> None:
        b = await self.backend()
        self.assertTrue(await b.compareAndSet("k", None, b"one"))
        self.assertFalse(await b.compareAndSet("k", None, b"two"), "create-only on an existing key")
        self.assertFalse(await b.compareAndSet("k", b"wrong", b"two"))
        self.assertEqual((await b.get("k")).value, b"one")
        self.assertTrue(await b.compareAndSet("k", b"one", b"two"))
        self.assertEqual((await b.get("k")).value, b"two")
        self.assertFalse(await b.compareAndSet("k", b"one", None))
        self.assertTrue(await b.compareAndSet("k", b"two", None))
        self.assertIsNone(await b.get("k"))
        self.assertFalse(await b.compareAndSet("missing", b"x", b"y"))

    async def test_leaseRevokeDeletesKeys(self) -> None:
        b = await self.backend()
        lease = await b.grantLease(30)
        await b.put("alive/a", b"", lease)
        await b.put("alive/b", b"", lease)
        await b.put("keep", b"")
        self.assertEqual((await b.get("alive/a")).lease, lease)
        self.assertTrue(await b.revokeLease(lease))
        self.assertEqual(await b.list("alive/"), [])
        self.assertIsNotNone(await b.get("keep"))
        self.assertFalse(await b.revokeLease(lease))
        with self.assertRaises(LeaseNotFoundError):
            await b.keepAlive(lease)
        with self.assertRaises(LeaseNotFoundError):
            await b.put("alive/c", b"", lease)

    async def test_leaseExpiresUnlessKeptAlive(self) -> None:
        b = await self.backend()
        kept = await b.grantLease(self.ttl)
        lapsing = await b.grantLease(self.ttl)
        await b.put("kept", b"", kept)
        await b.put("lapsing", b"", lapsing)
        deleted: list[str] = []
        await b.watch("lapsing", lambda kv: None, deleted.append)
        # Keep one lease alive four times per TTL until the other has lapsed.
        for _ in range(int(self.ttl * 40)):
            await b.keepAlive(kept)
            if await b.get("lapsing") is None:
                break
            await sleep(self.ttl / 4)
        self.assertIsNone(await b.get("lapsing"), "an abandoned lease ends")
        self.assertIsNotNone(await b.get("kept"), "a kept-alive lease lives on")
        await waitFor(lambda: deleted == ["lapsing"], what="the expiry reported to a watch")
        with self.assertRaises(LeaseNotFoundError):
            await b.keepAlive(lapsing)

    async def test_rePutMovesKeyToNewLease(self) -> None:
        b = await self.backend()
        old = await b.grantLease(30)
        new = await b.grantLease(30)
        await b.put("alive/n", b"", old)
        await b.put("alive/n", b"", new)
        await b.revokeLease(old)
        self.assertEqual((await b.get("alive/n")).lease, new, "the key follows its latest lease")

    async def test_watchReportsChangesUnderPrefix(self) -> None:
        b = await self.backend()
        puts: list[KeyValue] = []
        deletes: list[str] = []
        w = await b.watch("routes/", puts.append, deletes.append)
        await b.put("routes/a", b"1")
        await b.put("other/a", b"x")
        await b.put("routes/a", b"2")
        await b.compareAndSet("routes/b", None, b"3")
        await b.delete("routes/a")
        await b.delete("routes/missing")
        await waitFor(lambda: len(puts) == 3 and len(deletes) == 1, what="watch events")
        self.assertEqual(
            [(kv.key, kv.value) for kv in puts],
            [("routes/a", b"1"), ("routes/a", b"2"), ("routes/b", b"3")],
        )
        self.assertEqual(deletes, ["routes/a"])
        w.stop()
        await b.put("routes/c", b"4")
        await sleep(0.3)
        self.assertEqual(len(puts), 3, "a stopped watch reports nothing")

    async def test_electionMovesOnResignAndLeaseEnd(self) -> None:
        b = await self.backend()
        leases = [await b.grantLease(30) for _ in range(3)]
        seen: list[str | None] = []
        await b.observe("placement", seen.append)
        self.assertIsNone(await b.leader("placement"))
        await b.campaign("placement", "a", leases[0])
        self.assertEqual(await b.leader("placement"), "a")
        second = b.campaign("placement", "b", leases[1])
        third = b.campaign("placement", "c", leases[2])
        await sleep(0.2)
        self.assertFalse(second.called or third.called, "only one leader at a time")
        self.assertFalse(await b.resign("placement", "b"), "a non-leader cannot resign")
        self.assertTrue(await b.resign("placement", "a"))
        await waitFor(lambda: second.called or third.called, what="a new leader after resign")
        winner = await b.leader("placement")
        self.assertIn(winner, ("b", "c"))
        loser = third if winner == "b" else second
        self.assertFalse(loser.called)
        # The leader's lease ends: leadership moves to the last candidate.
        await b.revokeLease(leases[1 if winner == "b" else 2])
        await waitFor(lambda: loser.called, what="a new leader after the lease ended")
        self.assertEqual(await b.leader("placement"), "c" if winner == "b" else "b")
        await waitFor(lambda: len(seen) >= 3, what="observed leadership changes")
        self.assertEqual(seen[0], "a")
        self.assertEqual(seen[-1], await b.leader("placement"))

    async def test_electionLeaseExpiry(self) -> None:
        b = await self.backend()
        first = await b.grantLease(self.ttl)
        second = await b.grantLease(30)
        await b.campaign("e", "first", first)
        waiting = b.campaign("e", "second", second)
        await waitFor(lambda: waiting.called, timeout=self.ttl * 10, what="leadership after expiry")
        self.assertEqual(await b.leader("e"), "second")

    async def test_campaignCancel(self) -> None:
        b = await self.backend()
        lease = await b.grantLease(30)
        await b.campaign("e", "a", lease)
        waiting = b.campaign("e", "b", lease)
        waiting.cancel()
        with self.assertRaises(CancelledError):
            await waiting
        await b.resign("e", "a")
        await sleep(0.2)
        self.assertIsNone(await b.leader("e"), "a cancelled candidate does not take over")


class EmbeddedBackendTests(BackendContract, TestCase):
    """The SQLite store honours the contract, plus durability and its bound."""

    ttl = 0.3

    async def makeBackend(self) -> EmbeddedBackend:
        b = EmbeddedBackend(os.path.abspath(self.mktemp()), reactor)
        await b.open()
        return b

    async def test_durableAcrossReopen(self) -> None:
        path = os.path.abspath(self.mktemp())
        b = EmbeddedBackend(path, reactor)
        await b.open()
        lease = await b.grantLease(30)
        await b.put("a", b"1")
        await b.put("leased", b"2", lease)
        revision = await b.put("b", b"3")
        await b.close()
        b = EmbeddedBackend(path, reactor)
        await b.open()
        self.addCleanup(b.close)
        self.assertEqual([kv.value for kv in await b.list("")], [b"1", b"3", b"2"])
        self.assertGreater(await b.put("c", b"4"), revision, "revisions keep growing")
        self.assertEqual(await b.keepAlive(lease), 30, "leases come back with their full TTL")
        other = await b.grantLease(30)
        self.assertNotEqual(other, lease, "lease ids are not reused")

    async def test_pendingBound(self) -> None:
        b = EmbeddedBackend(os.path.abspath(self.mktemp()), reactor, maxPending=10)
        await b.open()
        self.addCleanup(b.close)
        ds = [b.put(f"k{i}", b"") for i in range(10)]
        with self.assertRaises(LimitError):
            await b.put("one-too-many", b"")
        for d in ds:
            await d
        await b.put("after", b"")
        self.assertEqual(len(await b.list("")), 11)

    async def test_groupCommit(self) -> None:
        b = await self.backend()
        revisions = [b.put(f"k{i:05}", b"v") for i in range(2000)]
        values = [await d for d in revisions]
        self.assertEqual(values, sorted(values))
        self.assertEqual(len(await b.list("k")), 2000)


class EtcdBackendTests(BackendContract, TestCase):
    """The etcd backend against a real etcd started for this class."""

    ttl = 2.0  # etcd's minimum TTL for a default member
    etcd: EtcdProcess | None = None
    _names = itertools.count()

    @classmethod
    def setUpClass(cls) -> None:
        if shutil.which("etcd") is None:
            raise SkipTest("etcd not installed (scripts/install-system-deps.sh)")
        cls.etcd = EtcdProcess().start()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.etcd is not None:
            cls.etcd.cleanup()

    async def makeBackend(self) -> EtcdBackend:
        assert self.etcd is not None
        b = EtcdBackend([self.etcd.url], reactor, prefix=f"/test-{next(self._names)}/")
        await b.open()
        return b

    def test_prefixEnd(self) -> None:
        self.assertEqual(prefixEnd(b"a/"), b"a0")
        self.assertEqual(prefixEnd(b"a\xff"), b"b")
        self.assertEqual(prefixEnd(b"\xff"), b"\0")

    async def test_secondEndpointUsedWhenFirstIsDown(self) -> None:
        assert self.etcd is not None
        from robustmq.testing.process import freePort

        dead = f"http://127.0.0.1:{freePort()}"
        b = EtcdBackend([dead, self.etcd.url], reactor, prefix="/failover/")
        await b.open()
        self.addCleanup(b.close)
        await b.put("k", b"v")
        self.assertEqual((await b.get("k")).value, b"v")

    async def test_watchResumesAfterEtcdRestart(self) -> None:
        assert self.etcd is not None
        b = await self.backend()
        puts: list[bytes] = []
        await b.watch("w/", lambda kv: puts.append(kv.value), lambda key: None)
        await b.put("w/1", b"before")
        await waitFor(lambda: puts == [b"before"], what="the first event")
        self.etcd.stop()
        await sleep(0.5)
        self.etcd.start()
        writer = await self.backend()
        writer.prefix = b.prefix
        await writer.put("w/2", b"after")
        await writer.put("w/3", b"later")
        await waitFor(lambda: len(puts) >= 3, what="events after the restart")
        self.assertEqual(puts, [b"before", b"after", b"later"], "nothing lost or repeated")
