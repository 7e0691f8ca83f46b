"""The door protocols use into the cluster (IClusterServices): config and shard pushes
reach watchers, calls reach served handlers, the cluster's own keys stay private."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyClass

from robustmq.cluster.node import ClusterNode
from robustmq.cluster.services import ProtocolServices
from robustmq.interfaces import IClusterServices
from robustmq.placement.records import ConfigEntry, NodeInfo, ShardRecord


class _Node(ProtocolServices):
    def __init__(self) -> None:
        self.nodeId = "b1"
        self.nodes = {
            "b2": NodeInfo("b2", ("broker",), {"kafka": "h:2"}),
            "b1": NodeInfo("b1", ("broker",), {"kafka": "h:1"}),
            "p1": NodeInfo("p1", ("placement",)),
            "b3": NodeInfo("b3", ("broker",), state="dead"),
        }
        self.links: dict[str, Any] = {}
        self._initServices()


class _Echo:
    def remote_echo(self, caller: str, value: Any) -> Any:
        return [caller, value]


class ClusterServicesTests(TestCase):
    def test_verified(self) -> None:
        verifyClass(IClusterServices, ClusterNode)

    def test_configAndShardPushesReachWatchers(self) -> None:
        node = _Node()
        seen: list[tuple[str, str]] = []
        shards: list[ShardRecord] = []
        node.watchConfig("kafka.topic.", lambda k, v: seen.append((k, v)))
        node.watchShards("kafka/", shards.append)
        node._loadSnapshot(
            {
                "config": [
                    ConfigEntry("kafka.topic.a", "{}"),
                    ConfigEntry("meta.users.x", "secret"),
                    ConfigEntry("kafka.topic.gone", ""),
                ],
                "shards": [ShardRecord("kafka/a/0", "b2", 3), ShardRecord("amqp/q", "b1")],
            }
        )
        self.assertEqual(seen, [("kafka.topic.a", "{}"), ("kafka.topic.gone", "")])
        self.assertEqual(node.config("kafka."), {"kafka.topic.a": "{}"})
        self.assertEqual(node.config("meta."), {}, "the cluster's own keys stay private")
        node._configEntry("kafka.topic.a", "{}")  # unchanged: no call
        node._configEntry("kafka.topic.a", "")
        self.assertEqual(seen[-1], ("kafka.topic.a", ""))
        self.assertEqual([r.shard for r in shards], ["kafka/a/0"])
        self.assertEqual(node.shard("amqp/q").leader, "b1")
        node._shardRecord(ShardRecord("kafka/a/0", "b1", 4))
        self.assertEqual((shards[-1].leader, shards[-1].epoch), ("b1", 4))

    def test_brokersAreTheLiveOnesInOrder(self) -> None:
        self.assertEqual([n.nodeId for n in _Node().brokers()], ["b1", "b2"])

    def test_callsReachServedHandlers(self) -> None:
        node = _Node()
        node.serve("echo", _Echo())
        self.assertEqual(node.callHandler("b2", "echo", "echo", ["x"]), ["b2", "x"])
        local = node.callBroker("b1", "echo", "echo", 5)
        self.assertEqual(self.successResultOf(local), ["b1", 5])
        self.assertRaises(ValueError, node.callHandler, "b2", "echo", "nothing", [])
        self.failureResultOf(node.callBroker("b9", "echo", "echo", 1), ConnectionError)
