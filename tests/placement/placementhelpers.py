"""Helpers for the placement tests: a real etcd process and bounded waiting."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from robustmq.testing.process import freePort

#: The longest any placement test waits for one condition.
WAIT = 15.0


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await deferLater(reactor, seconds, lambda: None)


async def waitFor(
    condition: Callable[[], Any], timeout: float = WAIT, what: str = "condition"
) -> Any:
    """Poll C{condition} (plain or async) every 20 ms until it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.02)


class EtcdProcess:
    """An etcd (Debian's etcd-server) on free loopback ports, stopped by PID."""

    def __init__(self) -> None:
        self.binary = shutil.which("etcd")
        self.workdir = tempfile.mkdtemp(prefix="robustmq-etcd-")
        self.clientPort = freePort()
        self.peerPort = freePort()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.clientPort}"

    def start(self, timeout: float = 20.0) -> EtcdProcess:
        if self.binary is None:
            raise RuntimeError("etcd not installed (scripts/install-system-deps.sh)")
        peer = f"http://127.0.0.1:{self.peerPort}"
        self.log = open(os.path.join(self.workdir, "etcd.log"), "ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--name=robustmq-test",
                f"--data-dir={self.workdir}/data",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=robustmq-test={peer}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not start; see {self.workdir}/etcd.log")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the etcd we started (SIGKILL after 10 s) and wait for it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
            self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
