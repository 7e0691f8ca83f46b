"""Worker processes (``[node] workers``): what the local link costs, how throughput scales
with cores, and how many idle connections a node holds.

    .venv/bin/python bench/workers.py link            # same-worker vs cross-worker, Unix vs TCP link
    .venv/bin/python bench/workers.py scale           # 16 pairs: workers = 2 vs workers = 1
    .venv/bin/python bench/workers.py conn            # 100,000 idle connections, workers = 6
    .venv/bin/python bench/workers.py link --quick    # small counts, a smoke test

Every node is a real ``robustmq`` node started with L{WorkerNode} (segment
store, log level warn, admin API on a free port) and stopped by PID.

- C{link}: a node of two workers, worker 0 pinned to the first CPU and
  worker 1 to the second (``taskset -a -p``, as C{bench/cluster.py} pins its
  two brokers; the load generator is not pinned).  The kernel picks a
  connection's worker by a hash of its addresses, so the script first finds
  local ports that land on each worker (a probe connection from each
  candidate port, asked of the admin API, closed with a reset), then runs
  C{robustmq bench} with C{--pub-source-ports}/C{--sub-source-ports}:
  publisher on worker 0 and subscriber on worker 0 (same-worker), or on
  worker 1 (cross-worker: every message crosses the link).  QoS 0 and QoS 1
  throughput 1 → 1 and latency at 1,000 msg/s, for the Unix-socket link
  and again for a node whose workers link over loopback TCP
  (C{RMQ_WORKER_LINK=tcp}: the broker cluster's path).
- C{scale}: C{robustmq bench throughput --pairs 16} (16 publishers and 16
  subscribers, pair I{i} on its own topic), QoS 0 and QoS 1, against a node
  with C{workers = 1} and one with C{workers = 2}, nothing pinned: the load
  generator shares the cores.  CPU seconds of every node process and of the
  generator are measured around each run.
- C{conn}: a node of six workers; C{robustmq bench conn} opens the idle
  connections (keepalive 60) from several generator processes spread over
  source addresses 127.0.0.1-127.0.0.x, and the resident memory of the
  worker processes (and of the node's own process) is read before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustmq.bench import _mqtt_wire as wire  # noqa: E402
from robustmq.bench._report import cpuModel  # noqa: E402
from robustmq.testing.workers import WorkerNode  # noqa: E402
from robustmq.workers import cpuSeconds  # noqa: E402

SIZE = 64
TOPIC = "bench/t"
LATENCY_RATE = 1000
#: Local ports probed for landing on a worker (below the ephemeral range).
PROBE_PORTS = range(21000, 23000)


def machine() -> str:
    return (
        f"{cpuModel()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at start"
    )


def childrenCpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(argv: list[str], timeout: float, quiet: bool = False) -> dict[str, Any]:
    """Run C{robustmq bench ARGV --json} in a subprocess; its report."""
    command = [sys.executable, "-m", "robustmq.bench", *argv, "--json"]
    if not quiet:
        print("  $ robustmq bench " + " ".join(argv), file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"bench {' '.join(argv)} failed: {done.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def startNode(workers: int, extra: str = "", env: dict[str, str] | None = None) -> WorkerNode:
    node = WorkerNode(workers=workers, extraConfig=extra, logLevel="warn", env=env)
    return node.start(timeout=120)


def nodeCpu(pids: list[int]) -> dict[int, float]:
    return {pid: cpuSeconds(pid) or 0.0 for pid in pids}


# Placing clients on workers


def portsByWorker(node: WorkerNode, perWorker: int) -> dict[int, list[int]]:
    """Local ports whose connections to the node land on each worker, C{perWorker} each."""
    found: dict[int, list[int]] = {w: [] for w in range(node.workers)}
    for port in PROBE_PORTS:
        if all(len(p) >= perWorker for p in found.values()):
            return found
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.connect(("127.0.0.1", node.port))
            clientId = f"probe-{port}"
            sock.sendall(wire.connect(clientId, 60))
            sock.settimeout(10)
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    break
                ack += chunk
            worker = node.workerOf(clientId)
            if len(found[worker]) < perWorker:
                found[worker].append(port)
        except OSError:
            continue
        finally:
            # A reset, so that no TIME_WAIT keeps the port from the bench's connection.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    raise RuntimeError(f"could not place {perWorker} ports on every worker: {found}")


def pin(pid: int, cpu: int) -> None:
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=10,
    )


# link


def linkRuns(node: WorkerNode, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Same-worker and cross-worker runs on one two-worker node."""
    ports = portsByWorker(node, 2)
    pubPort = ports[0][0]
    sinks = {"same": ports[0][1], "cross": ports[1][0]}
    pids = node.pids()
    workers = pids[1:]
    seconds = 2.0 if args.quick else args.seconds
    results: dict[str, Any] = {}
    for qos, probe in ((0, 100_000), (1, 20_000)):
        for where in ("same", "cross"):
            heads = []
            for _ in range(args.repeat):
                base = [
                    "throughput",
                    "--port",
                    str(node.port),
                    "--topic",
                    TOPIC,
                    "--qos",
                    str(qos),
                    "--size",
                    str(SIZE),
                    "--pub-source-ports",
                    str(pubPort),
                    "--sub-source-ports",
                    str(sinks[where]),
                    "--settle",
                    "0.5",
                ]
                first = bench([*base, "--count", str(probe // (10 if args.quick else 1))], 120)
                rate = first.get("msgs_per_sec") or 1.0
                count = max(10_000, int(rate * seconds))
                before = nodeCpu(workers), childrenCpu()
                report = bench(
                    [*base, "--count", str(count), "--duration", f"{3 * seconds + 10:g}"],
                    6 * seconds + 120,
                )
                after = nodeCpu(workers), childrenCpu()
                received = max(1, report.get("received") or 0)
                heads.append(
                    {
                        "msgs_per_sec": report["msgs_per_sec"],
                        "lost": report.get("lost"),
                        "w0_us": round(
                            (after[0][workers[0]] - before[0][workers[0]]) * 1e6 / received, 2
                        ),
                        "w1_us": round(
                            (after[0][workers[1]] - before[0][workers[1]]) * 1e6 / received, 2
                        ),
                        "gen_us": round((after[1] - before[1]) * 1e6 / received, 2),
                    }
                )
            results[f"qos{qos}-{where}"] = {
                k: statistics.median(h[k] for h in heads)
                if k != "lost"
                else max(h[k] or 0 for h in heads)
                for k in heads[0]
            }
    for where in ("same", "cross"):
        lat = []
        for _ in range(args.repeat):
            report = bench(
                [
                    "latency",
                    "--port",
                    str(node.port),
                    "--topic",
                    TOPIC,
                    "--size",
                    str(SIZE),
                    "--rate",
                    str(LATENCY_RATE),
                    "--count",
                    str(int(LATENCY_RATE * seconds)),
                    "--pub-source-ports",
                    str(pubPort),
                    "--sub-source-ports",
                    str(sinks[where]),
                    "--settle",
                    "0.5",
                ],
                2 * seconds + 90,
            )
            lat.append((report["p50_ms"], report["p99_ms"]))
        results[f"latency-{where}"] = {
            "p50_ms": statistics.median(x[0] for x in lat),
            "p99_ms": statistics.median(x[1] for x in lat),
        }
    return results


def runLink(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    out: dict[str, Any] = {"machine": machine(), "links": {}}
    for kind in args.links.split(","):
        env = {"RMQ_WORKER_LINK": kind}
        node = startNode(2, env=env)
        try:
            pinned = "not pinned"
            if len(cpus) >= 2 and shutil.which("taskset") and not args.no_pin:
                for worker, cpu in zip(node.pids()[1:], cpus, strict=False):
                    pin(worker, cpu)
                pinned = f"worker 0 on CPU {cpus[0]}, worker 1 on CPU {cpus[1]}"
            print(f"{kind} link ({pinned})", file=sys.stderr, flush=True)
            out["links"][kind] = {"pinning": pinned, **linkRuns(node, args, kind)}
        finally:
            node.cleanup()
    return out


def linkTable(result: dict[str, Any]) -> str:
    lines = [f"Machine: {result['machine']}", ""]
    links = result["links"]
    head = (
        "| Measurement | "
        + " | ".join(f"{k} same-worker | {k} cross-worker | {k} cross/same" for k in links)
        + " |"
    )
    lines += [head, "|---|" + "---:|" * (3 * len(links))]
    rows = [
        ("QoS 0 throughput 1→1 (msg/s)", "qos0", "msgs_per_sec"),
        ("QoS 1 throughput 1→1 (msg/s)", "qos1", "msgs_per_sec"),
        (f"Latency at {LATENCY_RATE:,} msg/s: p50 (ms)", "latency", "p50_ms"),
        (f"Latency at {LATENCY_RATE:,} msg/s: p99 (ms)", "latency", "p99_ms"),
    ]
    for label, case, key in rows:
        cells = []
        for data in links.values():
            same = data[f"{case}-same"][key]
            cross = data[f"{case}-cross"][key]
            cells += [_fmt(same), _fmt(cross), f"{cross / same:.2f}" if same else "n/a"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| Run | w0 µs/msg | w1 µs/msg | gen µs/msg | lost |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, data in links.items():
        for case in ("qos0-same", "qos0-cross", "qos1-same", "qos1-cross"):
            h = data[case]
            lines.append(
                f"| {kind} {case} | {h['w0_us']:.2f} | {h['w1_us']:.2f} | {h['gen_us']:.2f} | {h['lost']} |"
            )
    return "\n".join(lines)


# scale


def runScale(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine(), "runs": {}}
    seconds = 2.0 if args.quick else args.seconds
    for workers in (1, 2):
        node = startNode(workers)
        try:
            pids = node.pids()
            for qos, probe in ((0, 20_000), (1, 4_000)):
                heads = []
                for _ in range(args.repeat):
                    base = [
                        "throughput",
                        "--port",
                        str(node.port),
                        "--topic",
                        TOPIC,
                        "--qos",
                        str(qos),
                        "--size",
                        str(SIZE),
                        "--pairs",
                        str(args.pairs),
                    ]
                    first = bench([*base, "--count", str(probe // (10 if args.quick else 1))], 180)
                    rate = first.get("msgs_per_sec") or 1.0
                    count = max(1000, int(rate * seconds / args.pairs))
                    before = nodeCpu(pids), childrenCpu(), time.monotonic()
                    report = bench(
                        [*base, "--count", str(count), "--duration", f"{3 * seconds + 10:g}"],
                        6 * seconds + 180,
                    )
                    after = nodeCpu(pids), childrenCpu(), time.monotonic()
                    wall = max(1e-6, report.get("seconds") or (after[2] - before[2]))
                    heads.append(
                        {
                            "msgs_per_sec": report["msgs_per_sec"],
                            "lost": report.get("lost") or 0,
                            "node_busy": round(
                                sum(after[0][p] - before[0][p] for p in pids) / wall, 2
                            ),
                            "workers_busy": [
                                round((after[0][p] - before[0][p]) / wall, 2)
                                for p in (pids[1:] if workers > 1 else pids)
                            ],
                            "gen_busy": round((after[1] - before[1]) / wall, 2),
                        }
                    )
                out["runs"][f"workers{workers}-qos{qos}"] = heads
        finally:
            node.cleanup()
    return out


def scaleTable(result: dict[str, Any], pairs: int) -> str:
    lines = [f"Machine: {result['machine']}", ""]
    lines += [
        f"| {pairs} pairs | workers = 1 (msg/s) | workers = 2 (msg/s) | ratio |",
        "|---|---:|---:|---:|",
    ]
    runs = result["runs"]
    for qos in (0, 1):
        one = statistics.median(h["msgs_per_sec"] for h in runs[f"workers1-qos{qos}"])
        two = statistics.median(h["msgs_per_sec"] for h in runs[f"workers2-qos{qos}"])
        lines.append(f"| QoS {qos} | {one:,.0f} | {two:,.0f} | {two / one:.2f} |")
    lines += [
        "",
        "| Run | msg/s | node busy | per worker busy | generator busy | lost |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, heads in runs.items():
        for h in heads:
            lines.append(
                f"| {name} | {h['msgs_per_sec']:,.0f} | {h['node_busy']:.2f} | "
                f"{', '.join(f'{b:.2f}' for b in h['workers_busy'])} | {h['gen_busy']:.2f} | {h['lost']} |"
            )
    return "\n".join(lines)


# conn


def runConn(args: argparse.Namespace) -> dict[str, Any]:
    total = args.connections
    extra = f"""
[limits]
max_connections = {int(total * 1.5)}
"""
    node = WorkerNode(
        workers=args.workers,
        extraConfig=extra,
        listenerConfig=f"max_connections = {int(total * 1.5)}\nbacklog = 4096",
        logLevel="warn",
    )
    node.start(timeout=180)
    try:
        time.sleep(2)
        pids = node.pids()
        sources = [f"127.0.0.{i}" for i in range(1, args.sources + 1)]
        parentRss = _rssKb(pids[0])
        cpuBefore = nodeCpu(pids)
        # The workers' connection counts while the bench holds them open (the most seen).
        held: dict[int, int] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(2.0):
                try:
                    for row in node.workerRows():
                        count = row.get("connections") or 0
                        held[row["worker"]] = max(held.get(row["worker"], 0), count)
                except OSError:
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        report = bench(
            [
                "conn",
                "--port",
                str(node.port),
                "--connections",
                str(total),
                "--pid",
                ",".join(str(p) for p in pids[1:]),
                "--sources",
                ",".join(sources),
                "--per-process",
                str(args.per_process),
                "--window",
                str(args.window),
                "--settle",
                "3",
                "--hold",
                "6",
                "--duration",
                "600",
            ],
            900,
        )
        cpuAfter = nodeCpu(pids)
        done.set()
        watcher.join(10)
        parent = report["rss_by_process_kb"]
        return {
            "machine": machine(),
            "workers": args.workers,
            "report": report,
            "worker_connections_held": [held.get(w, 0) for w in range(args.workers)],
            "node_pid": pids[0],
            "node_process_rss_kb_before": parentRss,
            "node_process_rss_kb_after": _rssKb(pids[0]),
            "cpu_seconds": {
                "node": round(cpuAfter[pids[0]] - cpuBefore[pids[0]], 2),
                "workers": round(sum(cpuAfter[p] - cpuBefore[p] for p in pids[1:]), 2),
            },
            "by_process_kb": parent,
        }
    finally:
        node.cleanup()


def _rssKb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("link", "scale", "conn"):
        p = sub.add_parser(name)
        p.add_argument("--quick", action="store_true")
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument("--repeat", type=int, default=1)
        p.add_argument("--save", default=None, help="also write the JSON result here")
    link = sub.choices["link"]
    link.add_argument("--links", default="unix,tcp", help="link kinds to measure")
    link.add_argument("--no-pin", action="store_true")
    scale = sub.choices["scale"]
    scale.add_argument("--pairs", type=int, default=16)
    conn = sub.choices["conn"]
    conn.add_argument("--workers", type=int, default=6)
    conn.add_argument("--connections", type=int, default=100_000)
    conn.add_argument("--sources", type=int, default=5, help="source addresses 127.0.0.1..N")
    conn.add_argument("--per-process", type=int, default=5000)
    conn.add_argument("--window", type=int, default=128)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.what == "link":
        result = runLink(args)
        text = linkTable(result)
    elif args.what == "scale":
        result = runScale(args)
        text = scaleTable(result, args.pairs)
    else:
        result = runConn(args)
        text = json.dumps(result, indent=2)
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
