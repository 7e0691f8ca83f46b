"""Share groups (KIP-932) with confluent-kafka's ShareConsumer (librdkafka 2.16), plus raw
requests for the error paths.  kafka-python has no share consumer: it is used for what it
offers on share groups (ListGroups by type); confluent-kafka's AdminClient cannot list share
groups (its ConsumerGroupType has no SHARE), so a raw ListGroups v5 checks the type."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from kafka import KafkaAdminClient


@pytest.fixture(scope="module")
def node() -> Iterator[KafkaNodeProcess]:
    n = KafkaNodeProcess("share_heartbeat_interval_ms = 300\n")
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


def _setup(node: KafkaNodeProcess, topic: str, group: str, n: int, **configs: str) -> None:
    """A topic with C{n} records over 2 partitions; the group starts from the earliest."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(TIMEOUT)
    entries = [
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
        for k, v in {"share_auto_offset_reset": "earliest", **configs}.items()
    ]
    res = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    next(iter(admin.incremental_alter_configs([res]).values())).result(TIMEOUT)
    p = Producer({"bootstrap.servers": node.bootstrap})
    for i in range(n):
        p.produce(topic, b"%d" % i, partition=i % 2)
    assert p.flush(TIMEOUT) == 0


def _consumer(node: KafkaNodeProcess, group: str, explicit: bool = False) -> ShareConsumer:
    conf = {"bootstrap.servers": node.bootstrap, "group.id": group}
    if explicit:
        conf["share.acknowledgement.mode"] = "explicit"
    return ShareConsumer(conf)


