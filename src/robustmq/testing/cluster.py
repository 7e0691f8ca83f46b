"""A RobustMQ cluster of real processes on loopback, for broker-cluster tests.

L{LocalCluster} starts an etcd (C{backend="etcd"}), then the placement nodes,
then the brokers, each a C{twistd -n robustmq} subprocess with a generated
config on free loopback ports::

    with LocalCluster(placements=2, brokers=3) as cluster:
        b1, b2 = cluster.brokers[:2]
        ...  # MQTT clients on b1.port / b2.port, admin API on b1.httpPort
        cluster.kill(b1)  # SIGKILL by PID
        cluster.restart(b1)

With C{backend="embedded"} the first broker is also the (only) placement
node: C{cluster.placements == [cluster.brokers[0]]}.

Heartbeats are fast (0.25 s, dead after 2 s: etcd rounds lease TTLs up to
whole seconds, at least 2) and brokers retry the placement service at least
every 0.5 s.  Set C{RMQTEST_KEEP_DIRS} to keep the working
directory (configs, logs, data) after the cluster stops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from robustmq.testing.etcd import EtcdProcess
from robustmq.testing.process import BrokerProcess, freePort

#: A piece of node configuration: TOML text, parsed tables, or a function of
#: the node returning either (called once, when the node is created).
ConfigPiece = str | Mapping[str, Any] | Callable[["ClusterNode"], str | Mapping[str, Any]]

#: Log texts the harness waits for (logged by the placement and broker code).
PLACEMENT_READY = "placement service ("
BROKER_READY = "[robustmq.core.broker.Broker#info] broker "
REGISTERED = "registered with the placement center as "
LEADER = " is the leader"
#: Log texts after which a placement node no longer leads.
NOT_LEADER = ("placement leadership moved to", "lease lost; stepping down")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ClusterNode(BrokerProcess):
    """One node of a L{LocalCluster}: a L{BrokerProcess} whose config the cluster generates.

    @ivar nodeId: C{[node] id}, also its login name at the placement center.
    @ivar roles: C{[node] roles}.
    @ivar port: the port readiness waits on: MQTT for a broker, the placement
        service's for a placement-only node.
    @ivar placementPort: the placement service's port, or None without the placement role.
    @ivar httpPort: the admin API's port, or None when it is off.
    @ivar clusterPort: the broker-to-broker port, or None without the broker role.
    @ivar log: path of the node's log (stdout and stderr, appended across restarts).
    """

    def __init__(
        self,
        nodeId: str,
        roles: tuple[str, ...],
        workdir: Path,
        placement: dict[str, Any],
        port: int,
        placementPort: int | None = None,
        httpPort: int | None = None,
        clusterPort: int | None = None,
        extra: Iterable[ConfigPiece] = (),
    ) -> None:
        super().__init__(port=port, workdir=workdir)
        self.name = f"node {nodeId}"
        self.nodeId = nodeId
        self.roles = roles
        self.placementPort = placementPort
        self.httpPort = httpPort
        self.clusterPort = clusterPort
        #: The cluster-wide C{[placement]} keys, shared by every node (the cluster fills in C{servers}).
        self.placementSettings = placement
        self.extraTables: list[Mapping[str, Any]] = [_tables(piece, self) for piece in extra]

    @property
    def placementAddress(self) -> str | None:
        """C{127.0.0.1:<placementPort>}, as it appears in C{servers} and in leader log lines."""
        return None if self.placementPort is None else f"127.0.0.1:{self.placementPort}"

    @property
    def httpURL(self) -> str | None:
        """Base URL of the admin API (C{http://127.0.0.1:<httpPort>}), or None when it is off."""
        return None if self.httpPort is None else f"http://127.0.0.1:{self.httpPort}"

    def tables(self) -> dict[str, Any]:
        """The node's whole config as TOML tables: generated ones merged with the extras."""
        placement = dict(self.placementSettings)
        if "placement" in self.roles:
            placement.update(bind="127.0.0.1", port=self.placementPort)
        else:
            for key in ("backend", "etcd_endpoints", "etcd_prefix"):
                placement.pop(key, None)
        tables: dict[str, Any] = {
            "node": {"id": self.nodeId, "roles": list(self.roles), "data_dir": self.dataDir},
            "log": {"level": "debug"},
            "placement": placement,
            "cluster": {"enabled": True},
        }
        if "broker" in self.roles:
            tables["storage"] = {"backend": "segment"}
            tables["cluster"].update(bind="127.0.0.1", port=self.clusterPort)
            tables["listeners"] = [
                {"protocol": "mqtt", "transport": "tcp", "bind": "127.0.0.1", "port": self.port}
            ]
        else:
            tables["listeners"] = []
        if self.httpPort is None:
            tables["http"] = {"enabled": False}
        else:
            tables["http"] = {"enabled": True, "bind": "127.0.0.1", "port": self.httpPort}
        for extra in self.extraTables:
            tables = _merge(tables, extra)
        return tables

    def configText(self) -> str:
        return dumpsTOML(self.tables())

    def readyLines(self) -> list[str]:
        lines = []
        if "placement" in self.roles:
            lines.append(PLACEMENT_READY)
        if "broker" in self.roles:
            lines += [BROKER_READY, REGISTERED + self.nodeId]
        return lines

    def isLeader(self) -> bool:
        """Whether this running placement node's log, since its latest start, says it leads."""
        if not self.alive() or self.placementAddress is None:
            return False
        out = self.output()[getattr(self, "_logStart", 0) :]
        won = out.rfind(f"placement node {self.placementAddress}{LEADER}")
        lost = max(out.rfind(text) for text in NOT_LEADER)
        return won >= 0 and won > lost


class PlacementNode(ClusterNode):
    """A placement-only node (C{roles = ["placement"]}); C{port} is its placement service port."""


class BrokerNode(ClusterNode):
    """A broker node; C{port} is its MQTT/TCP port, C{httpPort} its admin API.

    In an embedded-backend cluster the first broker also has the placement role.
    """


class LocalCluster:
    """Placement nodes and brokers (and an etcd) as real processes on loopback.

    Use as a context manager, or call L{start} and L{cleanup}.

    @param placements: placement-only nodes (C{backend="etcd"}; with
        C{"embedded"} it must be 0 or 1: the first broker is the placement node).
    @param brokers: broker nodes (ids C{b1}, C{b2}, ...; placement nodes are C{p1}, ...).
    @param backend: C{"etcd"} (a fresh etcd, or C{etcd} if given) or C{"embedded"}.
    @param secret: C{[placement] cluster_secret}.
    @param extraConfig: merged into every node's config (TOML text or tables,
        or a function of the node returning either); tables merge key by key,
        arrays of tables (C{[[listeners]]}) are appended to.
    @param brokerConfig: like C{extraConfig}, for broker nodes only.
    @param placementConfig: like C{extraConfig}, for placement-only nodes only.
    @param etcd: an already running etcd to use (not stopped by L{cleanup});
        the cluster still gets its own C{etcd_prefix}.

    @ivar etcd: the L{EtcdProcess}, or None with the embedded backend.
    @ivar etcdPrefix: this cluster's C{[placement] etcd_prefix} (C{/rmq-<uuid>/}).
    @ivar placements: the placement nodes, in start order.
    @ivar brokers: the broker nodes, in start order.
    @ivar workdir: one subdirectory per node (named by node id, with its
        C{robustmq.toml}, C{node.log} and C{data/}) and C{etcd/} for the
        etcd the cluster started.
    """

    def __init__(
        self,
        placements: int = 2,
        brokers: int = 3,
        backend: str = "etcd",
        secret: str = "local-cluster-secret",
        extraConfig: ConfigPiece | None = None,
        brokerConfig: ConfigPiece | None = None,
        placementConfig: ConfigPiece | None = None,
        heartbeatInterval: float = 0.25,
        heartbeatTimeout: float = 2.0,
        timeout: float = 30.0,
        etcd: EtcdProcess | None = None,
    ) -> None:
        if backend not in ("etcd", "embedded"):
            raise ValueError(f"backend must be 'etcd' or 'embedded', not {backend!r}")
        if backend == "embedded" and (placements > 1 or brokers < 1):
            raise ValueError("the embedded backend has one placement node: the first broker")
        if backend == "etcd" and placements < 1:
            raise ValueError("an etcd-backed cluster needs at least one placement node")
        self.backend = backend
        self.secret = secret
        self.timeout = timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="robustmq-cluster-"))
        self._ownEtcd = etcd is None and backend == "etcd"
        self.etcd = etcd if backend == "etcd" else None
        self.etcdPrefix = f"/rmq-{uuid.uuid4().hex}/"
        self._ports: set[int] = set()
        self._placementSettings: dict[str, Any] = {
            "backend": backend,
            "cluster_secret": secret,
            "heartbeat_interval": heartbeatInterval,
            "heartbeat_timeout": heartbeatTimeout,
            # Brokers find a new placement leader quickly (the default back-off grows to 10 s).
            "reconnect_max_delay": 0.5,
            "etcd_prefix": self.etcdPrefix,
        }
        common = [extraConfig] if extraConfig is not None else []
        self.placements: list[ClusterNode] = []
        self.brokers: list[ClusterNode] = []
        if backend == "etcd":
            for i in range(1, placements + 1):
                port = self._freePort()
                self.placements.append(
                    PlacementNode(
                        f"p{i}",
                        ("placement",),
                        self.workdir / f"p{i}",
                        self._placementSettings,
                        port=port,
                        placementPort=port,
                        extra=[*common, *([placementConfig] if placementConfig else [])],
                    )
                )
        for i in range(1, brokers + 1):
            embeddedLeader = backend == "embedded" and i == 1
            self.brokers.append(
                BrokerNode(
                    f"b{i}",
                    ("placement", "broker") if embeddedLeader else ("broker",),
                    self.workdir / f"b{i}",
                    self._placementSettings,
                    port=self._freePort(),
                    placementPort=self._freePort() if embeddedLeader else None,
                    httpPort=self._freePort(),
                    clusterPort=self._freePort(),
                    extra=[*common, *([brokerConfig] if brokerConfig else [])],
                )
            )
            if embeddedLeader:
                self.placements.append(self.brokers[0])
        self._placementSettings["servers"] = [
            node.placementAddress for node in self.placements if node.placementAddress
        ]

    def _freePort(self) -> int:
        """A free loopback port no other node of this cluster was given."""
        for _ in range(100):
            port = freePort()
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no unused free port found in 100 tries")

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node once: placement-only nodes, then brokers."""
        return [n for n in self.placements if n not in self.brokers] + self.brokers

    def node(self, nodeId: str) -> ClusterNode:
        """The node with id C{nodeId}."""
        for n in self.nodes:
            if n.nodeId == nodeId:
                return n
        raise KeyError(nodeId)

    @property
    def logs(self) -> dict[str, Path]:
        """Log path of every node by node id (and C{"etcd"} when the cluster started one)."""
        paths = {n.nodeId: n.log for n in self.nodes}
        if self.etcd is not None:
            paths["etcd"] = self.etcd.logPath
        return paths

    # Life cycle

    def start(self) -> LocalCluster:
        """Start etcd, the placement nodes, then the brokers; each tier waits until ready.

        On failure everything started is stopped and the error (with the
        failing node's log) raised.
        """
        try:
            if self.backend == "etcd":
                if self.etcd is None:
                    self.etcd = EtcdProcess(str(self.workdir / "etcd"))
                    self.etcd.start()
                assert self.etcd is not None
                self._placementSettings["etcd_endpoints"] = [self.etcd.url]
            placementOnly = [n for n in self.placements if n not in self.brokers]
            if placementOnly:
                self._startAll(placementOnly)
            if self.backend == "embedded":
                self._startAll(self.brokers[:1])
                self._startAll(self.brokers[1:])
            else:
                self._startAll(self.brokers)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _startAll(self, nodes: list[ClusterNode]) -> None:
        for n in nodes:
            n.spawn()
        deadline = time.monotonic() + self.timeout
        for n in nodes:
            try:
                n.waitReady(max(1.0, deadline - time.monotonic()))
            except (TimeoutError, RuntimeError) as e:
                raise RuntimeError(
                    f"{n.name} not ready (waiting for port {n.port} and log lines "
                    f"{n.readyLines()}): {e}\n--- {n.log} (tail) ---\n{n.output()[-3000:]}"
                ) from e

    def stop(self, node: ClusterNode, timeout: float = 15.0) -> int | None:
        """SIGTERM C{node} (graceful shutdown) and wait; returns its exit code."""
        return node.stop(signal.SIGTERM, timeout)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL C{node} by PID and reap it (a crash)."""
        node.kill()

    def restart(self, node: ClusterNode, timeout: float | None = None) -> ClusterNode:
        """Stop C{node} if it runs, start it again on the same ports and data, wait until ready."""
        node.stop()
        node.start(self.timeout if timeout is None else timeout)
        return node

    def leaders(self) -> list[ClusterNode]:
        """The running placement nodes whose logs say they lead."""
        return [n for n in self.placements if n.isLeader()]

    def waitForLeader(
        self, timeout: float = 15.0, exclude: Iterable[ClusterNode] = ()
    ) -> ClusterNode:
        """Wait until exactly one running placement node (not in C{exclude}) leads; return it."""
        excluded = list(exclude)
        deadline = time.monotonic() + timeout
        while True:
            leading = [n for n in self.leaders() if n not in excluded]
            if len(leading) == 1:
                return leading[0]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no single placement leader after {timeout}s "
                    f"(leading: {[n.nodeId for n in leading]}; logs: {self.logs})"
                )
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop brokers, placement nodes and etcd; delete the workdir unless C{RMQTEST_KEEP_DIRS}."""
        brokers = list(self.brokers)
        placementOnly = [n for n in self.placements if n not in brokers]
        for tier in (brokers, placementOnly):
            running = [n for n in tier if n.process is not None]
            if running:
                with ThreadPoolExecutor(len(running)) as pool:
                    list(pool.map(lambda n: n.stop(), running))
        if self.etcd is not None and self._ownEtcd:
            self.etcd.cleanup()
        if os.environ.get("RMQTEST_KEEP_DIRS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


# Config pieces and TOML output


def _tables(piece: ConfigPiece, node: ClusterNode) -> Mapping[str, Any]:
    if callable(piece):
        piece = piece(node)
    if isinstance(piece, str):
        return tomllib.loads(piece)
    return piece


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """C{base} with C{extra} merged in: tables key by key, arrays of tables appended."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(old, value)
        elif _isTableArray(old) and _isTableArray(value) and old and value:
            merged[key] = [*old, *value]
        else:
            merged[key] = value
    return merged


def _isTableArray(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are a subset of TOML basic strings'.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumpsTOML(tables: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text for C{tables} (the subset configs use: scalars, arrays, tables, arrays of tables)."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in tables.items():
        if isinstance(value, Mapping) or (_isTableArray(value) and value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        name = f"{prefix}{_key(key)}"
        if isinstance(value, Mapping):
            lines += ["", f"[{name}]", dumpsTOML(value, name + ".").rstrip("\n")]
        else:
            for item in value:
                lines += ["", f"[[{name}]]", dumpsTOML(item, name + ".").rstrip("\n")]
    return "\n".join(lines).strip("\n") + "\n"
