"""A real node with MQTT, Kafka, AMQP and the admin API on free loopback ports, for fault tests."""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

from robustmq.storage._segment.naming import escape
from robustmq.testing.process import BrokerProcess, freePort, waitForPort

#: Seconds any single awaited event may take before the test fails.
TIMEOUT = 30.0


class FaultNode(BrokerProcess):
    """A L{BrokerProcess} speaking every protocol over a segment store.

    @ivar kafkaPort, amqpPort, httpPort: the listeners' ports (MQTT is C{port}).
    """

    def __init__(self, storage: str = "", dataDir: str | None = None, extra: str = "") -> None:
        self.kafkaPort = freePort()
        self.amqpPort = freePort()
        self.httpPort = freePort()
        config = f"""
[[listeners]]
protocol = "kafka"
transport = "tcp"
bind = "127.0.0.1"
port = {self.kafkaPort}

[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {self.amqpPort}

[kafka]
group_initial_rebalance_delay_ms = 0

[http]
enabled = true
bind = "127.0.0.1"
port = {self.httpPort}

{extra}

[storage]
backend = "segment"
{storage}
"""
        super().__init__(extraConfig=config, dataDir=dataDir)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafkaPort}"

    @property
    def amqpURL(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqpPort}/%2F"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpPort}"

    @property
    def storageDir(self) -> str:
        return os.path.join(self.dataDir, "storage")

    def start(self, timeout: float = 30.0) -> FaultNode:
        super().start(timeout)
        for port in (self.kafkaPort, self.amqpPort, self.httpPort):
            waitForPort("127.0.0.1", port, timeout)
        return self

    def restart(self) -> FaultNode:
        """Stop (SIGTERM) if running, then start again; the log keeps growing."""
        self.stop()
        return self.start()

    def get(self, path: str) -> tuple[int, Any]:
        """GET an admin API path: (status, decoded JSON)."""
        try:
            with urlopen(self.url + path, timeout=TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def shardDir(self, shard: str) -> str:
        return os.path.join(self.storageDir, "shards", escape(shard))

    def segments(self, shard: str) -> list[str]:
        return sorted(glob.glob(os.path.join(self.shardDir(shard), "*.log")))

    def logSince(self, start: int = 0) -> str:
        return self.output()[start:]

    def waitFor(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


def flipByte(path: str, position: int) -> None:
    """Invert every bit of one byte of a file."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


def tracebacks(text: str) -> list[str]:
    """The lines of a node log that start a Python traceback."""
    return [line for line in text.splitlines() if "Traceback (most recent call last)" in line]


class RawKafka:
    """A blocking Kafka client speaking our own codec, one request at a time."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.corr = 0

    def call(self, apiKey: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        import struct

        from robustmq.protocols.kafka import decodeResponse, encodeRequest

        self.corr += 1
        self.sock.sendall(encodeRequest(apiKey, version, self.corr, body))
        size = struct.unpack(">i", self._exactly(4))[0]
        corr, response = decodeResponse(apiKey, version, self._exactly(size))
        assert corr == self.corr
        return response

    def fetch(self, topic: str, offset: int) -> dict[str, Any]:
        """One Fetch (v4) of partition 0 at C{offset}: that partition's response."""
        body = {
            "replica_id": -1,
            "max_wait_ms": 0,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "isolation_level": 0,
            "topics": [
                {
                    "topic": topic,
                    "partitions": [
                        {"partition": 0, "fetch_offset": offset, "partition_max_bytes": 1 << 20}
                    ],
                }
            ],
        }
        return self.call(1, 4, body)["responses"][0]["partitions"][0]

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()
