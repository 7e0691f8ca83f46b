"""End-to-end: consumer groups rebalance, commit and resume; data survives a restart."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from kafka import KafkaConsumer


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )


def _pollUntil(consumers: list[Consumer], cond, sink: list) -> None:
    """Poll every consumer in turn until C{cond()} holds (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for c in consumers:
            m = c.poll(0.1)
            if m is not None and not m.error():
                sink.append((c, m))
        if cond():
            return
    raise AssertionError("condition not reached in time")


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % 6)
    assert p.flush(TIMEOUT) == 0


def _atEnd(consumer: Consumer) -> bool:
    """Has C{consumer} read every assigned partition up to its high watermark?"""
    assignment = consumer.assignment()
    if not assignment:
        return False
    for tp in consumer.position(assignment):
        _, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT)
        if tp.offset < 0 or tp.offset < high:
            return False
    return True


def _kafkaPythonConsumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """A kafka-python consumer of C{topic} in the group of that name, committing by hand."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(TIMEOUT * 1000),
    )


def _take(consumer: KafkaConsumer, n: int) -> list[int]:
    """The next C{n} record values read as integers (fewer if TIMEOUT passes with none)."""
    values: list[int] = []
    for m in consumer:
        values.append(int(m.value))
        if len(values) == n:
            break
    return values


def test_threeMemberRebalanceCommitResume(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Two members split six partitions, a third joins, one leaves; commits resume."""
    bootstrap = kafkaNode.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(uniq, 6, 1)])[uniq].result(TIMEOUT)
    _produce(bootstrap, uniq, [b"a%d" % i for i in range(60)])
    c1, c2 = _consumer(bootstrap, uniq), _consumer(bootstrap, uniq)
    c3 = None
    seen: list = []
    try:
        c1.subscribe([uniq])
        c2.subscribe([uniq])
        _pollUntil(
            [c1, c2],
            lambda: (
                len(c1.assignment()) + len(c2.assignment()) == 6
                and c1.assignment()
                and c2.assignment()
            ),
            seen,
        )
        c3 = _consumer(bootstrap, uniq)
        c3.subscribe([uniq])
        _pollUntil(
            [c1, c2, c3],
            lambda: [len(c.assignment()) for c in (c1, c2, c3)] == [2, 2, 2],
            seen,
        )
        c2.close()
        _pollUntil(
            [c1, c3],
            lambda: (
                len(c1.assignment()) + len(c3.assignment()) == 6
                and {len(c1.assignment()), len(c3.assignment())} == {3}
            ),
            seen,
        )
        # After the last rebalance each remaining member reads its partitions to the end
        # (records c2 read before leaving do not count: nobody committed them).
        _pollUntil([c1, c3], lambda: _atEnd(c1) and _atEnd(c3), seen)
        for c in (c1, c3):
            c.commit(asynchronous=False)
    finally:
        for c in (c1, c3):
            if c is not None:
                c.close()
    _produce(bootstrap, uniq, [b"b%d" % i for i in range(12)])
    c4 = _consumer(bootstrap, uniq)
    later: list = []
    try:
        c4.subscribe([uniq])
        _pollUntil([c4], lambda: len(later) >= 12, later)
        time.sleep(0.5)
        m = c4.poll(0.5)
        if m is not None and not m.error():
            later.append((c4, m))
    finally:
        c4.close()
    assert sorted(m.value() for _, m in later) == sorted(b"b%d" % i for i in range(12))


def test_groupsListedDescribedDeleted(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """The admin client lists, describes and deletes a group that committed offsets."""
    bootstrap = kafkaNode.bootstrap
    _produce(bootstrap, uniq, [b"x"])
    c = _consumer(bootstrap, uniq)
    got: list = []
    try:
        c.subscribe([uniq])
        _pollUntil([c], lambda: len(got) == 1, got)
        c.commit(asynchronous=False)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        described = admin.describe_consumer_groups([uniq])[uniq].result(TIMEOUT)
        assert len(described.members) == 1
    finally:
        c.close()
    listed = admin.list_consumer_groups().result(TIMEOUT)
    assert uniq in {g.group_id for g in listed.valid}
    admin.delete_consumer_groups([uniq])[uniq].result(TIMEOUT)
    listed = admin.list_consumer_groups().result(TIMEOUT)
    assert uniq not in {g.group_id for g in listed.valid}


def test_restartKeepsDataAndOffsets(uniq: str) -> None:
    """With the segment store, records and committed offsets survive a restart."""
    node = KafkaNodeProcess('[storage]\nbackend = "segment"\nsync = "always"\n')
    node.start()
    try:
        p = Producer({"bootstrap.servers": node.bootstrap})
        for i in range(20):
            p.produce(uniq, value=b"%d" % i)
        assert p.flush(TIMEOUT) == 0
        c = _kafkaPythonConsumer(node.bootstrap, uniq)
        first = _take(c, 20)
        from kafka import OffsetAndMetadata, TopicPartition

        c.commit({TopicPartition(uniq, 0): OffsetAndMetadata(12, "", -1)})
        c.close()
        assert first == list(range(20))
        node.stop()
        node.start()
        c = _kafkaPythonConsumer(node.bootstrap, uniq)
        rest = _take(c, 8)
        c.close()
        assert rest == list(range(12, 20))
    finally:
        node.cleanup()


def test_joinGroupMemberIdRequired(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """KIP-394: JoinGroup v4+ without a member id gets MEMBER_ID_REQUIRED and the id to use."""
    join = {
        "group_id": uniq,
        "session_timeout_ms": 10000,
        "rebalance_timeout_ms": 10000,
        "member_id": "",
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    }
    first = kafkaRequest(kafkaNode.bootstrap, 11, 5, join)
    assert first["error_code"] == 79  # MEMBER_ID_REQUIRED
    assert first["member_id"]
    second = kafkaRequest(kafkaNode.bootstrap, 11, 5, {**join, "member_id": first["member_id"]})
    assert second["error_code"] == 0
    assert second["member_id"] == first["member_id"] == second["leader"]
    # v3 and older keep the single round trip
    old = kafkaRequest(kafkaNode.bootstrap, 11, 3, {**join, "group_id": uniq + "-v3"})
    assert old["error_code"] == 0
