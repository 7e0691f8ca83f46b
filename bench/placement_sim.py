"""
The placement center under 1,000 simulated broker nodes and many session records.

Starts a placement service (embedded backend, in a temporary data directory)
in a subprocess, then from this process logs in C{--nodes} simulated
brokers over PB on loopback, C{--register-window} at a time (as the brokers
of a cluster start together; 1 registers them one after the other, at most
C{--register-seconds}), each heartbeating every C{--interval} seconds from
the moment it registered.  It measures heartbeat round trips while the nodes
register and while idle for C{--idle-seconds}, then claims session records
(C{claimSession}, one client id each, C{--window} calls outstanding, spread
over the nodes) until C{--sessions} records exist or C{--session-seconds}
have passed, measuring heartbeats meanwhile.  Prints a markdown report:
heartbeat latency percentiles per phase, claim rate, the service's resident
memory (VmRSS) and the size of its SQLite file.  C{--profile FILE} writes a
cProfile of the placement service (its reactor thread).

    .venv/bin/python bench/placement_sim.py [--nodes 1000] [--sessions 1000000]
        [--session-seconds 100] [--idle-seconds 15] [--register-window 50]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

SECRET = "bench-secret"


def serve(port: int, dataDir: str, timeout: float, profile: str = "") -> None:
    """The subprocess: one placement node until killed (SIGTERM stops it cleanly)."""
    from twisted.internet import reactor

    from robustmq.config import settingsFromMapping
    from robustmq.placement.server import PlacementService

    settings = settingsFromMapping(
        {
            "node": {"data_dir": dataDir},
            "placement": {
                "port": port,
                "cluster_secret": SECRET,
                "heartbeat_timeout": timeout,
                "max_pending_pushes": 1_000_000,
            },
        }
    )
    service = PlacementService(settings, reactor)
    service.ready.addCallback(lambda _: print("READY", flush=True))
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        reactor.addSystemEventTrigger("after", "shutdown", profiler.dump_stats, profile)
        profiler.enable()
    reactor.run()


def rss(pid: int) -> int:
    """Resident memory of C{pid} in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "n/a"
    s = sorted(samples)

    def at(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return (
        f"p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms, max {s[-1] * 1000:.2f} ms ({len(s)} beats)"
    )


async def simulate(args: argparse.Namespace, port: int, pid: int, dbPath: str) -> list[str]:
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, DeferredSemaphore, ensureDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.task import LoopingCall, deferLater
    from twisted.spread import pb

    from robustmq.placement.client import PlacementListener
    from robustmq.placement.records import NodeInfo

    report = []
    rssStart = rss(pid)
    perspectives: list[Any] = []
    #: (when sent, round trip) of every answered heartbeat: each phase
    #: reports the beats sent during it, wherever they were answered.
    samples: list[tuple[float, float]] = []

    def sentBetween(start: float, end: float) -> list[float]:
        return [rtt for sent, rtt in samples if start <= sent < end]

    failures = [0]

    def beat(p: Any) -> None:
        t0 = time.monotonic()
        try:
            d = p.callRemote("heartbeat")
        except pb.DeadReferenceError:
            failures[0] += 1
            return
        d.addCallbacks(
            lambda _: samples.append((t0, time.monotonic() - t0)),
            lambda f: failures.__setitem__(0, failures[0] + 1),
        )

    loops: list[Any] = []

    async def join(i: int) -> None:
        factory = pb.PBClientFactory()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        p = await factory.login(UsernamePassword(f"sim-{i}".encode(), SECRET.encode()))
        await p.callRemote(
            "register",
            NodeInfo(f"sim-{i}", ("broker",), {"mqtt": "127.0.0.1:1883"}),
            PlacementListener(None),
        )
        perspectives.append(p)
        # Heartbeat from the moment a node is registered, at a random phase.
        loop = LoopingCall(beat, p)
        reactor.callLater(random.random() * args.interval, loop.start, args.interval)
        loops.append(loop)

    started = time.monotonic()
    # Nodes start together, as brokers of a cluster do, at most
    # --register-window registering at a time (1: one after the other).
    limit = DeferredSemaphore(args.register_window)
    joined = DeferredList(
        [limit.run(lambda i=i: ensureDeferred(join(i))) for i in range(args.nodes)],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    await joined.addTimeout(args.register_seconds, reactor)
    report.append(
        f"- {args.nodes} nodes logged in and registered in {time.monotonic() - started:.1f} s "
        f"({args.register_window} at a time)"
    )
    registered = time.monotonic()
    await deferLater(reactor, args.idle_seconds, lambda: None)
    report.append(
        "- heartbeat round trip while nodes register: "
        + percentiles(sentBetween(started, registered))
    )
    report.append(
        "- heartbeat round trip, idle: "
        + percentiles(sentBetween(registered, registered + args.idle_seconds))
    )
    rssIdle = rss(pid)

    claimed = [0]
    deadline = time.monotonic() + args.session_seconds
    t0 = time.monotonic()

    async def worker(w: int) -> None:
        n = w
        while n < args.sessions and time.monotonic() < deadline:
            await perspectives[n % len(perspectives)].callRemote(
                "claimSession", f"client-{n}", 3600
            )
            claimed[0] += 1
            n += args.window

    await DeferredList(
        [ensureDeferred(worker(w)) for w in range(args.window)],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    elapsed = time.monotonic() - t0
    loaded = sentBetween(t0, t0 + elapsed)
    for loop in loops:
        if loop.running:
            loop.stop()
    report.append(
        f"- session records claimed: {claimed[0]:,} in {elapsed:.1f} s "
        f"({claimed[0] / elapsed:,.0f}/s, {args.window} outstanding)"
        + (
            ""
            if claimed[0] >= args.sessions
            else f" — stopped by the {args.session_seconds:.0f} s bound"
        )
    )
    report.append(f"- heartbeat round trip during the session load: {percentiles(loaded)}")
    report.append(f"- heartbeat failures: {failures[0]}")
    size = sum(
        os.path.getsize(dbPath + suffix)
        for suffix in ("", "-wal")
        if os.path.exists(dbPath + suffix)
    )
    report.append(
        f"- placement service memory (VmRSS): {rssStart / 1024:.0f} MiB at start, "
        f"{rssIdle / 1024:.0f} MiB with {args.nodes} nodes, {rss(pid) / 1024:.0f} MiB after "
        f"{claimed[0]:,} sessions; SQLite file + WAL {size / 1024 / 1024:.0f} MiB"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--session-seconds", type=float, default=100.0)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument(
        "--register-seconds", type=float, default=300.0, help="bound of the registration phase"
    )
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=500, help="claims outstanding")
    parser.add_argument(
        "--register-window", type=int, default=50, help="nodes registering at a time"
    )
    parser.add_argument(
        "--profile", default="", help="write a cProfile of the placement service to this file"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.data_dir, args.interval * 10, args.profile)
        return

    from twisted.internet import defer, task

    from robustmq.testing.process import freePort

    workdir = tempfile.mkdtemp(prefix="robustmq-placement-sim-")
    port = freePort()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--port",
            str(port),
            "--data-dir",
            workdir,
            "--interval",
            str(args.interval),
            "--profile",
            os.path.abspath(args.profile) if args.profile else "",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "READY" not in line:
            raise SystemExit(f"placement service did not start: {line!r}")

        def run(reactor: Any) -> defer.Deferred[None]:
            async def go() -> None:
                report = await simulate(
                    args, port, server.pid, os.path.join(workdir, "placement", "placement.sqlite3")
                )
                print(
                    f"placement_sim: {args.nodes} nodes, heartbeat every {args.interval} s, embedded backend"
                )
                print("\n".join(report))

            return defer.ensureDeferred(go())

        task.react(run)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
