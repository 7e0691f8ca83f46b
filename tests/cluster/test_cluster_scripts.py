"""etc/cluster/start.sh and stop.sh: a 3 etcd + 3 placement + 3 broker cluster on this host,
used across nodes by mosquitto_pub/mosquitto_sub and listed by `robustmq ctl cluster status`.

The scripts use fixed ports on 127.0.0.1 (etc/cluster/README.md), all shifted
by C{RMQ_PORT_OFFSET}: this test picks an offset at which every port is free,
so it runs beside `make run` or a cluster started by hand (it failed when the
standard ports were taken).
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "etc" / "cluster"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(240)

#: Every port start.sh uses at offset 0 (etc/cluster/README.md).
PORTS = (
    *(2379, 2389, 2399, 2380, 2390, 2400),  # etcd client, peer
    *(1228, 1238, 1248, 1229, 1239, 1249),  # placement PB, broker links
    *(1883, 1884, 1885, 8083, 8084, 8085),  # MQTT, WebSocket
    *(8080, 8081, 8082, 9092, 5672),  # admin, Kafka, AMQP
)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def freeOffset() -> int:
    """An offset at which every port is free and below the ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError):
        low = 32768
    candidates = list(range(10_000, low - max(PORTS) - 1, 100))
    random.shuffle(candidates)
    for offset in candidates[:200]:
        if all(_free(port + offset) for port in PORTS):
            return offset
    pytest.skip("no port offset with all 23 cluster ports free below the ephemeral range")


def test_startShClusterServesMosquittoClientsAcrossNodes(tmp_path: Path) -> None:
    offset = freeOffset()
    env = {
        **os.environ,
        "RMQ_CLUSTER_DIR": str(tmp_path / "run"),
        "RMQ_VENV": str(BIN.parent),
        "RMQ_STOP_TIMEOUT": "15",
        "RMQ_PORT_OFFSET": str(offset),
    }
    env.pop("ROBUSTMQ_PLACEMENT__CLUSTER_SECRET", None)
    started = subprocess.run(
        [str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=200
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        topic = f"demo/{uuid.uuid4().hex[:8]}"
        # A subscriber on broker-3, a publisher on broker-1.
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(1885 + offset),
                "-t",
                f"{topic}/#",
                "-q",
                "1",
            ]
            + ["-v", "-C", "1", "-W", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # Until broker-3's route has reached broker-1 (a publish before that
            # reaches nobody; mosquitto_sub leaves after the first message).
            deadline = time.monotonic() + 30
            while sub.poll() is None and time.monotonic() < deadline:
                subprocess.run(
                    [
                        "mosquitto_pub",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(1883 + offset),
                        "-t",
                        f"{topic}/hello",
                    ]
                    + ["-m", "hi", "-q", "1"],
                    check=True,
                    timeout=10,
                )
                time.sleep(0.3)
            out, _ = sub.communicate(timeout=10)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
        assert out.strip() == f"{topic}/hello hi"
        url = f"http://127.0.0.1:{8081 + offset}"
        status = subprocess.run(
            [str(BIN / "robustmq"), "ctl", "--url", url, "cluster", "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
        for node in ("placement-1", "placement-2", "placement-3"):
            assert "placement" in rows[node] and "alive" in rows[node], status.stdout
        for node in ("broker-1", "broker-2", "broker-3"):
            assert "broker" in rows[node] and "alive" in rows[node], status.stdout
    finally:
        stopped = subprocess.run(
            [str(SCRIPTS / "stop.sh")], env=env, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not list((tmp_path / "run").glob("*.pid")), "stop.sh left processes behind"

    # A second start in the same run directory: the table start.sh ends with shows
    # this run's nodes, not a registration left from the first run (which showed
    # the first run's uptime for a placement node for a few seconds).
    time.sleep(3)  # so the first run's uptimes would stand out
    began = time.monotonic()
    again = subprocess.run(
        [str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=200
    )
    try:
        assert again.returncode == 0, again.stdout + again.stderr
        elapsed = time.monotonic() - began
        table = again.stdout.split("\nNODE", 1)[1]
        uptimes = {}
        for line in table.splitlines()[1:]:
            match = re.search(r"\b(?:(\d+)h )?(\d+)m (\d+)s\b", line)
            if line.strip() and match:
                h, m, s = (int(g or 0) for g in match.groups())
                uptimes[line.split()[0]] = h * 3600 + m * 60 + s
        assert len(uptimes) == 6, again.stdout
        assert max(uptimes.values()) <= elapsed + 1, (uptimes, elapsed, again.stdout)
    finally:
        stopped = subprocess.run(
            [str(SCRIPTS / "stop.sh")], env=env, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
