"""The placement service over real loopback TCP: PB login, pushes, liveness, failover."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from placementhelpers import EtcdProcess, sleep, waitFor
from twisted.cred.credentials import UsernamePassword
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.spread import pb
from twisted.trial.unittest import SkipTest, TestCase

from robustmq.config import settingsFromMapping
from robustmq.placement.client import PlacementClient
from robustmq.placement.errors import (
    LoginRefusedError,
    NotLeaderError,
    PermissionDeniedError,
    isRemote,
)
from robustmq.placement.records import NodeInfo, RouteEntry, SessionRecord, ShardRecord
from robustmq.placement.server import PlacementService

SECRET = "s3cret-for-tests"


class Recorder:
    """A broker's handler that keeps every push it receives."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []

    def registered(self, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)

    def __getattr__(self, name: str) -> Any:
        if name in (
            "nodeChanged",
            "routeChanged",
            "shardChanged",
            "configChanged",
            "sessionTakenOver",
        ):
            return lambda record: self.pushes.append((name, record))
        raise AttributeError(name)

    def of(self, name: str) -> list[Any]:
        return [record for kind, record in self.pushes if kind == name]


class PlacementServiceMixin:
    """Starts placement services and clients and cleans them up."""

    heartbeatTimeout = 1.0
    heartbeatInterval = 0.2

    def placementSettings(self, **overrides: Any) -> dict[str, Any]:
        values = {
            "bind": "127.0.0.1",
            "port": 0,
            "cluster_secret": SECRET,
            "heartbeat_interval": self.heartbeatInterval,
            "heartbeat_timeout": self.heartbeatTimeout,
            "reconnect_max_delay": 0.5,
        }
        values.update(overrides)
        return values

    async def startService(self, dataDir: str | None = None, **overrides: Any) -> PlacementService:
        settings = settingsFromMapping(
            {
                "node": {"data_dir": dataDir or os.path.abspath(self.mktemp())},  # type: ignore[attr-defined]
                "placement": self.placementSettings(**overrides),
            }
        )
        service = PlacementService(settings, reactor)
        service.startService()
        await service.ready
        self.addCleanup(self._stop, service)  # type: ignore[attr-defined]
        return service

    async def _stop(self, service: PlacementService) -> None:
        if service.running:
            await service.stopService()

    async def connect(
        self, nodeId: str, servers: list[str], roles: tuple[str, ...] = ("broker",)
    ) -> tuple[PlacementClient, Recorder]:
        settings = settingsFromMapping({"placement": self.placementSettings(servers=servers)})
        recorder = Recorder()
        info = NodeInfo(nodeId, roles, {"mqtt": "127.0.0.1:1883"}, time.time())
        client = PlacementClient(settings.placement, info, recorder, reactor)
        client.startService()
        self.addCleanup(client.stopService)  # type: ignore[attr-defined]
        await client.whenRegistered()
        return client, recorder

    @staticmethod
    def address(service: PlacementService) -> str:
        return f"127.0.0.1:{service.port}"

    @staticmethod
    def silence(client: PlacementClient) -> None:
        """Stop heartbeating without disconnecting (a hung node)."""
        assert client._heartbeat is not None
        client._heartbeat.stop()
        client._beat = lambda: None  # type: ignore[method-assign]


