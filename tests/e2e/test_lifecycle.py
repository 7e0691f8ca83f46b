"""End-to-end: starting and stopping a node process, its config errors and its CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from robustmq import __version__
from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0
BIN = Path(sys.executable).parent
ROBUSTMQ = str(BIN / "robustmq")
TWISTD = str(BIN / "twistd")


@pytest.fixture
def node() -> Iterator[BrokerProcess]:
    """A node of this test's own (it gets signalled)."""
    process = BrokerProcess()
    process.start()
    try:
        yield process
    finally:
        process.cleanup()


def test_sigterm_exits_zero_and_closes_clients(node: BrokerProcess) -> None:
    raw = RawClient(node.port, timeout=TIMEOUT)
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lifecycle-paho")
    paho.reconnect_delay_set(60, 120)  # stay down once the node is gone
    connected, disconnected = threading.Event(), threading.Event()
    paho.on_connect = lambda *a: connected.set()
    paho.on_disconnect = lambda *a: disconnected.set()
    try:
        assert raw.connect("lifecycle-raw", cleanSession=False).returnCode == 0
        raw.subscribe([("lifecycle/#", 1)])
        paho.connect("127.0.0.1", node.port)
        paho.loop_start()
        assert connected.wait(TIMEOUT)
        output = node.output
        code = node.stop(signal.SIGTERM)
        assert raw.waitClosed() == []
        assert disconnected.wait(TIMEOUT)
        assert "broker stopping: closing 2 connections" in output()
        assert "Main loop terminated." in output()
        # twistd re-raises the stopping signal after a clean shutdown (systemd counts
        # SIGTERM as a clean exit); `robustmq start` exits 0 (test_robustmqStartExitsZero).
        assert code in (0, -signal.SIGTERM), f"exit status {code} on SIGTERM"
    finally:
        paho.disconnect()
        paho.loop_stop()
        raw.close()


def _writeConfig(tmp_path: Path, extra: str, port: int) -> Path:
    """A config on loopback (so a node that wrongly starts binds nothing public)."""
    path = tmp_path / "robustmq.toml"
    path.write_text(
        f"""
[node]
data_dir = "{tmp_path / "data"}"

[[listeners]]
protocol = "mqtt"
bind = "127.0.0.1"
port = {port}

[http]
enabled = false  # the admin API's own tests cover it; 8080 may be taken

{extra}
"""
    )
    return path


BAD_CONFIGS = {
    "unknown-key": ("[mqtt]\nmax_packt_size = 1024\n", "mqtt.max_packt_size"),
    "bad-type": ('[mqtt]\nmax_packet_size = "big"\n', "mqtt.max_packet_size"),
    "out-of-range": ("[mqtt]\nmax_inflight = 0\n", "mqtt.max_inflight"),
    "bad-choice": ('[log]\nlevel = "loud"\n', "log.level"),
}

COMMANDS = {
    "robustmq-start": lambda cfg: [ROBUSTMQ, "start", "--config", str(cfg)],
    "twistd": lambda cfg: [TWISTD, "-n", "--pidfile=", "robustmq", "--config", str(cfg)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_startup_naming_the_key(tmp_path: Path, case: str, command: str) -> None:
    extra, key = BAD_CONFIGS[case]
    config = _writeConfig(tmp_path, extra, freePort())
    result = subprocess.run(
        COMMANDS[command](config),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert key in output, output
    assert "Traceback" not in output, output


def test_version() -> None:
    result = subprocess.run(
        [ROBUSTMQ, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == f"robustmq {__version__}"


def test_environment_overrides_listener_port(tmp_path: Path) -> None:
    """ROBUSTMQ_LISTENERS__0__PORT beats the file; `robustmq start` runs and stops cleanly."""
    filePort, envPort = freePort(), freePort()
    while envPort == filePort:
        envPort = freePort()
    config = _writeConfig(tmp_path, "", filePort)
    env = {**os.environ, "ROBUSTMQ_LISTENERS__0__PORT": str(envPort)}
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [ROBUSTMQ, "start", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    log.close()
    try:
        waitForPort("127.0.0.1", envPort, timeout=20)
        with RawClient(envPort, timeout=TIMEOUT) as c:
            assert c.connect("env-port").returnCode == 0
            c.ping()
        with pytest.raises(ConnectionRefusedError):
            RawClient(filePort, timeout=TIMEOUT)
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    output = (tmp_path / "node.log").read_text()
    assert f"listening for mqtt over tcp on 127.0.0.1:{envPort}" in output
    assert "Main loop terminated." in output
    assert code == 0, f"exit status {code} on SIGTERM"


def test_robustmqStartExitsZeroOnSigterm(tmp_path: Path) -> None:
    port = freePort()
    config = _writeConfig(tmp_path, "", port)
    robustmq = Path(sys.executable).with_name("robustmq")
    proc = subprocess.Popen(
        [str(robustmq), "start", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        waitForPort("127.0.0.1", port, timeout=15)
        raw = RawClient(port, timeout=TIMEOUT)
        assert raw.connect("start-exit").returnCode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert raw.waitClosed() == []
        raw.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
