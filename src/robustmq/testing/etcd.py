"""A real etcd on free loopback ports, for placement and cluster tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from robustmq.testing.process import freePort


class EtcdProcess:
    """An etcd (Debian's etcd-server) on free loopback ports, stopped by PID.

    @ivar url: the client URL (C{http://127.0.0.1:<clientPort>}) for
        C{[placement] etcd_endpoints}.
    @ivar logPath: where etcd's output goes.
    @ivar workdir: its data and log; kept by L{cleanup} when the environment
        variable C{RMQTEST_KEEP_DIRS} is set.
    """

    def __init__(self, workdir: str | None = None) -> None:
        self.binary = shutil.which("etcd")
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="robustmq-etcd-")
        else:
            os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.logPath = Path(self.workdir) / "etcd.log"
        self.clientPort = freePort()
        self.peerPort = freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.clientPort}"

    @property
    def pid(self) -> int | None:
        """The process id while etcd runs."""
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 20.0) -> EtcdProcess:
        """Start etcd and wait until its C{/health} says true.

        @raise RuntimeError: etcd is not installed, or did not become healthy in time.
        """
        if self.binary is None:
            raise RuntimeError(
                "etcd not installed: the etcd binary is not on PATH "
                "(Debian/Ubuntu: apt-get install etcd-server; scripts/install-system-deps.sh)"
            )
        peer = f"http://127.0.0.1:{self.peerPort}"
        self.log = open(self.logPath, "ab")  # noqa: SIM115
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
                raise RuntimeError(f"etcd did not start; see {self.logPath}")
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
        if self.log is not None:
            self.log.close()
            self.log = None

    def cleanup(self) -> None:
        """Stop etcd and delete its directory (unless C{RMQTEST_KEEP_DIRS} is set)."""
        self.stop()
        if os.environ.get("RMQTEST_KEEP_DIRS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
