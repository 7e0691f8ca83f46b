"""Pushes and snapshots as batches of encoded records; the leader's metadata cache."""

from __future__ import annotations

import os
from typing import Any

import pytest
from placementhelpers import waitFor
from twisted.cred.credentials import UsernamePassword
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.spread import jelly, pb
from twisted.trial.unittest import TestCase

from robustmq.config import settingsFromMapping
from robustmq.placement import center
from robustmq.placement.client import PlacementListener
from robustmq.placement.errors import InvalidRecordError
from robustmq.placement.kv import keyOf
from robustmq.placement.records import (
    BATCH_CHUNK,
    ConfigEntry,
    EncodedSnapshot,
    NodeInfo,
    RouteEntry,
    SessionRecord,
    ShardRecord,
    Snapshot,
    decodeBatch,
    encodeBatch,
    encodeRecord,
)
from robustmq.placement.server import PlacementService

SECRET = "batching-secret"


def _broker() -> pb.Broker:
    """A PB broker outside a connection, as jelly's invoker for Copyable records."""
    broker = pb.Broker()
    broker.serializingPerspective = None
    broker.unserializingPerspective = None
    return broker


# Batches on their own


def test_batchRoundTripInOrder():
    records = [
        NodeInfo("n1", ["broker"]),
        RouteEntry("a/#", ["n1"]),
        ShardRecord("s", "n1", 2),
        ConfigEntry("k", "v"),
        SessionRecord("c", "n1", 5, 1.0),
    ]
    chunks = encodeBatch([encodeRecord(r) for r in records])
    assert chunks == [b"[" + b",".join(encodeRecord(r) for r in records) + b"]"]
    assert decodeBatch(chunks) == records
    assert decodeBatch(encodeBatch([])) == []


def test_largeBatchCutIntoChunksPBAccepts():
    routes = [RouteEntry("x" * 60_000 + str(i), ["n1"]) for i in range(10)]
    chunks = encodeBatch([encodeRecord(r) for r in routes])
    assert len(chunks) > 1
    assert all(len(c) <= BATCH_CHUNK for c in chunks)
    assert decodeBatch(chunks) == routes


def test_unwantedTypesSkipped():
    chunks = encodeBatch([encodeRecord(NodeInfo("n1", ["broker"])), encodeRecord(ConfigEntry("k"))])
    assert decodeBatch(chunks, lambda t: t == "ConfigEntry") == [ConfigEntry("k")]


@pytest.mark.parametrize(
    "chunks",
    [
        b"[]",
        ["[]"],
        [b"not json"],
        [b'{"type":"ConfigEntry","key":"k"}'],
        [b'[{"type":"Unknown"}]'],
        [b'[{"type":"NodeInfo","nodeId":"bad id","roles":["broker"]}]'],
        [b'[{"type":"ConfigEntry","key":"k","extra":1}]'],
        [b"[5]"],
    ],
)
def test_malformedBatchRefused(chunks):
    with pytest.raises(InvalidRecordError):
        decodeBatch(chunks)


def test_snapshotCrossesPBAsADictOfRecords():
    nodes = [NodeInfo("n1", ["broker"]), NodeInfo("n2", ["broker", "placement"])]
    routes = [RouteEntry("a/#", ["n1"])]
    broker = _broker()
    wire = jelly.jelly(
        EncodedSnapshot(
            {"nodes": [encodeRecord(n) for n in nodes], "routes": [encodeRecord(r) for r in routes]}
        ),
        invoker=broker,
    )
    snapshot = jelly.unjelly(wire, taster=pb.globalSecurity, invoker=broker)
    assert isinstance(snapshot, Snapshot)
    assert snapshot == {"nodes": nodes, "routes": routes, "shards": [], "config": []}


def test_snapshotSectionOfTheWrongTypeRefused():
    broker = _broker()
    wire = jelly.jelly(EncodedSnapshot({"nodes": [encodeRecord(ConfigEntry("k"))]}), invoker=broker)
    with pytest.raises(InvalidRecordError):
        jelly.unjelly(wire, taster=pb.globalSecurity, invoker=broker)


