"""The node's worker processes: started, watched, restarted, stopped.

L{WorkerSupervisor} starts one process per worker once the node's placement
center is up, relays their log lines into the node's log (tagged C{[w<i>]}),
restarts a worker whose process ends while the node runs (after declaring
it dead at the placement center, so that its persistent sessions are
adopted at once instead of after C{heartbeat_timeout}), and on stop asks
every worker to stop (SIGTERM) and waits for them, with a bound after which
the stragglers are killed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from robustmq import logs
from robustmq.config import Settings
from robustmq.workers._context import WorkerContext, workerNodeId
from robustmq.workers._http import WorkerHTTP, WorkerUnavailable
from robustmq.workers._proc import cpuSeconds, rssBytes
from robustmq.workers._sockets import SharedSockets

#: Seconds the workers have to stop before they are killed (systemd's TimeoutStopSec is 30).
STOP_TIMEOUT = 25.0
#: Seconds a new worker has to answer its readiness check before it is reported as slow.
READY_TIMEOUT = 120.0
#: A worker that ran at least this long before it ended is restarted at once.
STABLE_AFTER = 30.0
#: First and longest wait before restarting a worker that keeps ending soon after its start.
RESTART_DELAY = (0.5, 30.0)
#: Seconds between CPU and memory samples of the workers.
SAMPLE_INTERVAL = 5.0
#: The environment variable that chooses the workers' link (see L{WorkerSupervisor.linkKind}).
LINK_ENV = "RMQ_WORKER_LINK"
#: Longest line relayed from a worker; longer output is cut into lines of this length.
MAX_LINE = 64 * 1024


class WorkerProcess(ProcessProtocol):
    """One run of one worker's process: its output relayed, its end reported."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.tag = f"w{index}"
        self.pid: int | None = None
        self.startedAt = time.time()
        self.ready = False
        self.exited = False
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial: dict[int, bytes] = {}
        #: (monotonic time, CPU seconds) of the previous sample, and the share since
        self._sample: tuple[float, float] | None = None
        self.cpuPercent: float | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._partial.get(childFD, b"") + data
        lines = buffered.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[childFD] = rest
        for line in lines:
            logs.relay(line.decode("utf-8", "replace").rstrip("\r"), self.tag)

    def processEnded(self, reason: Any) -> None:
        for rest in self._partial.values():
            if rest:
                logs.relay(rest.decode("utf-8", "replace"), self.tag)
        self._partial.clear()
        self.exited = True
        self.supervisor._ended(self, reason)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        """Send signal C{name} (C{"TERM"}, C{"KILL"}, C{"HUP"}) unless it has exited."""
        if self.exited or self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def sample(self) -> None:
        """Update L{cpuPercent}: this worker's share of one core since the last sample."""
        if self.pid is None or self.exited:
            return
        cpu = cpuSeconds(self.pid)
        if cpu is None:
            return
        now = time.monotonic()
        if self._sample is not None and now > self._sample[0]:
            self.cpuPercent = round(100.0 * (cpu - self._sample[1]) / (now - self._sample[0]), 1)
        self._sample = (now, cpu)

    def describe(self) -> dict[str, Any]:
        """This worker's process as the admin API lists it."""
        pid = None if self.exited else self.pid
        return {
            "worker": self.index,
            "node": workerNodeId(self.supervisor.settings, self.index),
            "pid": pid,
            "state": "exited" if self.exited else ("ready" if self.ready else "starting"),
            "started_at": self.startedAt,
            "uptime_seconds": round(time.time() - self.startedAt, 3),
            "restarts": self.supervisor.restarts[self.index],
            "cpu_percent": self.cpuPercent,
            "cpu_seconds": None if pid is None else cpuSeconds(pid),
            "rss_bytes": None if pid is None else rssBytes(pid),
        }


