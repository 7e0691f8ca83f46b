"""One node, several broker processes: C{[node] workers} (docs/workers.md).

With C{workers = 1} (the default) a node is one process, exactly as
L{robustmq.service.makeService} builds it.  With more, the process started
by C{robustmq start} / C{twistd robustmq} becomes the node's supervisor
(L{makeNodeService}):

- it runs a private placement center (embedded backend, under
  C{<data_dir>/placement}) on a Unix socket;
- it binds every listener's sockets (L{SharedSockets}) and starts one
  worker process per worker (L{WorkerSupervisor}), each a broker of the
  node's private cluster around that placement center, linked to the other
  workers over Unix sockets, accepting on the sockets the node bound;
- it serves the node's one admin API, C{/metrics} and dashboard on
  C{[http] port}, answering from the workers' own admin APIs (on Unix
  sockets) and its knowledge of their processes;
- it relays the workers' logs into its own, restarts a worker whose process
  ends, and stops them all on SIGTERM.

The workers of a node are one broker because the broker cluster's
machinery makes them one: routing between brokers, session hand-over,
replication of persistent sessions to one other worker and adoption of a
dead worker's sessions, retained messages and users/ACL/bans shared through
the placement center.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer

from robustmq.config import Settings
from robustmq.workers._context import (
    HOME_WORKER,
    WorkerContext,
    placementAddress,
    resolvedWorkers,
    runDirectory,
    servedBy,
    workerNodeId,
    workerSettings,
)
from robustmq.workers._files import FileLimit, raiseFileLimit
from robustmq.workers._gc import tuneGarbageCollector
from robustmq.workers._parent import ParentWatch
from robustmq.workers._proc import cpuSeconds, rssBytes
from robustmq.workers._sockets import SharedSockets
from robustmq.workers._supervisor import WorkerSupervisor
from robustmq.workers._sys import NodeSysTopics


class _StopInTurn(MultiService):
    """Stops its services one after the other, last first, each once the one after it has
    stopped: the workers leave the placement center before it stops, and the sockets
    close after the workers."""

    def stopService(self) -> defer.Deferred[None]:
        self.running = False
        return defer.ensureDeferred(self._stopInTurn())

    async def _stopInTurn(self) -> None:
        for service in reversed(list(self)):
            await defer.maybeDeferred(service.stopService)


def makeNodeService(settings: Settings, reactor: Any, configPath: str | None = None) -> IService:
    """The node's supervisor process: placement center, sockets, workers, admin API."""
    from robustmq.placement.server import PlacementService

    count = resolvedWorkers(settings)
    runDir = runDirectory(settings)
    secret = secrets.token_hex(32)
    top = _StopInTurn()
    placementSettings = dataclasses.replace(
        settings,
        placement=dataclasses.replace(
            settings.placement,
            backend="embedded",
            cluster_secret=secret,
            tls_cert="",
            tls_key="",
            tls_ca="",
        ),
    )
    placement = PlacementService(placementSettings, reactor, address=placementAddress(runDir))
    placement.setName("placement")
    placement.setServiceParent(top)
    sockets = SharedSockets(settings, count)
    sockets.setServiceParent(top)
    supervisor = WorkerSupervisor(
        settings, count, runDir, secret, sockets, placement, reactor, configPath
    )
    supervisor.setServiceParent(top)
    if settings.http.enabled:
        from robustmq.admin import NodeAdminService

        NodeAdminService(settings, supervisor, sockets, reactor).setServiceParent(top)
    return top


__all__ = [
    "HOME_WORKER",
    "FileLimit",
    "NodeSysTopics",
    "ParentWatch",
    "SharedSockets",
    "WorkerContext",
    "WorkerSupervisor",
    "cpuSeconds",
    "makeNodeService",
    "raiseFileLimit",
    "resolvedWorkers",
    "rssBytes",
    "servedBy",
    "tuneGarbageCollector",
    "workerNodeId",
    "workerSettings",
]
