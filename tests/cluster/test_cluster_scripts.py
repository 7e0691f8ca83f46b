"""etc/cluster/start.sh and stop.sh: a 3 etcd + 3 placement + 3 broker cluster on this host,
used across nodes by mosquitto_pub/mosquitto_sub and listed by `robustmq ctl cluster status`.

The scripts use fixed ports on 127.0.0.1 (etc/cluster/README.md); start.sh
refuses to start, and this test fails saying so, if one of them is taken.
"""

from __future__ import annotations

import os
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


def test_startShClusterServesMosquittoClientsAcrossNodes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RMQ_CLUSTER_DIR": str(tmp_path / "run"),
        "RMQ_VENV": str(BIN.parent),
        "RMQ_STOP_TIMEOUT": "15",
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
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", "1885", "-t", f"{topic}/#", "-q", "1"]
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
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-t", f"{topic}/hello"]
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
        status = subprocess.run(
            [str(BIN / "robustmq"), "ctl", "--url", "http://127.0.0.1:8081", "cluster", "status"],
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