class WorkerSupervisor(Service):
    """Runs the node's worker processes (see the module docstring).

    @param placement: the node's L{robustmq.placement.server.PlacementService}
        (the workers register with it; the supervisor declares a worker that
        exited dead there, and quiets it while the node stops).
    @param configPath: the config file the node was started with (the workers
        read the same one, and the same environment).
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        count: int,
        runDir: str,
        secret: str,
        sockets: SharedSockets,
        placement: Any,
        reactor: Any,
        configPath: str | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.runDir = runDir
        self.secret = secret
        self.sockets = sockets
        self.placement = placement
        self.reactor = reactor
        self.configPath = os.path.abspath(configPath) if configPath else None
        self.processes: list[WorkerProcess | None] = [None] * count
        self.restarts = [0] * count
        #: ends in a row of each worker soon after its start (the restart back-off grows)
        self.quickEnds = [0] * count
        self.http = WorkerHTTP(reactor, runDir)
        self.stopping = False
        #: RMQ_WORKER_LINK=tcp links the workers over loopback TCP instead of Unix
        #: sockets: a knob for measuring what the local link saves (bench/workers.py)
        self.linkKind = "tcp" if os.environ.get(LINK_ENV) == "tcp" else "unix"
        self._allReadyOnce = False
        self._sampler: LoopingCall | None = None
        self._previousHup: Any = None
        self.setName("workers")

    # Lifecycle

    def startService(self) -> None:
        super().startService()
        self.placement.ready.addCallback(self._spawnAll)
        self._sampler = LoopingCall(self._sampleAll)
        self._sampler.clock = self.reactor
        self._sampler.start(SAMPLE_INTERVAL, now=False)
        try:
            self._previousHup = signal.signal(signal.SIGHUP, self._hangup)
        except ValueError:
            pass  # not the main thread (tests): no SIGHUP forwarding

    def _spawnAll(self, _: Any = None) -> None:
        if self.running and not self.stopping:
            for index in range(self.count):
                self.spawn(index)

    def _hangup(self, signum: int, frame: Any) -> None:
        """SIGHUP reloads certificates and the ACL file: every worker does it for itself."""
        self.reactor.callFromThread(self.signalAll, "HUP")

    def signalAll(self, name: str) -> None:
        """Send signal C{name} to every running worker."""
        self.log.info("sending SIG{name} to every worker", name=name)
        for process in self.processes:
            if process is not None:
                process.signal(name)

    def spawn(self, index: int) -> WorkerProcess:
        """Start worker C{index}'s process with its listening sockets."""
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        fds: dict[int, int] = {}
        for slot, (listener, fd) in enumerate(sorted(self.sockets.fdsFor(index).items())):
            childFDs[3 + slot] = fd
            fds[listener] = 3 + slot
        context = WorkerContext(index, self.count, self.runDir, self.secret, fds, self.linkKind)
        path = os.path.join(self.runDir, f"w{index}.json")
        context.save(path)
        args = [sys.executable, "-m", "robustmq.workers.child", "--worker", path]
        if self.configPath:
            args += ["--config", self.configPath]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = WorkerProcess(self, index)
        self.processes[index] = process
        self.reactor.spawnProcess(process, sys.executable, args, env=env, childFDs=childFDs)
        self.log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)
        defer.ensureDeferred(self._awaitReady(process)).addErrback(
            lambda f: self.log.failure("checking worker {index}", f, index=index)
        )
        return process

    async def _awaitReady(self, process: WorkerProcess) -> None:
        deadline = self.reactor.seconds() + READY_TIMEOUT
        while not process.exited and not self.stopping:
            try:
                answer = await self.http.request(process.index, "GET", "/health/ready", timeout=2.0)
                if answer.code == 200:
                    break
            except WorkerUnavailable:
                pass
            if self.reactor.seconds() > deadline:
                self.log.warn(
                    "worker {index} (pid {pid}) is not ready after {t:g} s",
                    index=process.index,
                    pid=process.pid,
                    t=READY_TIMEOUT,
                )
                deadline = float("inf")
            await deferLater(self.reactor, 0.2, lambda: None)
        else:
            return
        process.ready = True
        self.log.info("worker {index} ready (pid {pid})", index=process.index, pid=process.pid)
        if not self._allReadyOnce and all(p is not None and p.ready for p in self.processes):
            self._allReadyOnce = True
            self.log.info(
                "node {node} ready: {n} worker processes",
                node=self.settings.node.id,
                n=self.count,
            )

    def _ended(self, process: WorkerProcess, reason: Any) -> None:
        value = reason.value
        how = (
            "exited"
            if isinstance(value, ProcessDone)
            else f"ended (exit code {value.exitCode}, signal {value.signal})"
        )
        if self.stopping or not self.running:
            if getattr(value, "signal", None) == signal.SIGTERM or isinstance(value, ProcessDone):
                how = "stopped"
            self.log.info(
                "worker {index} (pid {pid}) {how}", index=process.index, pid=process.pid, how=how
            )
            return
        if self.processes[process.index] is not process:
            return
        self.restarts[process.index] += 1
        ran = time.time() - process.startedAt
        delay = 0.0
        if ran < STABLE_AFTER:
            first, longest = RESTART_DELAY
            delay = min(longest, first * 2 ** min(10, self.quickEnds[process.index]))
            self.quickEnds[process.index] += 1
        else:
            self.quickEnds[process.index] = 0
        self.log.warn(
            "worker {index} (pid {pid}) {how} after {ran:.1f} s; restarting it in {delay:g} s "
            "(restart {n} of this worker)",
            index=process.index,
            pid=process.pid,
            how=how,
            ran=ran,
            delay=delay,
            n=self.restarts[process.index],
        )
        defer.ensureDeferred(self._restart(process, delay)).addErrback(
            lambda f: self.log.failure("restarting worker {index}", f, index=process.index)
        )

    async def _restart(self, process: WorkerProcess, delay: float) -> None:
        center = getattr(self.placement, "center", None)
        if center is not None:
            # Its sessions move to its replica now (a SIGKILL leaves no time to leave).
            try:
                await center.declareDead(
                    workerNodeId(self.settings, process.index), "its process ended"
                )
            except Exception as e:
                self.log.warn(
                    "declaring worker {index} dead failed: {e}", index=process.index, e=str(e)
                )
        if delay:
            await deferLater(self.reactor, delay, lambda: None)
        if self.running and not self.stopping and self.processes[process.index] is process:
            self.spawn(process.index)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        if self._previousHup is not None:
            try:
                signal.signal(signal.SIGHUP, self._previousHup)
            except ValueError:
                pass
        center = getattr(self.placement, "center", None)
        if center is not None:
            # Every worker keeps its own sessions for the next start: none adopts another's.
            center.quiesce()
        running = [p for p in self.processes if p is not None and not p.exited]
        self.log.info("stopping {n} workers", n=len(running))
        for process in running:
            process.signal("TERM")
        ended = defer.DeferredList([p.ended for p in running])
        ended.addTimeout(STOP_TIMEOUT, self.reactor)
        try:
            await ended
        except defer.TimeoutError:
            for process in running:
                if not process.exited:
                    self.log.warn(
                        "worker {index} (pid {pid}) did not stop within {t:g} s; killing it",
                        index=process.index,
                        pid=process.pid,
                        t=STOP_TIMEOUT,
                    )
                    process.signal("KILL")
            await defer.DeferredList([p.ended for p in running])
        await self.http.close()
        self.log.info("all workers stopped")

    # Status

    def _sampleAll(self) -> None:
        for process in self.processes:
            if process is not None:
                process.sample()

    def workers(self) -> list[dict[str, Any]]:
        """Every worker's process: pid, state, uptime, restarts, CPU and memory."""
        out = []
        for index, process in enumerate(self.processes):
            if process is None:
                out.append(
                    {
                        "worker": index,
                        "node": workerNodeId(self.settings, index),
                        "pid": None,
                        "state": "not started",
                        "restarts": self.restarts[index],
                    }
                )
            else:
                out.append(process.describe())
        return out

    def readyWorkers(self) -> list[int]:
        """Indices of the workers that answered their readiness check and run."""
        return [p.index for p in self.processes if p is not None and p.ready and not p.exited]


__all__ = ["WorkerProcess", "WorkerSupervisor"]
