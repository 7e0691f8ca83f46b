"""Broker CPU per message: the cost of the hot path, robust to a busy machine.

Usage: .venv/bin/python bench/cpucost.py [--venv OTHER/.venv ...] [--rounds 3]
                                         [--qos0 500000] [--qos1 200000]

Throughput on a shared machine moves with whatever else runs; the CPU time a
broker process spends per message moves much less.  For each venv given
(default: this checkout's), the script starts a node (MQTT on a free loopback
port, memory store), runs ``robustmq bench throughput`` at QoS 0 and QoS 1
(64 B, one publisher, one subscriber), and reads the broker's user+system CPU
seconds from /proc before and after each run.  Rounds alternate between the
venvs so that both see the same machine.  Prints the median µs of broker CPU
per message per venv and test, and the ratio to the first venv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def freePort() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitListening(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def measure(venv: Path, qos: int, count: int) -> float:
    """Broker CPU µs per delivered message for one run."""
    work = Path(tempfile.mkdtemp(prefix="robustmq-cpucost-"))
    port = freePort()
    (work / "robustmq.toml").write_text(
        f'[node]\ndata_dir = "{work}/data"\n[http]\nenabled = false\n'
        f'[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1"\nport = {port}\n'
    )
    log = open(work / "node.log", "wb")  # noqa: SIM115
    node = subprocess.Popen(
        [str(venv / "bin" / "robustmq"), "start", "--config", str(work / "robustmq.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        waitListening(port)
        time.sleep(0.5)
        before = cpuSeconds(node.pid)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "robustmq.bench",
                "throughput",
                "--port",
                str(port),
                "--qos",
                str(qos),
                "--size",
                "64",
                "--count",
                str(count),
                "--duration",
                "120",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        after = cpuSeconds(node.pid)
        received = json.loads(out)["received"]
        return (after - before) * 1e6 / max(1, received)
    finally:
        node.terminate()
        node.wait(15)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", action="append", type=Path, default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qos0", type=int, default=500_000)
    parser.add_argument("--qos1", type=int, default=200_000)
    args = parser.parse_args()
    venvs = args.venv or [ROOT / ".venv"]
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for venv in venvs:
            for name, qos, count in (("QoS 0", 0, args.qos0), ("QoS 1", 1, args.qos1)):
                results.setdefault((str(venv), name), []).append(measure(venv, qos, count))
    print("| venv | test | broker CPU µs/msg (median) | vs first |")
    print("|---|---|---|---|")
    for name in ("QoS 0", "QoS 1"):
        first = statistics.median(results[(str(venvs[0]), name)])
        for venv in venvs:
            value = statistics.median(results[(str(venv), name)])
            print(f"| {venv} | {name} | {value:.2f} | {value / first:.3f} |")


if __name__ == "__main__":
    main()
