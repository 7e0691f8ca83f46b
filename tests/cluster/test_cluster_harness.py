"""The LocalCluster harness: generated configs validate, and placement nodes fail over."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from robustmq.config import loadSettings
from robustmq.testing.cluster import (
    BrokerNode,
    ClusterNode,
    LocalCluster,
    PlacementNode,
    dumpsTOML,
)

#: The longest the harness test waits for a leader to be elected or to move.
LEADER_WAIT = 15.0


def settingsOf(node: ClusterNode) -> object:
    node.writeConfig()
    return loadSettings(str(node.configPath), environ={})


def test_generatedConfigsValidate() -> None:
    """Every node's generated config passes config.py's checks and says what the harness promises."""
    cluster = LocalCluster(
        placements=2,
        brokers=2,
        extraConfig={"mqtt": {"max_inflight": 7}},
        brokerConfig='[cluster]\nreplication = false\n[[listeners]]\nprotocol = "kafka"\nport = 0\n',
    )
    try:
        cluster._placementSettings["etcd_endpoints"] = ["http://127.0.0.1:1"]
        p1, p2 = cluster.placements
        b1, b2 = cluster.brokers
        assert isinstance(p1, PlacementNode) and isinstance(b1, BrokerNode)
        assert [n.nodeId for n in cluster.nodes] == ["p1", "p2", "b1", "b2"]
        ports = [p1.port, p2.port] + [
            p for b in (b1, b2) for p in (b.port, b.httpPort, b.clusterPort)
        ]
        assert len(set(ports)) == len(ports)

        s = settingsOf(p1)
        assert s.node.id == "p1" and s.node.roles == ("placement",)
        assert s.listeners == ()
        assert s.http.enabled is False
        assert s.cluster.enabled is True
        assert s.placement.backend == "etcd"
        assert s.placement.port == p1.port
        assert s.placement.servers == (f"127.0.0.1:{p1.port}", f"127.0.0.1:{p2.port}")
        assert s.placement.etcd_prefix == cluster.etcdPrefix
        assert s.placement.etcd_endpoints == ("http://127.0.0.1:1",)
        assert 2 >= s.placement.heartbeat_timeout > s.placement.heartbeat_interval
        assert s.mqtt.max_inflight == 7

        s = settingsOf(b2)
        assert s.node.id == "b2" and s.node.roles == ("broker",)
        assert s.storage.backend == "segment"
        assert (s.cluster.enabled, s.cluster.port, s.cluster.replication) == (
            True,
            b2.clusterPort,
            False,
        )
        assert [(x.protocol, x.port) for x in s.listeners] == [("mqtt", b2.port), ("kafka", 0)]
        assert (s.http.enabled, s.http.port) == (True, b2.httpPort)
        assert s.placement.servers == (p1.placementAddress, p2.placementAddress)
        assert s.placement.cluster_secret == cluster.secret
        assert s.placement.reconnect_max_delay <= 1
        assert s.mqtt.max_inflight == 7
    finally:
        cluster.cleanup()


def test_embeddedConfigs() -> None:
    """With the embedded backend the first broker is the placement node the others point at."""
    cluster = LocalCluster(placements=1, brokers=2, backend="embedded")
    try:
        b1, b2 = cluster.brokers
        assert cluster.placements == [b1] and cluster.etcd is None
        s1, s2 = settingsOf(b1), settingsOf(b2)
        assert s1.node.roles == ("placement", "broker")
        assert s1.placement.backend == "embedded" and s1.placement.port == b1.placementPort
        assert s2.node.roles == ("broker",)
        assert s2.placement.servers == (f"127.0.0.1:{b1.placementPort}",)
    finally:
        cluster.cleanup()
    with pytest.raises(ValueError):
        LocalCluster(placements=2, backend="embedded")


def test_dumpsTOML() -> None:
    import tomllib

    data = {
        "top": [],
        "a": {"s": 'q"\\\n\u00e9', "n": 1, "f": 0.25, "b": True, "l": ["x", 2], "sub": {"k": 1}},
        "arr": [{"x": 1}, {"x": 2, "t": {"y": 3}}],
    }
    assert tomllib.loads(dumpsTOML(data)) == data


@pytest.mark.timeout(60)
def test_placementLeaderFailover() -> None:
    """Two placement-only nodes on etcd: exactly one leads; SIGKILL it and the other takes over."""
    if shutil.which("etcd") is None:
        pytest.fail(
            "etcd is required for the cluster tests and is not on PATH "
            "(Debian/Ubuntu: apt-get install etcd-server; see scripts/install-system-deps.sh)"
        )
    with LocalCluster(placements=2, brokers=0, backend="etcd") as cluster:
        assert cluster.etcd is not None and cluster.etcd.process is not None
        assert all(n.alive() for n in cluster.placements)
        leader = cluster.waitForLeader(LEADER_WAIT)
        assert cluster.leaders() == [leader]
        [follower] = [n for n in cluster.placements if n is not leader]
        assert follower.alive()

        cluster.kill(leader)
        assert not leader.alive()
        assert cluster.waitForLeader(LEADER_WAIT) is follower
        assert Path(cluster.logs[leader.nodeId]).exists()
    if os.environ.get("RMQTEST_KEEP_DIRS") is None:
        assert not cluster.workdir.exists()
