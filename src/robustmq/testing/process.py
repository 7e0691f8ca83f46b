"""A real RobustMQ node in a subprocess on loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Ports handed out by L{freePort} in this process (never handed out twice).
_handedOut: set[int] = set()
#: Its own generator: test plugins re-seed the global one identically for every test.
_random = random.Random()


def _ephemeralLow() -> int:
    """The lowest port the kernel gives outgoing connections."""
    try:
        low, _ = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    except (OSError, ValueError):
        return 32768


def freePort(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on C{host}.

    Chosen below the kernel's ephemeral range when there is room: a port the
    kernel hands out for binding to 0 can be taken by any outgoing connection
    (a test's client) before the node under test binds it.
    """
    low = _ephemeralLow()
    if low > 12_000:
        for _ in range(200):
            port = _random.randrange(10_000, low)
            if port in _handedOut:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handedOut.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _handedOut.add(port)
    return port


def waitForPort(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class BrokerProcess:
    """Runs C{twistd -n robustmq} with a generated config; use as a context manager.

    @ivar port: the MQTT TCP port on 127.0.0.1.
    @ivar log: path of the node's log (its stdout and stderr).
    """

    #: What the node is called in errors.
    name = "broker"

    def __init__(
        self,
        extraConfig: str = "",
        dataDir: str | None = None,
        port: int | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        logLevel: str = "debug",
    ) -> None:
        #: extra environment variables for the node (ROBUSTMQ_... overrides, PYTHONPATH)
        self.env = env
        #: [log] level (benchmarks run at "info": debug lines cost time)
        self.logLevel = logLevel
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="robustmq-test-"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.dataDir = dataDir or str(self.workdir / "data")
        self.port = port or freePort()
        self.extraConfig = extraConfig
        self.configPath = self.workdir / "robustmq.toml"
        self.log = self.workdir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: the node's open-files limit (RLIMIT_NOFILE), when a test wants a small one
        self.fileLimit: int | None = None

    def writeConfig(self) -> None:
        """Write L{configText} to C{configPath}."""
        self.configPath.write_text(self.configText())

    def configText(self) -> str:
        """The TOML config: one MQTT/TCP listener on loopback, plus C{extraConfig}."""
        # No admin API on 8080 unless the test asks for one (with a free port).
        noHTTP = "" if "[http]" in self.extraConfig else "[http]\nenabled = false"
        return f"""
[node]
data_dir = "{self.dataDir}"

[log]
level = "{self.logLevel}"

[[listeners]]
protocol = "mqtt"
transport = "tcp"
bind = "127.0.0.1"
port = {self.port}

{self.extraConfig}
{noHTTP}
"""

    def readyLines(self) -> list[str]:
        """Texts the log must show, since the latest start, before the node counts as ready."""
        # Accepting sockets is not enough: wait until storage is recovered.
        return ["[robustmq.core.broker.Broker#info] broker "]

    @property
    def pid(self) -> int | None:
        """The node's process id while it runs (None before start and after stop)."""
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        """Whether the node's process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0) -> BrokerProcess:
        """Start the node and wait until its MQTT port accepts connections."""
        self.spawn()
        return self.waitReady(timeout)

    def spawn(self) -> None:
        """Write the config and start the process without waiting (see L{waitReady})."""
        self.writeConfig()
        # A restart appends to the same log: only lines written from now on count.
        self._logStart = self.log.stat().st_size if self.log.exists() else 0
        twistd = Path(sys.executable).with_name("twistd")
        logFile = open(self.log, "ab")  # noqa: SIM115
        limit = self.fileLimit

        def limitFiles() -> None:
            import resource

            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "robustmq", "--config", str(self.configPath)],
            stdout=logFile,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=limitFiles if limit is not None else None,
            env=None if self.env is None else {**os.environ, **self.env},
        )
        logFile.close()

    def waitReady(self, timeout: float = 20.0) -> BrokerProcess:
        """Wait until the spawned node accepts connections on C{port} and logged L{readyLines}.

        On failure or timeout the node is stopped and the error raised.
        """
        assert self.process is not None, "spawn() first"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    waitForPort("127.0.0.1", self.port, timeout=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            for line in self.readyLines():
                self.waitForOutput(line, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def waitForOutput(self, text: str, timeout: float = 10.0) -> str:
        """Block until the node's log, since its latest start, contains C{text}; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()[getattr(self, "_logStart", 0) :]
            if text in out:
                return out
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{out}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout}s:\n{out[-2000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        """Everything the node logged so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send C{sig} and wait for the node to exit; returns its exit code."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.process = None
        return p.returncode

    def kill(self) -> None:
        """SIGKILL the node (crash tests)."""
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop the node and delete its working directory."""
        self.stop()
        if os.environ.get("RMQTEST_KEEP_DIRS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
