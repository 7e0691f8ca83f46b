"""A real node with several worker processes (C{[node] workers}), for end-to-end tests.

L{WorkerNode} is a L{BrokerProcess} whose config asks for C{workers}
processes and an admin API on a free port; it is ready once the node logs
that every worker is.  Clients connect to the node's one MQTT port and the
kernel picks their worker; L{WorkerNode.workerOf} asks the admin API where
a client landed::

    with WorkerNode(workers=2) as node:
        client = PahoClient(node.port, "c1").connect()
        node.workerOf("c1")          # 0 or 1
        node.killWorker(1)           # SIGKILL; the node restarts it
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import Request, urlopen

from robustmq.testing.process import BrokerProcess, freePort


class WorkerNode(BrokerProcess):
    """A node of C{workers} worker processes on loopback ports (a context manager).

    @ivar httpPort: the node's admin API port.
    """

    name = "node"

    def __init__(
        self, workers: int = 2, extraConfig: str = "", listenerConfig: str = "", **kwargs: Any
    ) -> None:
        """@param listenerConfig: more keys of the MQTT listener's table (TOML lines)."""
        super().__init__(extraConfig=extraConfig, **kwargs)
        self.workers = workers
        self.listenerConfig = listenerConfig
        self.httpPort = freePort()

    def configText(self) -> str:
        return f"""
[node]
data_dir = "{self.dataDir}"
workers = {self.workers}

[log]
level = "{self.logLevel}"

[storage]
backend = "segment"

[http]
bind = "127.0.0.1"
port = {self.httpPort}

[[listeners]]
protocol = "mqtt"
transport = "tcp"
bind = "127.0.0.1"
port = {self.port}
{self.listenerConfig}

{self.extraConfig}
"""

    def readyLines(self) -> list[str]:
        return []

    def start(self, timeout: float = 60.0) -> WorkerNode:
        """Start the node and wait until every worker is ready (slow on a busy machine)."""
        super().start(timeout)
        return self

    def waitReady(self, timeout: float = 60.0) -> WorkerNode:
        """Wait until the node's admin API says every worker is ready (at any log level).

        On failure or timeout the node is stopped and the error raised.
        """
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    with urlopen(self.httpURL + "/health/ready", timeout=2) as answer:
                        if answer.status == 200:
                            return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} not ready after {timeout}s:\n{self.output()[-3000:]}"
                    )
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        """The node's processes: its own, then every running worker's (one for workers = 1)."""
        assert self.pid is not None
        workers = [int(r["pid"]) for r in self.workerRows() if r.get("pid")]
        return [self.pid] + [p for p in workers if p != self.pid]

    def __enter__(self) -> WorkerNode:
        return self.start()

    # Admin API

    @property
    def httpURL(self) -> str:
        return f"http://127.0.0.1:{self.httpPort}"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Any:
        """One admin API request; the parsed JSON answer (HTTPError on a non-2xx answer)."""
        data = None if body is None else json.dumps(body).encode()
        request = Request(self.httpURL + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        with urlopen(request, timeout=timeout) as response:
            raw = response.read()
            if response.headers.get_content_type() != "application/json":
                return raw.decode()
            return json.loads(raw)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def workerRows(self) -> list[dict[str, Any]]:
        """C{GET /api/v1/workers}: one row per worker."""
        return list(self.get("/api/v1/workers")["data"])

    def workerOf(self, clientId: str, timeout: float = 10.0) -> int:
        """The worker holding client C{clientId}'s online MQTT session (waits until one does).

        Asked of sessions rather than connections: a session has one owner,
        while a connection the client just closed may linger a moment.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                session = self.get("/api/v1/sessions/" + quote(clientId, safe=""))
                if session.get("online"):
                    return int(session["worker"])
            except HTTPError as e:
                if e.code not in (404, 503):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker holds an online session of {clientId!r}")
            time.sleep(0.1)

    def workerPid(self, index: int) -> int:
        pid = self.workerRows()[index]["pid"]
        assert pid, f"worker {index} runs no process now"
        return int(pid)

    def killWorker(self, index: int) -> int:
        """SIGKILL worker C{index}'s process; returns its pid."""
        pid = self.workerPid(index)
        os.kill(pid, signal.SIGKILL)
        return pid

    def waitAllReady(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until every worker's state is C{ready}; returns the rows."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.workerRows()
                if all(r["state"] == "ready" for r in rows):
                    return rows
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.2)


__all__ = ["WorkerNode"]
