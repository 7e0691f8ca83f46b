"""What a worker process is told by its node, and the settings it runs with.

The node (the parent process) writes one L{WorkerContext} per worker as a
JSON file readable by its user only and starts the worker with
C{--worker FILE}.  The worker reads the node's own config file (and
environment) like the parent did, then L{workerSettings} turns those
settings into a broker of the node's private cluster: its own node id, data
directory and share of the limits; the placement center and the other
workers over Unix sockets in the run directory; the listening sockets the
node bound, adopted by file descriptor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from robustmq.addresses import UNIX
from robustmq.config import ListenerSettings, Settings

#: The worker that serves the listeners only one worker may serve (see L{servedBy}).
HOME_WORKER = 0

#: Longest Unix socket path Linux accepts (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107

#: A worker's admin API answers its node's aggregating one; lists may be long.
_INTERNAL_PAGE_SIZE = 1_000_000


def servedBy(listener: ListenerSettings) -> int | None:
    """Which worker accepts on C{listener}: None for every worker, else its index.

    The one place that decides it.  MQTT listeners (tcp, tls, ws, wss, quic)
    are shared by every worker: an MQTT session is handed over between
    workers like between brokers of a cluster.  Kafka partitions, consumer
    groups and AMQP queues are still node-local in a broker cluster
    (docs/cluster.md, "Limits"), so every other protocol is served by
    L{HOME_WORKER} alone until they can be owned by one broker and reached
    from the others.
    """
    return None if listener.protocol == "mqtt" else HOME_WORKER


def resolvedWorkers(settings: Settings) -> int:
    """How many worker processes C{[node] workers} asks for (0: one per usable core)."""
    wanted = settings.node.workers
    if wanted:
        return wanted
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runDirectory(settings: Settings) -> str:
    """Where the node keeps its workers' Unix sockets and context files.

    C{<node.data_dir>/run}, or a private temporary directory when that path
    is too long for a Unix socket address.
    """
    path = os.path.abspath(os.path.join(settings.node.data_dir, "run"))
    if len(os.path.join(path, "placement.sock")) > _MAX_SOCKET_PATH - 8:
        return tempfile.mkdtemp(prefix="robustmq-run-")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def workerNodeId(settings: Settings, index: int) -> str:
    """Worker C{index}'s node id in the node's private cluster: C{<node id>.w<index>}."""
    return f"{settings.node.id}.w{index}"


@dataclass(frozen=True)
class WorkerContext:
    """One worker's part in its node.

    @ivar index: this worker's number, 0 to C{count} - 1.
    @ivar count: how many workers the node runs.
    @ivar runDir: the node's run directory (Unix sockets).
    @ivar secret: the node's private cluster secret (generated at each start).
    @ivar fds: listener index (in the node's config) → the listening socket's
        file descriptor in this worker.
    """

    index: int
    count: int
    runDir: str
    secret: str
    fds: dict[int, int] = field(default_factory=dict)
    #: how workers link to each other: "unix" (the default) or "tcp" (loopback; only
    #: to measure the difference, see bench/workers.py)
    linkKind: str = "unix"

    @property
    def placement(self) -> str:
        """The node's placement center."""
        return placementAddress(self.runDir)

    def link(self, index: int | None = None) -> str:
        """Worker C{index}'s (default: this one's) broker link address; empty for a
        loopback TCP link, whose port is known once bound."""
        if self.linkKind == "tcp":
            return ""
        return f"{UNIX}{self.runDir}/w{self.index if index is None else index}.link"

    def httpPath(self, index: int | None = None) -> str:
        """Worker C{index}'s (default: this one's) admin API socket."""
        return httpPath(self.runDir, self.index if index is None else index)

    @property
    def home(self) -> bool:
        """Whether this worker serves the listeners only one worker serves."""
        return self.index == HOME_WORKER

    def save(self, path: str) -> None:
        """Write this context to C{path}, readable by this user only."""
        data = dataclasses.asdict(self)
        data["fds"] = {str(k): v for k, v in self.fds.items()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path: str) -> WorkerContext:
        """Read a context written by L{save}."""
        with open(path) as f:
            data: dict[str, Any] = json.load(f)
        data["fds"] = {int(k): int(v) for k, v in data.get("fds", {}).items()}
        return cls(**data)


def placementAddress(runDir: str) -> str:
    """The node's placement center in C{runDir}."""
    return f"{UNIX}{runDir}/placement.sock"


def httpPath(runDir: str, index: int) -> str:
    """Worker C{index}'s admin API socket in C{runDir}."""
    return f"{runDir}/w{index}.http"


#: A worker admits its share of a node-wide connection limit plus this much: the kernel
#: spreads connections by a hash of their addresses, close to evenly but not exactly
#: (100,000 connections over 6 workers: a standard deviation of about 120 per worker).
SHARE_HEADROOM = 1.05


def _share(value: int, count: int) -> int:
    if count == 1:
        return value
    return max(1, math.ceil(value / count * SHARE_HEADROOM))


def workerSettings(settings: Settings, context: WorkerContext) -> Settings:
    """The node's C{settings} as worker C{context.index} runs them.

    - node id C{<id>.w<index>}, role broker; worker 0 keeps the node's data
      directory (so a node going from one process to several keeps its
      data there), worker I{i} uses C{<data_dir>/worker-<i>};
    - the listeners it serves (L{servedBy}), adopted from the node's sockets;
      per-listener and node-wide connection limits and the connection rate
      divided among the workers;
    - a member of the node's private cluster: placement center and broker
      links over Unix sockets, the node's cluster settings otherwise;
    - its admin API on a Unix socket for the node's; C{$SYS} published by
      the home worker for the whole node; logs on standard output, which the
      node relays.
    """
    count = context.count
    index = context.index
    node = settings.node
    dataDir = node.data_dir if index == 0 else os.path.join(node.data_dir, f"worker-{index}")
    storage = settings.storage
    if index != 0:
        storage = dataclasses.replace(storage, data_dir=os.path.join(dataDir, "storage"))
    listeners = tuple(
        dataclasses.replace(
            listener,
            max_connections=_share(listener.max_connections, count)
            if servedBy(listener) is None
            else listener.max_connections,
        )
        for i, listener in enumerate(settings.listeners)
        if i in context.fds
    )
    limits = settings.limits
    limits = dataclasses.replace(
        limits,
        max_connections=_share(limits.max_connections, count),
        connection_rate=limits.connection_rate / count,
        connection_burst=_share(limits.connection_burst, count),
    )
    return dataclasses.replace(
        settings,
        node=dataclasses.replace(
            node, id=workerNodeId(settings, index), roles=("broker",), data_dir=dataDir, workers=1
        ),
        storage=storage,
        log=dataclasses.replace(settings.log, file="-"),
        placement=dataclasses.replace(
            settings.placement,
            backend="embedded",
            servers=(context.placement,),
            cluster_secret=context.secret,
            tls_cert="",
            tls_key="",
            tls_ca="",
        ),
        cluster=dataclasses.replace(
            settings.cluster, enabled=True, bind="127.0.0.1", port=0, advertise=context.link()
        ),
        http=dataclasses.replace(
            settings.http, enabled=True, auth="none", max_page_size=_INTERNAL_PAGE_SIZE
        ),
        mqtt=dataclasses.replace(
            settings.mqtt, sys_interval=settings.mqtt.sys_interval if context.home else 0.0
        ),
        limits=limits,
        listeners=listeners,
        mappings=settings.mappings if context.home else (),
    )


__all__ = [
    "HOME_WORKER",
    "WorkerContext",
    "httpPath",
    "placementAddress",
    "resolvedWorkers",
    "runDirectory",
    "servedBy",
    "workerNodeId",
    "workerSettings",
]
