"""A protocol plugin from outside the package (examples/lineproto) with its own config section,
node service and default port, loaded into a real node and sharing the MQTT topic space."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import robustmq.plugins
from robustmq.config import ConfigError, describeDefaults, settingsFromMapping
from robustmq.testing.mosquitto import MosquittoSub
from robustmq.testing.process import BrokerProcess, freePort, waitForPort

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lineproto"
TIMEOUT = 10.0


@pytest.fixture
def pluginOnPath(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin importable in this process, as an installed distribution would be."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setattr(
        robustmq.plugins,
        "__path__",
        [*robustmq.plugins.__path__, str(EXAMPLE / "robustmq" / "plugins")],
    )


def test_pluginSectionValidatedAndDefaultPortHonoured(pluginOnPath: None) -> None:
    settings = settingsFromMapping(
        {"listeners": [{"protocol": "line"}], "line": {"greeting": "hi"}}
    )
    assert settings.listeners[0].port == 7878  # IProtocolPlugin.defaultPort
    assert settings.section("line").greeting == "hi"
    assert settings.section("line").max_line_length == 4096
    assert "line" in describeDefaults()
    with pytest.raises(ConfigError, match=r"line\.nope: unknown key"):
        settingsFromMapping({"line": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"line\.max_line_length: .* below the minimum 16"):
        settingsFromMapping({"line": {"max_line_length": 3}})


def test_unknownSectionStillRefusedWithoutThePlugin() -> None:
    with pytest.raises(ConfigError, match="line: unknown section"):
        settingsFromMapping({"line": {"greeting": "hi"}})


class _LineClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    linePort = freePort()
    broker = BrokerProcess(
        f"""
[[listeners]]
protocol = "line"
bind = "127.0.0.1"
port = {linePort}

[line]
greeting = "hello from a plugin"
""",
        env={
            "PYTHONPATH": str(EXAMPLE),
            "ROBUSTMQ_LINE__MAX_LINE_LENGTH": "64",
        },
    )
    broker.linePort = linePort  # type: ignore[attr-defined]
    broker.start()
    try:
        waitForPort("127.0.0.1", linePort)
        yield broker
    finally:
        broker.cleanup()


def test_lineClientsShareTheTopicSpaceWithMqtt(node: BrokerProcess) -> None:
    client = _LineClient(node.linePort)  # type: ignore[attr-defined]
    try:
        assert client.line() == "hello from a plugin"
        client.send("SUB plant/#")
        assert client.line() == "OK"
        subprocess.run(
            ["mosquitto_pub", "-p", str(node.port), "-t", "plant/boiler", "-m", "90", "-q", "1"],
            check=True,
            timeout=TIMEOUT,
        )
        assert client.line() == "MSG plant/boiler 90"
        sub = MosquittoSub(node.port, "mqttv311", ["-t", "plant/#", "-C", "1"])
        try:
            sub.waitSubscribed()
            client.send("PUB plant/pump on")
            # Its own SUB matches too: the delivery is written before the answer.
            assert client.line() == "MSG plant/pump on"
            assert client.line() == "OK 2"
            lines, _ = sub.finish(TIMEOUT)
            assert lines == ["plant/pump on"]
        finally:
            sub.kill()
        client.send("STATS")
        assert client.line() == "LINES 3"
    finally:
        client.close()


def test_environmentOverridesThePluginSection(node: BrokerProcess) -> None:
    """ROBUSTMQ_LINE__MAX_LINE_LENGTH=64: a longer line closes the connection."""
    client = _LineClient(node.linePort)  # type: ignore[attr-defined]
    try:
        client.line()
        client.send("PUB a " + "x" * 100)
        assert client.line() == "ERR line too long"
        assert client.line() == ""  # closed
    finally:
        client.close()


def test_badPluginConfigStopsStartNamingTheKey(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[line]\nmax_line_length = "long"\n')
    done = subprocess.run(
        [str(Path(sys.executable).with_name("robustmq")), "start", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(EXAMPLE), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "line.max_line_length" in done.stderr + done.stdout