def test_listenerDispatchesABatchInOrder():
    seen: list[tuple[str, Any]] = []

    class Handler:
        def nodeChanged(self, info: Any) -> None:
            seen.append(("nodeChanged", info))

        def routeChanged(self, entry: Any) -> None:
            seen.append(("routeChanged", entry))

        def sessionTakenOver(self, record: Any) -> None:
            seen.append(("sessionTakenOver", record))

    records = [
        RouteEntry("r", ["n1"]),
        ConfigEntry("no handler for this", "v"),
        NodeInfo("n1", ["broker"]),
        SessionRecord("c", "n1"),
    ]
    PlacementListener(Handler()).remote_updates(encodeBatch([encodeRecord(r) for r in records]))
    assert seen == [
        ("routeChanged", records[0]),
        ("nodeChanged", records[2]),
        ("sessionTakenOver", records[3]),
    ]


# Against a placement service over loopback PB


class HeldListener(pb.Referenceable):
    """Records every batch; while C{hold} is set, leaves each one unacknowledged."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.batches: list[list[Any]] = []
        self.chunkCounts: list[int] = []
        self.unacknowledged: list[Deferred[None]] = []

    def remote_updates(self, chunks: Any) -> Deferred[None] | None:
        self.batches.append(decodeBatch(chunks))
        self.chunkCounts.append(len(chunks))
        if self.hold:
            d: Deferred[None] = Deferred()
            self.unacknowledged.append(d)
            return d
        return None

    def release(self) -> None:
        self.hold = False
        waiting, self.unacknowledged = self.unacknowledged, []
        for d in waiting:
            d.callback(None)


class BatchingTests(TestCase):
    """The leader batches pushes per node and serves metadata from its cache."""

    def setUp(self) -> None:
        self.perspectives: list[Any] = []

    async def startService(self, **placement: Any) -> PlacementService:
        values = {
            "port": 0,
            "cluster_secret": SECRET,
            "heartbeat_interval": 0.5,
            "heartbeat_timeout": 30.0,
        }
        values.update(placement)
        settings = settingsFromMapping(
            {"node": {"data_dir": os.path.abspath(self.mktemp())}, "placement": values}
        )
        service = PlacementService(settings, reactor)
        service.startService()
        await service.ready
        self.addCleanup(service.stopService)
        return service

    async def join(self, service: PlacementService, nodeId: str, listener: Any = None) -> Any:
        """Log in and register C{nodeId}; fires with (perspective, snapshot, broker)."""
        factory = pb.PBClientFactory()
        broker = await TCP4ClientEndpoint(reactor, "127.0.0.1", service.port).connect(factory)
        self.addCleanup(broker.transport.loseConnection)
        perspective = await factory.login(UsernamePassword(nodeId.encode(), SECRET.encode()))
        # Dropping the last reference to a perspective logs the node out.
        self.perspectives.append(perspective)
        snapshot = await perspective.callRemote("register", NodeInfo(nodeId, ("broker",)), listener)
        return perspective, snapshot, broker

    async def test_oneUnacknowledgedBatchPerNode(self) -> None:
        service = await self.startService()
        watcher = HeldListener(hold=True)
        perspective, _, _ = await self.join(service, "watcher", watcher)
        await self.join(service, "n1")
        await waitFor(lambda: watcher.batches, what="the first push")
        for nodeId in ("n2", "n3", "n4"):
            await self.join(service, nodeId)
        # A round trip on the watcher's connection after the registrations
        # were answered: a second batch would have arrived before its answer.
        await perspective.callRemote("heartbeat")
        self.assertEqual([[r.nodeId for r in b] for b in watcher.batches], [["n1"]])
        watcher.release()
        await waitFor(lambda: len(watcher.batches) == 2, what="the queued pushes")
        self.assertEqual([r.nodeId for r in watcher.batches[1]], ["n2", "n3", "n4"])
        self.assertTrue(all(isinstance(r, NodeInfo) for r in watcher.batches[1]))

    async def test_nodeOverThePendingBoundDisconnected(self) -> None:
        service = await self.startService(max_pending_pushes=3)
        watcher = HeldListener(hold=True)
        _, _, broker = await self.join(service, "watcher", watcher)
        lost: Deferred[None] = Deferred()
        broker.notifyOnDisconnect(lambda: lost.callback(None))
        for nodeId in ("n1", "n2", "n3", "n4"):
            await self.join(service, nodeId)
        await lost
        assert service.center is not None
        self.assertIsNone(service.center.members["watcher"].listener)

    async def test_largeSnapshotAndBatchInChunks(self) -> None:
        service = await self.startService()
        watcher = HeldListener(hold=True)
        await self.join(service, "watcher", watcher)
        perspective, _, _ = await self.join(service, "n1")
        await waitFor(lambda: watcher.batches, what="the first push")
        filters = [f"{i}/" + "x" * 60_000 for i in range(6)]
        for topicFilter in filters:
            await perspective.callRemote("addRoute", topicFilter)
        watcher.release()
        await waitFor(lambda: len(watcher.batches) == 2, what="the route pushes")
        self.assertEqual([r.filter for r in watcher.batches[1]], filters)
        self.assertGreater(watcher.chunkCounts[1], 1)
        _, snapshot, _ = await self.join(service, "late")
        self.assertIsInstance(snapshot, Snapshot)
        self.assertEqual(
            snapshot["routes"], sorted((RouteEntry(f, ("n1",)) for f in filters), key=_routeKey)
        )
        self.assertEqual([n.nodeId for n in snapshot["nodes"]], ["late", "n1", "watcher"])

    async def test_cacheFollowsWritesItDidNotMake(self) -> None:
        service = await self.startService()
        perspective, _, _ = await self.join(service, "n1")
        await perspective.callRemote("addRoute", "gone/#")
        await perspective.callRemote("setConfig", "k", "v1")
        # Written behind the leader's back (another writer of the same store).
        backend = service.backend
        await backend.put(keyOf("config", "k"), encodeRecord(ConfigEntry("k", "v2")))
        await backend.delete(keyOf("routes", "gone/#"))
        await backend.put(keyOf("shards", "s"), encodeRecord(ShardRecord("s", "n1", 7)))

        async def caughtUp() -> bool:
            config = await perspective.callRemote("getConfig", "k")
            routes = await perspective.callRemote("listRoutes")
            shard = await perspective.callRemote("getShard", "s")
            return config.value == "v2" and routes == [] and shard is not None

        await waitFor(caughtUp, what="the cache to follow the store")
        _, snapshot, _ = await self.join(service, "n2")
        self.assertEqual(snapshot["config"], [ConfigEntry("k", "v2")])
        self.assertEqual(snapshot["shards"], [ShardRecord("s", "n1", 7)])

    async def test_prefixOverTheCacheLimitReadFromTheBackend(self) -> None:
        self.patch(center, "CACHE_LIMIT", 3)
        service = await self.startService()
        perspective, _, _ = await self.join(service, "n1")
        filters = [f"t/{i}" for i in range(5)]
        for topicFilter in filters:
            await perspective.callRemote("addRoute", topicFilter)
        assert service.center is not None
        self.assertFalse(service.center._routes.enabled)
        self.assertEqual([r.filter for r in await perspective.callRemote("listRoutes")], filters)
        await perspective.callRemote("removeRoute", "t/0")
        _, snapshot, _ = await self.join(service, "n2")
        self.assertEqual([r.filter for r in snapshot["routes"]], filters[1:])
        self.assertTrue(service.center._nodes.enabled)


def _routeKey(entry: RouteEntry) -> str:
    return keyOf("routes", entry.filter)


def test_listenerHoldsPushesUntilTheSnapshotIsHandedOver() -> None:
    """Pushes that arrive before registered(snapshot) runs are newer than the snapshot:
    the listener keeps them back and hands them over after it, in order."""
    from robustmq.placement.client import PlacementListener
    from robustmq.placement.records import RouteEntry

    calls: list[tuple[str, Any]] = []

    class Handler:
        def registered(self, snapshot: Any) -> None:
            calls.append(("registered", snapshot))

        def routeChanged(self, entry: Any) -> None:
            calls.append(("routeChanged", entry.nodeIds))

    listener = PlacementListener(Handler())
    listener.hold()
    listener.remote_routeChanged(RouteEntry("a/#", ("n1",)))
    listener.remote_routeChanged(RouteEntry("a/#", ("n1", "n2")))
    assert calls == []
    listener.handler.registered("snapshot")
    listener.release()
    listener.remote_routeChanged(RouteEntry("a/#", ("n2",)))
    assert calls == [
        ("registered", "snapshot"),
        ("routeChanged", ("n1",)),
        ("routeChanged", ("n1", "n2")),
        ("routeChanged", ("n2",)),
    ]
