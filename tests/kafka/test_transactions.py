"""Transactions: offsets sent to a transaction then committed or aborted (both clients,
every call bounded in time), and abandoned transactions aborted after their timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kafka.structs import OffsetAndMetadata
from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition


def _bounded(fn: Callable[[], object], what: str, seconds: float = TIMEOUT) -> None:
    """Run C{fn} in a thread; fail (instead of hanging) if it has not returned in time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{what} did not return within {seconds} s"
    if errors:
        raise errors[0]


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = c.committed([TopicPartition(topic, 0)], TIMEOUT)
        return tp.offset if tp.offset >= 0 else None
    finally:
        c.close()


def _source(node: KafkaNodeProcess, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": node.bootstrap})
    for i in range(n):
        p.produce(topic, value=b"in%d" % i, partition=0)
    assert p.flush(TIMEOUT) == 0


@pytest.fixture
def node() -> Iterator[KafkaNodeProcess]:
    n = KafkaNodeProcess('[storage]\nbackend = "segment"\n')
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "abort"])
def test_kafkaPythonSendOffsetsThenEnd(node: KafkaNodeProcess, uniq: str, commit: bool) -> None:
    """kafka-python: consume, produce, send_offsets_to_transaction, then commit or abort."""
    src, dst, group = uniq + "-in", uniq + "-out", uniq + "-g"
    _source(node, src, 5)
    c = KafkaConsumer(
        src,
        bootstrap_servers=node.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    p = KafkaProducer(bootstrap_servers=node.bootstrap, transactional_id=uniq)
    try:
        got: list = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 5 and time.monotonic() < deadline:
            for records in c.poll(500).values():
                got += records
        assert len(got) == 5
        _bounded(p.init_transactions, "init_transactions")
        p.begin_transaction()
        for m in got:
            p.send(dst, m.value)
        offsets = {KpTopicPartition(src, 0): OffsetAndMetadata(5, "", -1)}
        _bounded(
            lambda: p.send_offsets_to_transaction(offsets, c.group_metadata()),
            "send_offsets_to_transaction",
        )
        end = p.commit_transaction if commit else p.abort_transaction
        _bounded(end, "commit_transaction" if commit else "abort_transaction")
        # the producer goes on with a next transaction either way
        p.begin_transaction()
        p.send(dst, b"next")
        _bounded(p.commit_transaction, "the next commit_transaction")
    finally:
        p.close(TIMEOUT)
        c.close()
    assert _committed(node.bootstrap, group, src) == (5 if commit else None)


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "abort"])
def test_confluentSendOffsetsThenEnd(node: KafkaNodeProcess, uniq: str, commit: bool) -> None:
    """confluent-kafka: the same consume-transform-produce step, committed or aborted."""
    src, dst, group = uniq + "-in", uniq + "-out", uniq + "-g"
    _source(node, src, 5)
    c = Consumer(
        {
            "bootstrap.servers": node.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([src])
    p = Producer({"bootstrap.servers": node.bootstrap, "transactional.id": uniq})
    try:
        got: list = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 5 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m)
        assert len(got) == 5
        p.init_transactions(TIMEOUT)
        p.begin_transaction()
        for m in got:
            p.produce(dst, m.value())
        p.send_offsets_to_transaction(
            [TopicPartition(src, 0, 5)], c.consumer_group_metadata(), TIMEOUT
        )
        if commit:
            p.commit_transaction(TIMEOUT)
        else:
            p.abort_transaction(TIMEOUT)
    finally:
        c.close()
    assert _committed(node.bootstrap, group, src) == (5 if commit else None)


def test_abandonedTransactionIsAborted(uniq: str) -> None:
    """transaction.timeout.ms is enforced: the open transaction is aborted (read_committed
    readers move past it) and the producer that abandoned it is fenced."""
    node = KafkaNodeProcess("transaction_check_interval_ms = 100\n")
    node.start()
    try:
        t = Producer(
            {
                "bootstrap.servers": node.bootstrap,
                "transactional.id": uniq,
                "transaction.timeout.ms": 1500,
            }
        )
        t.init_transactions(TIMEOUT)
        t.begin_transaction()
        t.produce(uniq, b"abandoned", partition=0)
        assert t.flush(TIMEOUT) == 0
        plain = Producer({"bootstrap.servers": node.bootstrap})
        plain.produce(uniq, b"after", partition=0)
        assert plain.flush(TIMEOUT) == 0
        c = Consumer(
            {
                "bootstrap.servers": node.bootstrap,
                "group.id": uniq,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        c.subscribe([uniq])
        seen: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        try:
            while not seen and time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    seen.append(m.value())
        finally:
            c.close()
        assert seen == [b"after"]
        with pytest.raises(KafkaException) as e:
            t.commit_transaction(TIMEOUT)
        assert (
            e.value.args[0].code()
            in (
                KafkaError._FENCED,
                KafkaError.PRODUCER_FENCED,
                KafkaError.INVALID_PRODUCER_EPOCH,
                KafkaError._STATE,
            )
            or "fenced" in str(e.value).lower()
        )
    finally:
        node.cleanup()
