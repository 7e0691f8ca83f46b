"""The new consumer group protocol (KIP-848) with librdkafka's group.protocol=consumer.

kafka-python has no KIP-848 consumer and no ConsumerGroupDescribe call: it is used for
what it offers on such groups (ListGroups by type, DescribeGroups through the classic API).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupType,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from kafka import KafkaAdminClient


@pytest.fixture(scope="module")
def node() -> Iterator[KafkaNodeProcess]:
    # short heartbeats so that partitions move between members quickly
    n = KafkaNodeProcess(
        "consumer_heartbeat_interval_ms = 200\nconsumer_session_timeout_ms = 6000\n"
    )
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


def _consumer(node: KafkaNodeProcess, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": node.bootstrap,
            "group.id": group,
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def _produce(node: KafkaNodeProcess, topic: str, start: int, n: int, partitions: int) -> None:
    p = Producer({"bootstrap.servers": node.bootstrap})
    for i in range(start, start + n):
        p.produce(topic, b"%d" % i, partition=i % partitions)
    assert p.flush(TIMEOUT) == 0


def _drain(consumers: list[Consumer], want: int, sink: list) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(sink) < want and time.monotonic() < deadline:
        for i, c in enumerate(consumers):
            m = c.poll(0.1)
            if m is not None and not m.error():
                sink.append((i, m.partition(), m.value()))
                c.commit(m, asynchronous=False)


def test_twoMembersSplitThenOneTakesOver(node: KafkaNodeProcess, uniq: str) -> None:
    """Members share the partitions; when one leaves, the other gets them all; commits count."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(uniq, 4, 1)])[uniq].result(TIMEOUT)
    _produce(node, uniq, 0, 40, 4)
    a, b = _consumer(node, uniq), _consumer(node, uniq)
    a.subscribe([uniq])
    b.subscribe([uniq])
    got: list = []
    try:
        _drain([a, b], 40, got)
        assert sorted(int(v) for _, _, v in got) == list(range(40))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not (a.assignment() and b.assignment()):
            a.poll(0.1)
            b.poll(0.1)
        owned = [{tp.partition for tp in c.assignment()} for c in (a, b)]
        assert owned[0] and owned[1] and owned[0] | owned[1] == {0, 1, 2, 3}
        assert not owned[0] & owned[1]
        desc = admin.describe_consumer_groups([uniq])[uniq].result(TIMEOUT)
        assert desc.type == ConsumerGroupType.CONSUMER
        assert len(desc.members) == 2
        a.close()
        _produce(node, uniq, 40, 20, 4)
        more: list = []
        _drain([b], 20, more)
        assert sorted(int(v) for _, _, v in more) == list(range(40, 60))
        assert {p for _, p, _ in more} == {0, 1, 2, 3}
    finally:
        b.close()
    committed = Consumer({"bootstrap.servers": node.bootstrap, "group.id": uniq}).committed(
        [TopicPartition(uniq, p) for p in range(4)], TIMEOUT
    )
    assert sum(tp.offset for tp in committed) == 60


def test_listedAndDescribed(node: KafkaNodeProcess, uniq: str) -> None:
    """ListGroups by type (both clients), ConsumerGroupDescribe (confluent and raw)."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(uniq, 2, 1)])[uniq].result(TIMEOUT)
    c = _consumer(node, uniq)
    c.subscribe([uniq])
    try:
        deadline = time.monotonic() + TIMEOUT
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.1)
        assert len(c.assignment()) == 2
        listed = admin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(TIMEOUT)
        mine = [g for g in listed.valid if g.group_id == uniq]
        assert mine and mine[0].type == ConsumerGroupType.CONSUMER
        assert mine[0].state == ConsumerGroupState.STABLE
        kp = KafkaAdminClient(bootstrap_servers=node.bootstrap)
        try:
            names = [
                g[0] if isinstance(g, tuple) else g
                for g in kp.list_groups(types_filter=["consumer"])
            ]
            assert any(uniq in repr(g) for g in names)
        finally:
            kp.close()
        raw = kafkaRequest(
            node.bootstrap, 69, 0, {"group_ids": [uniq], "include_authorized_operations": False}
        )
        (group,) = raw["groups"]
        assert group["error_code"] == 0 and group["group_state"] == "Stable"
        (member,) = group["members"]
        parts = member["assignment"]["topic_partitions"]
        assert [(p["topic_name"], p["partitions"]) for p in parts] == [(uniq, [0, 1])]
    finally:
        c.close()
