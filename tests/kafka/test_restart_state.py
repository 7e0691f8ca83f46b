"""End-to-end: idempotent-producer and transaction state survive a broker restart (segment store)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import crc32c
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from kafkanode import TIMEOUT, KafkaNodeProcess

from robustmq.protocols.kafka import decodeResponse, encodeRequest


@pytest.fixture
def node() -> Iterator[KafkaNodeProcess]:
    n = KafkaNodeProcess('[storage]\nbackend = "segment"\nsync = "always"\n')
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


_STARTED = "[robustmq.core.broker.Broker#info] broker "


def _restart(node: KafkaNodeProcess) -> None:
    """Stop and start the node, and wait until the new process has opened its store.

    The log file is appended to, so the start-up line of the first run does
    not count.
    """
    before = node.output().count(_STARTED)
    node.stop()
    node.start()
    deadline = time.monotonic() + TIMEOUT
    while node.output().count(_STARTED) <= before:
        assert time.monotonic() < deadline, "the node did not start again"
        time.sleep(0.05)


class _Client:
    """A blocking Kafka client speaking our own codec, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.corr = 0

    def call(self, apiKey: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        self.corr += 1
        self.sock.sendall(encodeRequest(apiKey, version, self.corr, body))
        size = struct.unpack(">i", self._exactly(4))[0]
        corr, response = decodeResponse(apiKey, version, self._exactly(size))
        assert corr == self.corr
        return response

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()


def _idempotentBatch(pid: int, epoch: int, seq: int, n: int) -> bytes:
    records = b"".join(
        b"\x0e\x00\x00" + bytes([i * 2]) + b"\x01\x08v" + b"%03d" % i + b"\x00" for i in range(n)
    )
    tail = struct.pack(">hiqqqhii", 0, n - 1, 1000, 1000, pid, epoch, seq, n) + records
    return struct.pack(">qiibI", 0, 9 + len(tail), 0, 2, crc32c.crc32c(tail)) + tail


def _produce(client: _Client, topic: str, batch: bytes) -> dict[str, Any]:
    body = {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": batch}]}],
    }
    return client.call(0, 7, body)["responses"][0]["partition_responses"][0]


def test_idempotentStateSurvivesRestart(node: KafkaNodeProcess, uniq: str) -> None:
    """After a restart a retried batch is still a duplicate and a sequence gap is still refused."""
    c = _Client(node.kafkaPort)
    c.call(3, 7, {"topics": [{"name": uniq}], "allow_auto_topic_creation": True})
    init = c.call(22, 1, {"transactional_id": None, "transaction_timeout_ms": 60000})
    pid, epoch = init["producer_id"], init["producer_epoch"]
    first = _produce(c, uniq, _idempotentBatch(pid, epoch, 0, 3))
    assert (first["error_code"], first["base_offset"]) == (0, 0)
    c.close()
    _restart(node)
    c = _Client(node.kafkaPort)
    try:
        again = _produce(c, uniq, _idempotentBatch(pid, epoch, 0, 3))
        assert (again["error_code"], again["base_offset"]) == (0, 0), "a duplicate"
        gap = _produce(c, uniq, _idempotentBatch(pid, epoch, 5, 1))
        assert gap["error_code"] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
        nxt = _produce(c, uniq, _idempotentBatch(pid, epoch, 3, 2))
        assert (nxt["error_code"], nxt["base_offset"]) == (0, 3)
        end = c.call(
            2,
            1,
            {
                "replica_id": -1,
                "topics": [{"name": uniq, "partitions": [{"partition_index": 0, "timestamp": -1}]}],
            },
        )
        assert end["topics"][0]["partitions"][0]["offset"] == 5, "the duplicate was not stored"
    finally:
        c.close()
    assert "restored 1 idempotent producer states" in node.output()


def _readCommitted(bootstrap: str, topic: str) -> list[bytes]:
    """Everything a read_committed consumer gets until it reaches the end of the partition."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    c.subscribe([topic])
    out: list[bytes] = []
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
            out.append(m.value())
    finally:
        c.close()
    return out


def test_transactionsSurviveRestart(node: KafkaNodeProcess, uniq: str) -> None:
    """Aborted records stay hidden, an open transaction holds read_committed back and can
    still be committed after a restart."""
    Producer({"bootstrap.servers": node.bootstrap}).list_topics(uniq, timeout=TIMEOUT)
    p = Producer({"bootstrap.servers": node.bootstrap, "transactional.id": uniq})
    p.init_transactions(TIMEOUT)
    p.begin_transaction()
    for v in (b"a1", b"a2"):
        p.produce(uniq, value=v)
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    p.produce(uniq, value=b"c1")
    p.commit_transaction(TIMEOUT)
    p.begin_transaction()
    p.produce(uniq, value=b"open")
    assert p.flush(TIMEOUT) == 0  # written, transaction still open
    _restart(node)
    assert _readCommitted(node.bootstrap, uniq) == [b"c1"]
    p.commit_transaction(TIMEOUT)  # the coordinator remembered the open transaction
    assert _readCommitted(node.bootstrap, uniq) == [b"c1", b"open"]
    p.begin_transaction()
    p.produce(uniq, value=b"late-abort")
    p.abort_transaction(TIMEOUT)
    _restart(node)
    assert _readCommitted(node.bootstrap, uniq) == [b"c1", b"open"]
