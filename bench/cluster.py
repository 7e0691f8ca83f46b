"""Broker-cluster forwarding speed: the same MQTT loads on one broker and across two.

    .venv/bin/python bench/cluster.py             # full run: about 12 s per measurement
    .venv/bin/python bench/cluster.py --quick     # small counts, a smoke test
    .venv/bin/python bench/cluster.py --json      # one JSON object on stdout

Starts a two-broker cluster of real ``twistd`` processes on loopback with
L{LocalCluster} (embedded placement center in b1, plus b2; log level info),
pins b1 and b2 each to its own core with ``taskset -a -p`` when this process
may use two or more (the load generator is not pinned: on a 2-core machine it
shares both cores with the brokers), then runs ``robustmq bench`` (64-byte
payloads, topic ``bench/t``) twice per measurement:

- same-node: publisher and subscribers on b1 (the baseline; no route matches
  on b2, nothing crosses the broker link);
- cross-node: publisher on b1, subscribers on b2 (``--sub-port``): every
  message is forwarded over the Perspective Broker link, in batches.

Measurements: QoS 0 and QoS 1 throughput 1 → 1, QoS 0 fan-out 1 → 50
(messages received per second), latency p50/p99 at 1,000 msg/s.  Each
throughput run is preceded by a short probe run (a warm-up, and the rate
that sizes the measured run to about C{--seconds}); subscribers subscribe
C{--settle} seconds before publishing starts, so that b2's new route has
reached b1.  Broker CPU is read from ``/proc/PID/stat`` around each measured
run and reported per message received; generator CPU from C{getrusage} of
the bench child processes.

Everything started here is stopped by PID (the cluster's nodes by
L{LocalCluster.cleanup}, bench runs by their subprocess handle, with a
timeout).  C{--py-spy BIN} additionally samples both brokers during the
cross-node runs into C{--profile-dir} (this perturbs the numbers: profile in
a separate run from the one you publish).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustmq.bench._report import cpuModel  # noqa: E402
from robustmq.testing.cluster import ClusterNode, LocalCluster  # noqa: E402

SIZE = 64
TOPIC = "bench/t"
FANOUT = 50
LATENCY_RATE = 1000
SETTLE = 0.5  # seconds for b2's route to reach b1 (the push takes milliseconds)


@dataclass(frozen=True)
class Case:
    """One measurement, run once same-node and once cross-node."""

    name: str
    label: str
    mode: str  # "throughput" or "latency"
    qos: int
    subscribers: int = 1
    probeCount: int = 0  # messages per publisher in the sizing probe


CASES = [
    Case("qos0", "QoS 0 throughput 1→1 (msg/s)", "throughput", 0, probeCount=100_000),
    Case("qos1", "QoS 1 throughput 1→1 (msg/s)", "throughput", 1, probeCount=20_000),
    Case(
        "fanout",
        f"QoS 0 fan-out 1→{FANOUT} (msg/s received)",
        "throughput",
        0,
        subscribers=FANOUT,
        probeCount=10_000,
    ),
    Case("latency", f"Latency at {LATENCY_RATE:,} msg/s, QoS 0", "latency", 0),
]


@dataclass
class Outcome:
    """A measured run: the bench report plus CPU per message of each broker and the generator."""

    report: dict[str, Any]
    command: list[str]
    cpu: dict[str, float] = field(default_factory=dict)  # b1, b2, gen: CPU seconds
    dropped: dict[str, int | None] = field(default_factory=dict)  # b1, b2: messages_dropped


def cpuSeconds(pid: int | None) -> float:
    """User + system CPU seconds of process C{pid} (all its threads) so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def childrenCpu() -> float:
    """CPU seconds of every waited-for descendant (the bench runs and their workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def droppedCount(node: ClusterNode) -> int | None:
    """The broker's C{messages_dropped} counter from its admin API (None if unreadable)."""
    if node.httpURL is None:
        return None
    try:
        with urllib.request.urlopen(node.httpURL + "/api/v1/status", timeout=5) as answer:
            return int(json.load(answer)["stats"]["messages_dropped"])
    except (OSError, ValueError, KeyError):
        return None


def pin(node: ClusterNode, cpu: int) -> str:
    """Pin every thread of C{node}'s process to C{cpu} with taskset; returns what was done."""
    pid = node.pid
    assert pid is not None
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=10,
    )
    return f"{node.nodeId} (pid {pid}) on CPU {cpu}"


