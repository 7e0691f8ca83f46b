"""End-to-end: compression pass-through, aiokafka, the idempotent and transactional producers."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, KafkaError, Producer
from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaConsumer, KafkaProducer


def _readAll(bootstrap: str, topic: str, n: int, **extra: object) -> list[bytes]:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"r-{topic}-{time.monotonic_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
    conf.update(extra)
    c = Consumer(conf)
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF and len(out) >= n:
                    break
                continue
            out.append(m.value())
    finally:
        c.close()
    return out


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressionConfluent(kafkaNode: KafkaNodeProcess, uniq: str, codec: str) -> None:
    """librdkafka-compressed batches are stored as sent and read back."""
    p = Producer(
        {"bootstrap.servers": kafkaNode.bootstrap, "compression.type": codec, "linger.ms": 20}
    )
    values = [(b"%05d-" % i) * 50 for i in range(200)]
    for v in values:
        p.produce(uniq, value=v)
    assert p.flush(TIMEOUT) == 0
    assert _readAll(kafkaNode.bootstrap, uniq, 200) == values


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
def test_compressionKafkaPython(kafkaNode: KafkaNodeProcess, uniq: str, codec: str) -> None:
    """kafka-python's codecs (snappy in the Java framing) pass through to librdkafka."""
    try:
        p = KafkaProducer(bootstrap_servers=kafkaNode.bootstrap, compression_type=codec)
    except (AssertionError, ValueError, ImportError) as e:
        pytest.skip(f"kafka-python has no {codec} library here: {e}")
    values = [b"v%d" % i * 30 for i in range(100)]
    for v in values:
        p.send(uniq, v)
    p.flush(TIMEOUT)
    p.close()
    assert _readAll(kafkaNode.bootstrap, uniq, 100) == values


def test_aiokafka(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """aiokafka produces and consumes in a group."""

    async def run() -> list[bytes]:
        p = AIOKafkaProducer(bootstrap_servers=kafkaNode.bootstrap)
        await p.start()
        try:
            for i in range(20):
                await p.send_and_wait(uniq, b"ai%d" % i)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(
            uniq,
            bootstrap_servers=kafkaNode.bootstrap,
            group_id=uniq,
            auto_offset_reset="earliest",
        )
        await c.start()
        got = []
        try:
            async with asyncio.timeout(TIMEOUT):
                async for m in c:
                    got.append(m.value)
                    if len(got) == 20:
                        break
            await c.commit()
        finally:
            await c.stop()
        return got

    assert asyncio.run(run()) == [b"ai%d" % i for i in range(20)]


def test_idempotentRetriesNoDuplicates(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Idempotent producers of both libraries: every record once, in order."""
    p = Producer(
        {"bootstrap.servers": kafkaNode.bootstrap, "enable.idempotence": True, "linger.ms": 2}
    )
    for i in range(300):
        p.produce(uniq, value=b"%d" % i)
        if i % 50 == 0:
            p.poll(0)
    assert p.flush(TIMEOUT) == 0
    kp = KafkaProducer(bootstrap_servers=kafkaNode.bootstrap, enable_idempotence=True)
    for i in range(300, 400):
        kp.send(uniq, b"%d" % i)
    kp.flush(TIMEOUT)
    kp.close()
    assert _readAll(kafkaNode.bootstrap, uniq, 400) == [b"%d" % i for i in range(400)]


def test_transactionsCommitAndAbort(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """A read_committed consumer sees committed transactions only; read_uncommitted sees all."""
    p = Producer({"bootstrap.servers": kafkaNode.bootstrap, "transactional.id": uniq})
    p.init_transactions(TIMEOUT)
    p.begin_transaction()
    for i in range(5):
        p.produce(uniq, value=b"c%d" % i)
    p.commit_transaction(TIMEOUT)
    p.begin_transaction()
    for i in range(5):
        p.produce(uniq, value=b"a%d" % i)
    p.flush(TIMEOUT)
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    p.produce(uniq, value=b"last")
    p.commit_transaction(TIMEOUT)
    committed = _readAll(kafkaNode.bootstrap, uniq, 6, **{"isolation.level": "read_committed"})
    assert committed == [b"c%d" % i for i in range(5)] + [b"last"]
    everything = _readAll(kafkaNode.bootstrap, uniq, 11, **{"isolation.level": "read_uncommitted"})
    assert everything == [b"c%d" % i for i in range(5)] + [b"a%d" % i for i in range(5)] + [b"last"]


def test_kafkaPythonReadCommittedSkipsAborted(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python's read_committed consumer drops an aborted transaction too."""
    p = Producer({"bootstrap.servers": kafkaNode.bootstrap, "transactional.id": uniq})
    p.init_transactions(TIMEOUT)
    p.begin_transaction()
    p.produce(uniq, value=b"no")
    p.flush(TIMEOUT)
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    p.produce(uniq, value=b"yes")
    p.commit_transaction(TIMEOUT)
    c = KafkaConsumer(
        uniq,
        bootstrap_servers=kafkaNode.bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        consumer_timeout_ms=3000,
    )
    got = [m.value for m in c]
    c.close()
    assert got == [b"yes"]
