"""What `robustmq start` says when it cannot start: one line naming the listener, the port
and the fix (a 20-line traceback with the message twice before)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from robustmq.testing.process import freePort

ROBUSTMQ = str(Path(sys.executable).with_name("robustmq"))


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROBUSTMQ, "start", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def busyPort() -> object:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_listener_port_in_use_is_one_line(tmp_path: Path, busyPort: int) -> None:
    config = tmp_path / "robustmq.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[http]\nenabled = false\n'
        f'[[listeners]]\nprotocol = "mqtt"\ntransport = "tcp"\nbind = "127.0.0.1"\n'
        f"port = {busyPort}\n"
    )
    result = _start(config)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        f"robustmq: listener mqtt/tcp:{busyPort} cannot listen on 127.0.0.1:{busyPort}: "
        f"port {busyPort} is already in use (another broker, or `make run`, running?): "
        "stop what holds it, or change `port` of this [[listeners]] entry (mqtt over tcp)"
    ]
    assert output.count("already in use") == 1


def test_admin_port_in_use_names_the_http_section(tmp_path: Path, busyPort: int) -> None:
    config = tmp_path / "robustmq.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = {busyPort}\n'
        f'[[listeners]]\nprotocol = "mqtt"\ntransport = "tcp"\nbind = "127.0.0.1"\n'
        f"port = {freePort()}\n"
    )
    result = _start(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"robustmq: the admin API ([http]) cannot listen on 127.0.0.1:{busyPort}: port "
        f"{busyPort} is already in use (another broker, or `make run`, running?): stop what "
        "holds it, or set [http] port (or [http] enabled = false)"
    )


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [ROBUSTMQ, "start", "--config", "etc/robustmq.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        env={"ROBUSTMQ_MQTT__MAX_INFLIGHT": "abc", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "robustmq: configuration error: environment variable ROBUSTMQ_MQTT__MAX_INFLIGHT: "
        "mqtt.max_inflight: expected an integer, got 'abc'"
    )