class EmbeddedServiceTests(PlacementServiceMixin, TestCase):
    """One placement node with the embedded backend."""

    async def login(self, port: int, nodeId: bytes, secret: bytes) -> Any:
        factory = pb.PBClientFactory()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        broker = await endpoint.connect(factory)
        self.addCleanup(broker.transport.loseConnection)
        return await factory.login(UsernamePassword(nodeId, secret))

    async def test_loginNeedsTheClusterSecret(self) -> None:
        service = await self.startService()
        perspective = await self.login(service.port, b"node-1", SECRET.encode())
        self.assertIsInstance(perspective, pb.RemoteReference)
        for nodeId, secret in [(b"node-1", b"wrong"), (b"bad/node id", SECRET.encode())]:
            try:
                await self.login(service.port, nodeId, secret)
            except Exception as e:
                self.assertTrue(isRemote(e, LoginRefusedError), e)
            else:
                self.fail(f"login as {nodeId!r} with {secret!r} accepted")

    async def test_everyCallChecksTheCaller(self) -> None:
        service = await self.startService()
        perspective = await self.login(service.port, b"node-1", SECRET.encode())
        other = NodeInfo("node-2", ("broker",))
        try:
            await perspective.callRemote("register", other, None)
        except Exception as e:
            self.assertTrue(isRemote(e, PermissionDeniedError), e)
        else:
            self.fail("a node registered another")
        try:
            await perspective.callRemote("lookupSession", "c")
        except Exception as e:
            self.assertIn("not registered", str(e))
        else:
            self.fail("an unregistered node was served")

    async def test_registerAndHeartbeat(self) -> None:
        service = await self.startService()
        a, recordA = await self.connect("node-a", [self.address(service)])
        self.assertEqual([n.nodeId for n in recordA.snapshots[0]["nodes"]], ["node-a"])
        b, recordB = await self.connect("node-b", [self.address(service)])
        await waitFor(lambda: recordA.of("nodeChanged"), what="node-b announced to node-a")
        self.assertEqual(recordA.of("nodeChanged")[0].nodeId, "node-b")
        # Heartbeats keep both alive across several timeouts.
        await sleep(self.heartbeatTimeout * 3)
        nodes = await a.call("listNodes")
        self.assertEqual(
            sorted((n.nodeId, n.state) for n in nodes), [("node-a", "alive"), ("node-b", "alive")]
        )
        self.assertEqual(await a.call("heartbeat"), self.heartbeatTimeout)
        self.assertEqual(a.registrations, 1)

    async def test_silentNodeDeclaredDeadAndOthersTold(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        self.silence(a)
        dead = await waitFor(
            lambda: [
                n for n in recordB.of("nodeChanged") if n.nodeId == "node-a" and n.state == "dead"
            ],
            what="node-a declared dead",
        )
        self.assertIsInstance(dead[0], NodeInfo)
        states = {n.nodeId: n.state for n in await b.call("listNodes")}
        self.assertEqual(states, {"node-a": "dead", "node-b": "alive"})

    async def test_deadNodeThatComesBackRegistersAgain(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        heartbeat = a._heartbeat
        assert heartbeat is not None
        heartbeat.stop()
        await waitFor(
            lambda: [n for n in recordB.of("nodeChanged") if n.state == "dead"], what="death"
        )
        # It was disconnected when declared dead; the ClientService reconnects.
        await waitFor(lambda: a.registrations >= 2, what="node-a registered again")
        states = {n.nodeId: n.state for n in await b.call("listNodes")}
        self.assertEqual(states["node-a"], "alive")

    async def test_routeUpdatesPushed(self) -> None:
        service = await self.startService()
        a, recordA = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        entry = await a.call("addRoute", "sensors/+/temp")
        self.assertEqual(entry, RouteEntry("sensors/+/temp", ("node-a",)))
        await waitFor(lambda: recordB.of("routeChanged"), what="route pushed to node-b")
        self.assertEqual(recordB.of("routeChanged"), [RouteEntry("sensors/+/temp", ("node-a",))])
        await b.call("addRoute", "sensors/+/temp")
        await waitFor(lambda: recordA.of("routeChanged"), what="route pushed to node-a")
        self.assertEqual(recordA.of("routeChanged")[-1].nodeIds, ("node-a", "node-b"))
        await a.call("removeRoute", "sensors/+/temp")
        await waitFor(lambda: len(recordB.of("routeChanged")) == 2, what="removal pushed")
        self.assertEqual(recordB.of("routeChanged")[-1].nodeIds, ("node-b",))
        self.assertEqual(await a.call("listRoutes"), [RouteEntry("sensors/+/temp", ("node-b",))])
        # A late joiner gets the table in its registration snapshot.
        c, recordC = await self.connect("node-c", [self.address(service)])
        self.assertEqual(
            recordC.snapshots[0]["routes"], [RouteEntry("sensors/+/temp", ("node-b",))]
        )

    async def test_routesOfDeadNodeRemoved(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        await a.call("addRoute", "x/#")
        self.silence(a)
        await waitFor(
            lambda: [r for r in recordB.of("routeChanged") if r.nodeIds == ()], what="route removed"
        )
        self.assertEqual(await b.call("listRoutes"), [])

    async def test_sessionClaimLookupAndTakeover(self) -> None:
        service = await self.startService()
        a, recordA = await self.connect("node-a", [self.address(service)])
        b, _ = await self.connect("node-b", [self.address(service)])
        self.assertIsNone(await a.call("claimSession", "client/1", 3600))
        found = await b.call("lookupSession", "client/1")
        self.assertIsInstance(found, SessionRecord)
        self.assertEqual(
            (found.clientId, found.nodeId, found.expiryInterval), ("client/1", "node-a", 3600)
        )
        previous = await b.call("claimSession", "client/1", 60)
        self.assertEqual(previous.nodeId, "node-a")
        await waitFor(
            lambda: recordA.of("sessionTakenOver"), what="takeover pushed to the old owner"
        )
        self.assertEqual(recordA.of("sessionTakenOver")[0].nodeId, "node-b")
        try:
            await a.call("releaseSession", "client/1")
        except Exception as e:
            self.assertTrue(isRemote(e, PermissionDeniedError), e)
        else:
            self.fail("a node released another node's session")
        self.assertTrue(await b.call("releaseSession", "client/1"))
        self.assertIsNone(await a.call("lookupSession", "client/1"))

    async def test_shardLeaderMovedOffDeadNode(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        records = [await a.call("assignShard", f"shard-{i}") for i in range(4)]
        self.assertEqual(
            sorted(r.leader for r in records), ["node-a", "node-a", "node-b", "node-b"]
        )
        self.assertEqual(
            await b.call("assignShard", "shard-0"), records[0], "a live leader is kept"
        )
        onA = {r.shard for r in records if r.leader == "node-a"}
        self.silence(a)
        await waitFor(
            lambda: {r.shard for r in recordB.of("shardChanged") if r.leader == "node-b"} >= onA,
            what="shards moved to node-b",
        )
        for shard in onA:
            record = await b.call("getShard", shard)
            self.assertEqual((record.leader, record.epoch), ("node-b", 1))
        self.assertIsInstance(record, ShardRecord)

    async def test_pinnedShardKeepsItsDeadLeaderAndShardsMoveOnRequest(self) -> None:
        """A shard whose data lives only on its leader (a local store) stays with it when
        it dies; moveShard hands a shard to a named live broker with the next epoch."""
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        pinned = await a.call("assignShard", "local-0", True)
        moved = await b.call("moveShard", "local-0", "node-b")
        self.assertEqual((moved.leader, moved.epoch, moved.pinned), ("node-b", 1, True))
        back = await b.call("moveShard", "local-0", pinned.leader)
        self.assertEqual((back.leader, back.epoch), (pinned.leader, 2))
        try:
            await a.call("moveShard", "local-0", "nobody")
        except Exception as e:
            self.assertIn("not a live broker", str(e))
        else:
            self.fail("a shard moved to a broker that is not alive")
        await b.call("moveShard", "local-0", "node-a")
        self.silence(a)
        await waitFor(
            lambda: any(
                r.nodeId == "node-a" and r.state == "dead" for r in recordB.of("nodeChanged")
            ),
            what="node-a declared dead",
        )
        record = await b.call("getShard", "local-0")
        self.assertEqual((record.leader, record.pinned), ("node-a", True), "pinned: not moved")

    async def test_idBlocksAreUniqueAcrossNodes(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, _ = await self.connect("node-b", [self.address(service)])
        blocks = [
            await (a if i % 2 else b).call("allocateIds", "kafka.pid", 1000) for i in range(6)
        ]
        spans = [set(range(first, first + 1000)) for first in blocks]
        self.assertEqual(len(set().union(*spans)), 6000, "blocks overlap")
        self.assertEqual(blocks[0], 1)

    async def test_configAndGroupOffsets(self) -> None:
        service = await self.startService()
        a, _ = await self.connect("node-a", [self.address(service)])
        b, recordB = await self.connect("node-b", [self.address(service)])
        await a.call("setConfig", "mqtt.max_inflight", "64")
        await waitFor(lambda: recordB.of("configChanged"), what="config pushed")
        self.assertEqual(recordB.of("configChanged")[0].value, "64")
        self.assertEqual((await b.call("getConfig", "mqtt.max_inflight")).value, "64")
        self.assertIsNone(await b.call("getConfig", "nothing"))
        await a.call("commitOffset", "group/1", "orders-0", 42, "meta")
        offset = await b.call("fetchOffset", "group/1", "orders-0")
        self.assertEqual((offset.offset, offset.metadata), (42, "meta"))
        self.assertIsNone(await b.call("fetchOffset", "group/1", "orders-1"))

    async def test_clientReconnectsAfterServiceRestart(self) -> None:
        # Leases restart with their full TTL; make it comfortably longer than
        # a restart plus the client's reconnection back-off.
        self.heartbeatTimeout = 5.0
        dataDir = os.path.abspath(self.mktemp())
        service = await self.startService(dataDir)
        port = service.port
        a, recordA = await self.connect("node-a", [f"127.0.0.1:{port}"])
        await a.call("addRoute", "kept/#")
        await service.stopService()
        service = await self.startService(dataDir, port=port)
        # The snapshot reaches the handler a turn after the registration counts.
        await waitFor(lambda: len(recordA.snapshots) >= 2, what="re-registration after the restart")
        self.assertEqual(recordA.snapshots[-1]["routes"], [RouteEntry("kept/#", ("node-a",))])
        nodes = await a.call("listNodes")
        self.assertEqual([(n.nodeId, n.state) for n in nodes], [("node-a", "alive")])


class EtcdServiceTests(PlacementServiceMixin, TestCase):
    """Two placement nodes on one real etcd: redirect to the leader, failover."""

    heartbeatTimeout = 2.0
    heartbeatInterval = 0.3
    etcd: EtcdProcess | None = None

    @classmethod
    def setUpClass(cls) -> None:
        if shutil.which("etcd") is None:
            raise SkipTest("etcd not installed (scripts/install-system-deps.sh)")
        cls.etcd = EtcdProcess().start()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.etcd is not None:
            cls.etcd.cleanup()

    def etcdSettings(self, prefix: str) -> dict[str, Any]:
        assert self.etcd is not None
        return {"backend": "etcd", "etcd_endpoints": [self.etcd.url], "etcd_prefix": prefix}

    async def test_followerRedirectsAndLeadershipMoves(self) -> None:
        # A resigning leader hands over at once; a lease longer than the hand-over keeps
        # a loaded machine from also declaring node-a dead meanwhile (its routes would go).
        self.heartbeatTimeout = 10.0
        prefix = f"/failover-{id(self)}/"
        first = await self.startService(**self.etcdSettings(prefix))
        assert first.center is not None
        await first.center.becameLeader
        second = await self.startService(**self.etcdSettings(prefix))
        assert second.center is not None
        self.assertFalse(second.center.leading)
        self.assertEqual(second.center.leaderAddress, self.address(first))
        # A broker that only knows the follower is sent to the leader.
        a, recordA = await self.connect("node-a", [self.address(second), self.address(first)])
        self.assertEqual(a.registrations, 1)
        await a.call("addRoute", "r/#")
        # The leader stops (resigns): the follower takes over and the broker follows.
        await first.stopService()
        await waitFor(lambda: second.center.leading, what="the follower elected")  # type: ignore[union-attr]
        await waitFor(
            lambda: len(recordA.snapshots) >= 2, what="the broker registered with the new leader"
        )
        self.assertEqual(recordA.snapshots[-1]["routes"], [RouteEntry("r/#", ("node-a",))])
        self.assertEqual([n.nodeId for n in await a.call("listNodes")], ["node-a"])

    async def test_notLeaderErrorNamesTheLeader(self) -> None:
        prefix = f"/redirect-{id(self)}/"
        first = await self.startService(**self.etcdSettings(prefix))
        await first.center.becameLeader  # type: ignore[union-attr]
        second = await self.startService(**self.etcdSettings(prefix))
        factory = pb.PBClientFactory()
        broker = await TCP4ClientEndpoint(reactor, "127.0.0.1", second.port).connect(factory)
        self.addCleanup(broker.transport.loseConnection)
        perspective = await factory.login(UsernamePassword(b"node-x", SECRET.encode()))
        try:
            await perspective.callRemote("register", NodeInfo("node-x", ("broker",)), None)
        except Exception as e:
            self.assertTrue(isRemote(e, NotLeaderError), e)
            self.assertEqual(str(e), self.address(first))
        else:
            self.fail("a follower accepted a registration")