def _poll(c: ShareConsumer, want: int, sink: list, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while len(sink) < want and time.monotonic() < deadline:
        for m in c.poll(0.3) or []:
            if not m.error():
                sink.append(m)


def test_twoShareConsumersGetEachRecordOnce(node: KafkaNodeProcess, uniq: str) -> None:
    """Queue semantics: two members of one share group split the records, none twice."""
    _setup(node, uniq, uniq, 100)
    a, b = _consumer(node, uniq), _consumer(node, uniq)
    a.subscribe([uniq])
    b.subscribe([uniq])
    got: list = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 100 and time.monotonic() < deadline:
            for c in (a, b):
                got += [m for m in c.poll(0.2) or [] if not m.error()]
    finally:
        a.close()
        b.close()
    values = sorted(int(m.value()) for m in got)
    assert values == list(range(100))


def test_releaseRedeliversAndRejectDoesNot(node: KafkaNodeProcess, uniq: str) -> None:
    """RELEASE: delivered again with delivery count 2; REJECT: never again."""
    _setup(node, uniq, uniq, 4)
    c = _consumer(node, uniq, explicit=True)
    c.subscribe([uniq])
    try:
        first: list = []
        _poll(c, 4, first)
        assert sorted(int(m.value()) for m in first) == [0, 1, 2, 3]
        assert {m.delivery_count() for m in first} == {1}
        for m in first:
            kind = {b"0": AcknowledgeType.RELEASE, b"1": AcknowledgeType.REJECT}.get(m.value())
            c.acknowledge(m, kind or AcknowledgeType.ACCEPT)
        c.commit_sync(TIMEOUT)
        again: list = []
        _poll(c, 1, again)
        assert [(m.value(), m.delivery_count()) for m in again] == [(b"0", 2)]
        c.acknowledge(again[0], AcknowledgeType.ACCEPT)
        c.commit_sync(TIMEOUT)
        more: list = []
        _poll(c, 1, more, seconds=2)
        assert more == []  # the rejected record stays archived
    finally:
        c.close()


def test_lockExpiryHandsRecordsToAnotherMember(node: KafkaNodeProcess, uniq: str) -> None:
    """share.record.lock.duration.ms: records a member holds without acknowledging go to
    another member once the lock runs out, with their delivery count raised."""
    _setup(node, uniq, uniq, 6, share_record_lock_duration_ms="1000")
    holder = _consumer(node, uniq, explicit=True)
    holder.subscribe([uniq])
    taker = _consumer(node, uniq)
    try:
        held: list = []
        _poll(holder, 6, held)
        assert len(held) == 6
        taker.subscribe([uniq])
        again: list = []
        _poll(taker, 6, again)
        assert sorted(int(m.value()) for m in again) == list(range(6))
        assert {m.delivery_count() for m in again} == {2}
    finally:
        taker.close()
        holder.close()


def test_deliveryCountLimitArchives(node: KafkaNodeProcess, uniq: str) -> None:
    """share.delivery.count.limit: after that many deliveries a released record is archived."""
    _setup(node, uniq, uniq, 1, share_delivery_count_limit="2")
    c = _consumer(node, uniq, explicit=True)
    c.subscribe([uniq])
    try:
        for attempt in (1, 2):
            got: list = []
            _poll(c, 1, got)
            assert [(m.value(), m.delivery_count()) for m in got] == [(b"0", attempt)]
            c.acknowledge(got[0], AcknowledgeType.RELEASE)
            c.commit_sync(TIMEOUT)
        after: list = []
        _poll(c, 1, after, seconds=2)
        assert after == []
    finally:
        c.close()


def test_shareWireErrorsAndListing(node: KafkaNodeProcess, uniq: str) -> None:
    """Raw requests: session epochs and record ownership are checked; ListGroups shows the
    group as a share group (confluent and kafka-python)."""
    _setup(node, uniq, uniq, 2)
    md = kafkaRequest(node.bootstrap, 3, 12, {"topics": [{"topic_id": None, "name": uniq}]})
    topicId = md["topics"][0]["topic_id"]

    def heartbeat(member: str) -> dict:
        return kafkaRequest(
            node.bootstrap,
            76,
            1,
            {
                "group_id": uniq,
                "member_id": member,
                "member_epoch": 0,
                "subscribed_topic_names": [uniq],
            },
        )

    for member in ("m1", "m2"):
        assert heartbeat(member)["error_code"] == 0

    def fetch(member: str, epoch: int, acks: list | None = None) -> dict:
        return kafkaRequest(
            node.bootstrap,
            78,
            1,
            {
                "group_id": uniq,
                "member_id": member,
                "share_session_epoch": epoch,
                "max_wait_ms": 0,
                "min_bytes": 1,
                "max_bytes": 1 << 20,
                "max_records": 10,
                "batch_size": 10,
                "topics": [
                    {
                        "topic_id": topicId,
                        "partitions": [
                            {"partition_index": 0, "acknowledgement_batches": acks or []}
                        ],
                    }
                ],
                "forgotten_topics_data": [],
            },
        )

    got = fetch("m1", 0)
    (part,) = got["responses"][0]["partitions"]
    assert part["acquired_records"] == [{"first_offset": 0, "last_offset": 0, "delivery_count": 1}]
    assert fetch("m1", 5)["error_code"] == 123  # INVALID_SHARE_SESSION_EPOCH
    assert fetch("m3", 1)["error_code"] == 25  # not a member: UNKNOWN_MEMBER_ID
    fetch("m2", 0)
    theft = fetch("m2", 1, [{"first_offset": 0, "last_offset": 0, "acknowledge_types": [1]}])
    (part,) = theft["responses"][0]["partitions"]
    assert part["acknowledge_error_code"] == 121  # INVALID_RECORD_STATE: m1 holds it
    # confluent-kafka's ConsumerGroupType has no SHARE member: a raw ListGroups v5
    listed = kafkaRequest(node.bootstrap, 16, 5, {"states_filter": [], "types_filter": ["share"]})
    assert [
        (g["group_id"], g["group_type"]) for g in listed["groups"] if g["group_id"] == uniq
    ] == [(uniq, "share")]
    kp = KafkaAdminClient(bootstrap_servers=node.bootstrap)
    try:
        assert any(uniq in repr(g) for g in kp.list_groups(types_filter=["share"]))
    finally:
        kp.close()
