"""What the broker cluster offers protocols' node services (L{IClusterServices}).

Kafka places partitions and AMQP places queues on brokers through the
placement center, shares topic and queue definitions as cluster config
entries, and calls other brokers over the broker links; this mixin of
L{robustmq.cluster.node.ClusterNode} is the one door they go through.  It
keeps the config entries and shard records the placement center pushes,
and hands later changes to the watchers that asked for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.placement.records import NodeInfo, ShardRecord

__all__ = ["ProtocolServices"]

#: Config keys the cluster itself uses; protocols never see them.
_OWN_PREFIXES = ("meta.", "replica.", "adopted.")


class ProtocolServices:
    """The L{IClusterServices} part of the ClusterNode (mixed into it)."""

    log = Logger()

    def _initServices(self) -> None:
        #: cluster config entries (protocols' metadata) by key
        self._configValues: dict[str, str] = {}
        self._configWatchers: list[tuple[str, Callable[[str, str], None]]] = []
        #: shard records by shard name
        self._shardRecords: dict[str, ShardRecord] = {}
        self._shardWatchers: list[tuple[str, Callable[[ShardRecord], None]]] = []
        self._nodeWatchers: list[Callable[[NodeInfo], None]] = []
        #: handlers other brokers may call (serve), by name
        self._handlers: dict[str, Any] = {}

    # IClusterServices

    def brokers(self) -> list[NodeInfo]:
        nodes = self.nodes  # type: ignore[attr-defined]
        return sorted(
            (n for n in nodes.values() if n.state == "alive" and "broker" in n.roles),
            key=lambda n: n.nodeId,
        )

    def watchNodes(self, callback: Callable[[NodeInfo], None]) -> None:
        self._nodeWatchers.append(callback)

    def callPlacement(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self.placement.call(method, *args))  # type: ignore[attr-defined]

    def config(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self._configValues.items() if k.startswith(prefix) and v}

    def watchConfig(self, prefix: str, callback: Callable[[str, str], None]) -> None:
        self._configWatchers.append((prefix, callback))

    def shard(self, name: str) -> ShardRecord | None:
        return self._shardRecords.get(name)

    def watchShards(self, prefix: str, callback: Callable[[ShardRecord], None]) -> None:
        self._shardWatchers.append((prefix, callback))

    def serve(self, name: str, handler: Any) -> None:
        self._handlers[name] = handler

    def callBroker(
        self, nodeId: str, name: str, method: str, *args: Any, timeout: float = 10.0
    ) -> defer.Deferred[Any]:
        if nodeId == self.nodeId:  # type: ignore[attr-defined]
            return defer.maybeDeferred(self.callHandler, nodeId, name, method, args)
        link = self.links.get(nodeId)  # type: ignore[attr-defined]
        if link is None:
            return defer.fail(ConnectionError(f"no link to broker {nodeId}"))
        return defer.ensureDeferred(link.call("call", name, method, list(args), timeout=timeout))

    # Called by the broker links and the placement pushes

    def callHandler(self, caller: str, name: str, method: str, args: Any) -> Any:
        """Run C{remote_<method>} of handler C{name} for broker C{caller}."""
        handler = self._handlers.get(name)
        fn = getattr(handler, f"remote_{method}", None) if handler is not None else None
        if fn is None:
            raise ValueError(f"this broker serves no {name}.{method}")
        return fn(caller, *args)

    def _loadSnapshot(self, snapshot: dict[str, list[Any]]) -> None:
        """A (re-)registration's snapshot: the config entries and shards as they are now;
        watchers hear of every value that changed meanwhile."""
        for entry in snapshot.get("config", ()):
            self._configEntry(entry.key, entry.value)
        for record in snapshot.get("shards", ()):
            self._shardRecord(record)

    def _configEntry(self, key: str, value: str) -> None:
        if key.startswith(_OWN_PREFIXES) or self._configValues.get(key) == value:
            return
        self._configValues[key] = value
        for prefix, callback in list(self._configWatchers):
            if key.startswith(prefix):
                try:
                    callback(key, value)
                except Exception:
                    self.log.failure("config watcher of {prefix} failed", prefix=prefix)

    def _shardRecord(self, record: ShardRecord) -> None:
        if self._shardRecords.get(record.shard) == record:
            return
        self._shardRecords[record.shard] = record
        for prefix, callback in list(self._shardWatchers):
            if record.shard.startswith(prefix):
                try:
                    callback(record)
                except Exception:
                    self.log.failure("shard watcher of {prefix} failed", prefix=prefix)

    def _nodeInfo(self, info: NodeInfo) -> None:
        for callback in list(self._nodeWatchers):
            try:
                callback(info)
            except Exception:
                self.log.failure("node watcher failed")

    def _serviceAddresses(self) -> dict[str, str]:
        """What node services advertise in this broker's NodeInfo (clusterAddresses())."""
        out: dict[str, str] = {}
        services = getattr(self.broker, "nodeServices", {})  # type: ignore[attr-defined]
        for service in services.values():
            addresses = getattr(service, "clusterAddresses", None)
            if addresses is not None:
                out.update(addresses())
        return out
