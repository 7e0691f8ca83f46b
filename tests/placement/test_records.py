"""Placement records: validation, stable PB names, JSON storage form; backend plugins."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.spread import jelly, pb
from zope.interface.verify import verifyObject

from robustmq.config import settingsFromMapping
from robustmq.interfaces import IPlacementBackend, IPlacementBackendPlugin
from robustmq.placement.errors import InvalidRecordError
from robustmq.placement.records import (
    ConfigEntry,
    GroupOffset,
    NodeInfo,
    RouteEntry,
    SessionRecord,
    ShardRecord,
    decodeRecord,
    encodeRecord,
)
from robustmq.registry import findPlugins


def _broker() -> pb.Broker:
    """A PB broker outside a connection, as jelly's invoker for Copyable records."""
    broker = pb.Broker()
    broker.serializingPerspective = None
    broker.unserializingPerspective = None
    return broker


SAMPLES = [
    NodeInfo("node-1", ["broker"], {"mqtt": "10.0.0.1:1883"}, 1.5, "dead"),
    SessionRecord("client/1", "node-1", 3600, 2.0),
    RouteEntry("a/+/#", ["n2", "n1", "n1"]),
    ShardRecord("orders-0", "node-1", 3),
    ConfigEntry("mqtt.max_inflight", "64"),
    GroupOffset("g", "orders-0", 42, "m"),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_roundTripOverJellyUnderStableName(record):
    broker = _broker()
    wire = jelly.jelly(record, invoker=broker)
    assert wire[0] == f"robustmq.placement.{type(record).__name__}".encode()
    assert jelly.unjelly(wire, taster=pb.globalSecurity, invoker=broker) == record


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_storageRoundTrip(record):
    assert decodeRecord(encodeRecord(record), type(record)) == record


def test_routeNodesSortedAndUnique():
    assert RouteEntry("t", ["b", "a", "b"]).nodeIds == ("a", "b")


@pytest.mark.parametrize(
    "build",
    [
        lambda: NodeInfo("bad id", ["broker"]),
        lambda: NodeInfo("n", []),
        lambda: NodeInfo("n", ["kafka"]),
        lambda: NodeInfo("n", ["broker"], state="zombie"),
        lambda: NodeInfo("n", "broker"),
        lambda: SessionRecord("", "n"),
        lambda: SessionRecord("c", "n", -1),
        lambda: RouteEntry("t", ["not a node"]),
        lambda: ShardRecord("s", "bad/leader"),
        lambda: GroupOffset("g", "s", True),
        lambda: ConfigEntry("k", 5),
    ],
)
def test_invalidFieldsRefused(build):
    with pytest.raises(InvalidRecordError):
        build()


def test_receivedRecordsAreValidatedAgain():
    broker = _broker()
    wire = jelly.jelly(NodeInfo("n", ["broker"]), invoker=broker)
    # Tamper with the state on the wire: the receiving side refuses it.
    text = repr(wire).replace("'alive'", "'zombie'").replace("b'alive'", "b'zombie'")
    tampered = eval(text)  # noqa: S307 - a literal we just printed
    assert tampered != wire
    with pytest.raises(InvalidRecordError):
        jelly.unjelly(tampered, taster=pb.globalSecurity, invoker=broker)


def test_decodeRefusesOtherTypes():
    with pytest.raises(InvalidRecordError):
        decodeRecord(encodeRecord(ConfigEntry("k", "v")), NodeInfo)
    with pytest.raises(InvalidRecordError):
        decodeRecord(b"not json", NodeInfo)


def test_backendPluginsBuildVerifiedBackends(tmp_path):
    settings = settingsFromMapping({"node": {"data_dir": str(tmp_path)}})
    plugins = findPlugins(IPlacementBackendPlugin)
    assert {"embedded", "etcd"} <= set(plugins)
    for plugin in plugins.values():
        verifyObject(IPlugin, plugin)
        verifyObject(IPlacementBackendPlugin, plugin)
        verifyObject(IPlacementBackend, plugin.build(settings, Clock()))
