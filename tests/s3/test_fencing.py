"""One writer per shard, across real nodes: a broker paused with SIGSTOP while a second
broker takes its Kafka partition can never append after it, once resumed.

Two `twistd robustmq` processes on one SeaweedFS bucket; produce requests in our own
Kafka codec (so the test controls exactly which request reaches which node), the result
read back with confluent-kafka and with a store opened on the bucket.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import crc32c
from confluent_kafka import Consumer, KafkaError, TopicPartition
from test_stateless_restart import TIMEOUT, S3Node

from robustmq.protocols.kafka import decodeResponse, encodeRequest
from robustmq.testing.seaweedfs import SeaweedFSProcess


class _Kafka:
    """A blocking Kafka client speaking our own codec."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.corr = 0

    def send(self, apiKey: int, version: int, body: dict[str, Any]) -> int:
        self.corr += 1
        self.sock.sendall(encodeRequest(apiKey, version, self.corr, body))
        return self.corr

    def receive(self, apiKey: int, version: int) -> dict[str, Any]:
        size = struct.unpack(">i", self._exactly(4))[0]
        _, response = decodeResponse(apiKey, version, self._exactly(size))
        return response

    def call(self, apiKey: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        self.send(apiKey, version, body)
        return self.receive(apiKey, version)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()


def _batch(tag: bytes, n: int) -> bytes:
    """A v2 record batch of C{n} records valued C{tag + %03d}, no producer id."""
    records = b"".join(
        b"\x14\x00\x00" + bytes([i * 2]) + b"\x01\x08" + tag + b"%03d" % i + b"\x00"
        for i in range(n)
    )
    now = int(time.time() * 1000)
    tail = struct.pack(">hiqqqhii", 0, n - 1, now, now, -1, -1, -1, n) + records
    return struct.pack(">qiibI", 0, 9 + len(tail), 0, 2, crc32c.crc32c(tail)) + tail


def _produceBody(topic: str, batch: bytes) -> dict[str, Any]:
    return {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 30000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": batch}]}],
    }


def _errorCode(response: dict[str, Any]) -> int:
    return int(response["responses"][0]["partition_responses"][0]["error_code"])


def _consumeAll(bootstrap: str, topic: str) -> list[bytes]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            values.append(m.value())
    finally:
        c.close()
    return values


def test_pausedWriterIsFenced(weed: SeaweedFSProcess, tmp_path: Path) -> None:
    prefix = f"fence-{uuid.uuid4().hex[:8]}/"
    topic = f"fenced-{uuid.uuid4().hex[:6]}"
    first = S3Node(weed, prefix, tmp_path / "a").start()
    second: S3Node | None = None
    try:
        a = _Kafka(first.kafkaPort)
        a.call(3, 7, {"topics": [{"name": topic}], "allow_auto_topic_creation": True})
        assert _errorCode(a.call(0, 7, _produceBody(topic, _batch(b"a", 5)))) == 0

        second = S3Node(weed, prefix, tmp_path / "b").start()
        b = _Kafka(second.kafkaPort)
        b.call(3, 7, {"topics": [{"name": topic}], "allow_auto_topic_creation": False})

        os.kill(first.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        try:
            a.send(0, 7, _produceBody(topic, _batch(b"z", 3)))  # waits in A's socket
            assert _errorCode(b.call(0, 7, _produceBody(topic, _batch(b"b", 5)))) == 0
        finally:
            os.kill(first.pid, signal.SIGCONT)  # type: ignore[arg-type]
        late = a.receive(0, 7)
        assert _errorCode(late) != 0, (
            "the paused broker acknowledged a write after losing the shard"
        )
        again = a.call(0, 7, _produceBody(topic, _batch(b"y", 1)))
        assert _errorCode(again) != 0, "the fenced broker wrote again"
        first.waitForOutput("was taken by another writer")
        a.close()

        # B goes on; nothing of A's after B took the partition, nothing lost or twice
        assert _errorCode(b.call(0, 7, _produceBody(topic, _batch(b"c", 2)))) == 0
        b.close()
        expected = [b"a%03d" % i for i in range(5)] + [b"b%03d" % i for i in range(5)]
        expected += [b"c%03d" % i for i in range(2)]
        assert _consumeAll(second.bootstrap, topic) == expected
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()

    # a third node, on the bucket alone, sees the same log
    third = S3Node(weed, prefix, tmp_path / "c").start()
    try:
        assert _consumeAll(third.bootstrap, topic) == expected
    finally:
        third.cleanup()