class Runner:
    """Runs C{robustmq bench} against the cluster, one measured run at a time."""

    def __init__(self, cluster: LocalCluster, seconds: float, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.seconds = seconds
        self.args = args
        self.python = str(Path(sys.executable))

    def bench(self, argv: list[str], timeout: float) -> tuple[dict[str, Any], list[str]]:
        """Run one bench subprocess (killed by its handle on timeout); its JSON report."""
        command = [self.python, "-m", "robustmq.bench", *argv, "--json"]
        if not self.args.json:
            print("  $ robustmq bench " + " ".join(argv), file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"bench {' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout), argv

    def ports(self, cross: bool) -> list[str]:
        b1, b2 = self.cluster.brokers
        sub = b2 if cross else b1
        return ["--port", str(b1.port), "--sub-port", str(sub.port), "--settle", str(SETTLE)]

    def loadArgs(self, mode: str, case: Case, cross: bool) -> list[str]:
        """What every run of C{robustmq bench <mode>} here starts with."""
        qos, size = str(case.qos), str(SIZE)
        return [mode, *self.ports(cross), "--topic", TOPIC, "--qos", qos, "--size", size]

    def throughputArgs(self, case: Case, cross: bool, count: int, duration: float) -> list[str]:
        return [
            *self.loadArgs("throughput", case, cross),
            "--subscribers",
            str(case.subscribers),
            "--count",
            str(count),
            "--duration",
            f"{duration:g}",
        ]

    def measure(self, case: Case, cross: bool) -> Outcome:
        """Probe (throughput only), then the measured run, with CPU accounting around it."""
        if case.mode == "throughput":
            probe, _ = self.bench(self.throughputArgs(case, cross, case.probeCount, 30), 120)
            rate = probe.get("msgs_per_sec") or 0.0
            if not rate:
                raise RuntimeError(f"{case.name}: the probe received nothing: {probe}")
            # count is per publisher; every subscriber receives each message
            count = max(case.probeCount, int(rate * self.seconds / case.subscribers))
            argv = self.throughputArgs(case, cross, count, 3 * self.seconds + 10)
            timeout = 3 * self.seconds + 90
        else:
            count = int(LATENCY_RATE * self.seconds)
            argv = [
                *self.loadArgs("latency", case, cross),
                "--rate",
                str(LATENCY_RATE),
                "--count",
                str(count),
                "--duration",
                f"{2 * self.seconds + 10:g}",
            ]
            timeout = 2 * self.seconds + 90
        b1, b2 = self.cluster.brokers
        spies = self.startProfilers(case) if cross and self.args.py_spy else []
        drops = [droppedCount(b1), droppedCount(b2)]
        before = (cpuSeconds(b1.pid), cpuSeconds(b2.pid), childrenCpu())
        try:
            report, argv = self.bench(argv, timeout)
        finally:
            self.stopProfilers(spies)
        after = (cpuSeconds(b1.pid), cpuSeconds(b2.pid), childrenCpu())
        cpu = {
            k: round(a - b, 3) for k, a, b in zip(("b1", "b2", "gen"), after, before, strict=True)
        }
        dropped: dict[str, int | None] = {}
        for node, old in zip((b1, b2), drops, strict=True):
            new = droppedCount(node)
            dropped[node.nodeId] = None if new is None or old is None else new - old
        return Outcome(report, argv, cpu, dropped)

    def startProfilers(self, case: Case) -> list[subprocess.Popen[bytes]]:
        """py-spy on each broker for the duration of one run (sampling at 250 Hz)."""
        outDir = Path(self.args.profile_dir)
        outDir.mkdir(parents=True, exist_ok=True)
        spies = []
        for node in self.cluster.brokers:
            out = outDir / f"{case.name}-cross-{node.nodeId}.txt"
            spies.append(
                subprocess.Popen(
                    [self.args.py_spy, "record", "--pid", str(node.pid), "--rate", "250"]
                    + ["--format", "raw", "--nonblocking", "--output", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return spies

    def stopProfilers(self, spies: list[subprocess.Popen[bytes]]) -> None:
        """SIGINT each py-spy by its handle (it writes its output then exits)."""
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)


def headline(case: Case, outcome: Outcome) -> dict[str, float]:
    """The numbers the table shows for one run."""
    r = outcome.report
    if case.mode == "latency":
        return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
    received = max(1, r.get("received") or 0)
    seconds = r.get("seconds") or 0.0
    return {
        "msgs_per_sec": r["msgs_per_sec"],
        "b1_us_per_msg": round(outcome.cpu["b1"] * 1e6 / received, 2),
        "b2_us_per_msg": round(outcome.cpu["b2"] * 1e6 / received, 2),
        "gen_us_per_msg": round(outcome.cpu["gen"] * 1e6 / received, 2),
        "b1_busy": round(outcome.cpu["b1"] / seconds, 2) if seconds else 0.0,
        "b2_busy": round(outcome.cpu["b2"] / seconds, 2) if seconds else 0.0,
    }


def median(values: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise median of repeated runs' headline numbers."""
    return {k: round(statistics.median(v[k] for v in values), 4) for k in values[0]}


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def ratio(cross: float | None, same: float | None) -> str:
    return f"{cross / same:.2f}" if cross is not None and same else "n/a"


def machine() -> str:
    return (
        f"{cpuModel()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )


def table(results: dict[str, dict[str, dict[str, float]]], quick: bool, notes: list[str]) -> str:
    """The markdown table: same-node, cross-node and their ratio per row, then CPU per message."""
    rows: list[tuple[str, str, str]] = []
    for case in CASES:
        if case.mode == "latency":
            rows.append((f"{case.label}: p50 (ms)", case.name, "p50_ms"))
            rows.append((f"{case.label}: p99 (ms)", case.name, "p99_ms"))
        else:
            rows.append((case.label, case.name, "msgs_per_sec"))
    out = [
        "| Measurement | same-node (b1→b1) | cross-node (b1→b2) | cross/same |",
        "|---|---:|---:|---:|",
    ]
    for label, name, key in rows:
        same = results.get(name, {}).get("same", {}).get(key)
        cross = results.get(name, {}).get("cross", {}).get(key)
        out.append(f"| {label} | {fmt(same)} | {fmt(cross)} | {ratio(cross, same)} |")
    out += [
        "",
        "CPU per message received (µs; b1, b2 = broker processes, gen = load generator), "
        "and broker CPU busy (CPU s per s):",
        "",
        "| Run | b1 µs | b2 µs | gen µs | b1 busy | b2 busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in CASES:
        if case.mode != "throughput":
            continue
        for where in ("same", "cross"):
            h = results.get(case.name, {}).get(where)
            if not h:
                continue
            out.append(
                f"| {case.name} {where}-node | {h['b1_us_per_msg']:.2f} | {h['b2_us_per_msg']:.2f}"
                f" | {h['gen_us_per_msg']:.2f} | {h['b1_busy']:.2f} | {h['b2_busy']:.2f} |"
            )
    if quick:
        out.insert(0, "(quick mode: small counts, not for publishing)\n")
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def runAll(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    seconds = 2.0 if args.quick else args.seconds
    runner = Runner(cluster, seconds, args)
    results: dict[str, dict[str, dict[str, float]]] = {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    notes: list[str] = []
    for case in CASES:
        for where in ("same", "cross"):
            heads = []
            for _ in range(args.repeat):
                if not args.json:
                    print(f"{case.name} {where}-node:", file=sys.stderr, flush=True)
                try:
                    outcome = runner.measure(case, where == "cross")
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    notes.append(f"{case.name} {where}-node: {e}")
                    continue
                r = outcome.report
                raw.setdefault(case.name, {}).setdefault(where, []).append(
                    {
                        "command": outcome.command,
                        "cpu_seconds": outcome.cpu,
                        "messages_dropped": outcome.dropped,
                        "report": r,
                    }
                )
                heads.append(headline(case, outcome))
                if r.get("lost"):
                    expected = r.get("expected", r.get("sent"))
                    acked = f", {r['acked']:,} acknowledged to the publisher" if case.qos else ""
                    drops = ", ".join(f"{n} {d:,}" for n, d in outcome.dropped.items() if d)
                    notes.append(
                        f"{case.name} {where}-node: {r['lost']:,} of {expected:,} messages lost"
                        f"{acked}; brokers' messages_dropped: {drops or 'none'}"
                    )
                stopped = [s for s in r.get("publish_stopped", []) if s != "count"]
                if stopped:
                    notes.append(f"{case.name} {where}-node: publishing stopped by {stopped}")
            if heads:
                results.setdefault(case.name, {})[where] = median(heads)
    return {"results": results, "runs": raw, "notes": notes, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 2 s per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="target length of each measured run"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per measurement (the median is shown)"
    )
    parser.add_argument("--save", default=None, help="also write the JSON summary to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the brokers")
    parser.add_argument("--py-spy", default=None, help="py-spy binary: profile cross-node runs")
    parser.add_argument(
        "--profile-dir",
        default=str(Path(tempfile.gettempdir()) / "robustmq-cluster-profile"),
        help="where --py-spy writes (raw collapsed stacks, one file per run and broker)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1:
        parser.error("--seconds must be positive and --repeat at least 1")

    # A SIGTERM ends the run through the finally blocks: the cluster is stopped by PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = sorted(os.sched_getaffinity(0))
    header = machine()
    cluster = LocalCluster(
        placements=0, brokers=2, backend="embedded", brokerConfig={"log": {"level": "info"}}
    )
    cluster.start()
    try:
        pinned: list[str] = []
        if args.no_pin:
            pinning = "brokers not pinned"
        elif len(cpus) >= 2 and shutil.which("taskset"):
            pinned = [pin(node, cpu) for node, cpu in zip(cluster.brokers, cpus, strict=False)]
            pinning = "pinned: " + ", ".join(pinned) + "; load generator not pinned"
            if len(cpus) == 2:
                pinning += " (it shares both cores with the brokers)"
        else:
            pinning = f"brokers not pinned ({len(cpus)} usable CPU(s) or no taskset)"
        if not args.json:
            print(f"cluster up: {pinning}", file=sys.stderr, flush=True)
        outcome = runAll(cluster, args)
    finally:
        cluster.cleanup()
    summary = {
        "machine": header,
        "pinning": pinning,
        "quick": args.quick,
        "payload": SIZE,
        "settle": SETTLE,
        **outcome,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Machine: {header}")
        print(f"Brokers: {pinning}")
        print()
        print(table(outcome["results"], args.quick, outcome["notes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
