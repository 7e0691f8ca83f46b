"""Share groups (KIP-932): ShareGroupDescribe, the share-group offset APIs, DeleteGroups and
the listing APIs for share groups, their authorization, the in-flight window bound, and
share-group state across a restart.

confluent-kafka 2.16 (librdkafka 2.16) has a ShareConsumer but no admin call for share
groups (its AdminClient has no describe_share_groups / share-group offset calls, and
describe_consumer_groups uses DescribeGroups and ConsumerGroupDescribe only), and
kafka-python 3.0 only knows the API keys: the admin APIs are driven with raw requests
through the broker's own codec, the consuming with the real ShareConsumer."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import AcknowledgeType, Consumer, Producer, ShareConsumer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from robustmq.protocols.kafka._sharestate import StoredPartition, dumpPartition

# Kafka's operation codes, as the AuthorizedOperations bits use them
READ, DELETE, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS = 3, 6, 8, 10, 11


@pytest.fixture(scope="module")
def node() -> Iterator[KafkaNodeProcess]:
    n = KafkaNodeProcess(
        "share_heartbeat_interval_ms = 300\nshare_partition_max_record_locks = 100\n"
    )
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


# -- helpers ---------------------------------------------------------------------------


def _topic(node: KafkaNodeProcess, topic: str, partitions: int, n: int, **producer: Any) -> None:
    """A topic with C{n} records, record C{i} (value C{b"i"}) in partition C{i % partitions}."""
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(TIMEOUT)
    p = Producer({"bootstrap.servers": node.bootstrap, **producer})
    for i in range(n):
        p.produce(topic, b"%d" % i, partition=i % partitions)
        if producer:
            p.flush(TIMEOUT)  # one batch per record
    assert p.flush(TIMEOUT) == 0


def _earliest(node: KafkaNodeProcess, group: str) -> None:
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    entry = ConfigEntry(
        "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
    )
    res = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
    next(iter(admin.incremental_alter_configs([res]).values())).result(TIMEOUT)


def _consumer(node: KafkaNodeProcess, group: str, **conf: str) -> ShareConsumer:
    return ShareConsumer({"bootstrap.servers": node.bootstrap, "group.id": group, **conf})


def _poll(c: ShareConsumer, want: int, sink: list, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while len(sink) < want and time.monotonic() < deadline:
        sink += [m for m in c.poll(0.3) or [] if not m.error()]


def _describe(node: KafkaNodeProcess, *groups: str, ops: bool = False) -> list[dict]:
    body = {"group_ids": list(groups), "include_authorized_operations": ops}
    return kafkaRequest(node.bootstrap, 77, 1, body)["groups"]


def _offsets(node: KafkaNodeProcess, group: str, topics: dict[str, list[int]] | None) -> dict:
    asked = (
        None
        if topics is None
        else [{"topic_name": t, "partitions": ps} for t, ps in topics.items()]
    )
    body = {"groups": [{"group_id": group, "topics": asked}]}
    (answer,) = kafkaRequest(node.bootstrap, 90, 0, body)["groups"]
    return answer


def _starts(answer: dict) -> dict[str, dict[int, int]]:
    """{topic: {partition: start offset}} of a DescribeShareGroupOffsets group answer."""
    assert answer["error_code"] == 0, answer
    return {
        t["topic_name"]: {p["partition_index"]: p["start_offset"] for p in t["partitions"]}
        for t in answer["topics"]
    }


def _alter(node: KafkaNodeProcess, group: str, offsets: dict[str, dict[int, int]]) -> dict:
    topics = [
        {
            "topic_name": t,
            "partitions": [{"partition_index": p, "start_offset": o} for p, o in ps.items()],
        }
        for t, ps in offsets.items()
    ]
    return kafkaRequest(node.bootstrap, 91, 0, {"group_id": group, "topics": topics})


def _codes(alter: dict) -> dict[str, dict[int, int]]:
    return {
        t["topic_name"]: {p["partition_index"]: p["error_code"] for p in t["partitions"]}
        for t in alter["responses"]
    }


def _deleteOffsets(node: KafkaNodeProcess, group: str, topics: list[str]) -> dict:
    body = {"group_id": group, "topics": [{"topic_name": t} for t in topics]}
    return kafkaRequest(node.bootstrap, 92, 0, body)


def _heartbeat(node: KafkaNodeProcess, group: str, member: str, epoch: int, topics: list) -> dict:
    body = {
        "group_id": group,
        "member_id": member,
        "member_epoch": epoch,
        "subscribed_topic_names": topics,
    }
    return kafkaRequest(node.bootstrap, 76, 1, body)


def _listed(node: KafkaNodeProcess, group: str) -> list[tuple[str, str, str]]:
    body = {"states_filter": [], "types_filter": []}
    return [
        (g["group_type"], g["protocol_type"], g["group_state"])
        for g in kafkaRequest(node.bootstrap, 16, 5, body)["groups"]
        if g["group_id"] == group
    ]


def _deleteGroups(node: KafkaNodeProcess, *groups: str) -> dict[str, int]:
    answer = kafkaRequest(node.bootstrap, 42, 2, {"groups_names": list(groups)})
    return {r["group_id"]: r["error_code"] for r in answer["results"]}


def _classicGroup(node: KafkaNodeProcess, group: str, topic: str) -> None:
    """A classic group without members: one administrative commit (confluent Consumer)."""
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        c.close()


def _topicId(node: KafkaNodeProcess, topic: str) -> Any:
    md = kafkaRequest(node.bootstrap, 3, 12, {"topics": [{"topic_id": None, "name": topic}]})
    return md["topics"][0]["topic_id"]


# -- ShareGroupDescribe, DescribeGroups, ListGroups --------------------------------------


def test_shareGroupDescribe(node: KafkaNodeProcess, uniq: str) -> None:
    """A ShareConsumer's group: Stable with the member (client id, host, subscription, the
    assignment by topic id and name), assignor "simple"; Empty once it left. An unknown
    group and a classic group are GROUP_ID_NOT_FOUND with Kafka's messages; the classic
    DescribeGroups (v0-5) answers Dead for a share group, as Kafka does, and ListGroups
    lists it as a share group."""
    _topic(node, uniq, 2, 4)
    _earliest(node, uniq)
    c = _consumer(node, uniq, **{"client.id": "describer"})
    c.subscribe([uniq])
    try:
        got: list = []
        _poll(c, 4, got)
        assert len(got) == 4
        (d,) = _describe(node, uniq, ops=True)
        assert (d["error_code"], d["group_state"], d["assignor_name"]) == (0, "Stable", "simple")
        assert d["group_epoch"] >= 1 and d["assignment_epoch"] == d["group_epoch"]
        (m,) = d["members"]
        assert (m["client_id"], m["client_host"]) == ("describer", "127.0.0.1")
        assert m["member_epoch"] >= 1 and m["subscribed_topic_names"] == [uniq]
        assert m["assignment"]["topic_partitions"] == [
            {"topic_id": _topicId(node, uniq), "topic_name": uniq, "partitions": [0, 1]}
        ]
        everything = sum(
            1 << op for op in (READ, DELETE, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS)
        )
        assert d["authorized_operations"] == everything
        assert _describe(node, uniq)[0]["authorized_operations"] == -2147483648
        assert _listed(node, uniq) == [("share", "share", "Stable")]
    finally:
        c.close()
    (d,) = _describe(node, uniq)
    assert (d["error_code"], d["group_state"], d["members"]) == (0, "Empty", [])
    assert _listed(node, uniq) == [("share", "share", "Empty")]
    classic = uniq + "-classic"
    _classicGroup(node, classic, uniq)
    unknown, other = _describe(node, uniq + "-unknown", classic)
    assert (unknown["error_code"], unknown["error_message"]) == (
        69,
        f"Group {uniq}-unknown not found.",
    )
    assert (other["error_code"], other["error_message"]) == (
        69,
        f"Group {classic} is not a share group.",
    )
    # the classic API does not describe share groups (Kafka: Dead below v6)
    (old,) = kafkaRequest(node.bootstrap, 15, 5, {"groups": [uniq]})["groups"]
    assert (old["error_code"], old["group_state"], old["members"]) == (0, "Dead", [])
    # nor does confluent-kafka's describe_consumer_groups find it as a consumer group
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    try:
        seen = admin.describe_consumer_groups([uniq])[uniq].result(TIMEOUT)
        assert seen.members == [] and str(seen.state).endswith("DEAD")
    except Exception as e:  # librdkafka may also report the group as not found
        assert "GROUP_ID_NOT_FOUND" in str(e) or "not found" in str(e).lower(), e


# -- DescribeShareGroupOffsets / AlterShareGroupOffsets -----------------------------------


def test_alterSetsTheStartOffsetsOfAnEmptyShareGroup(node: KafkaNodeProcess, uniq: str) -> None:
    """AlterShareGroupOffsets creates the share group and sets its start offsets (a
    ShareConsumer then gets exactly the records from there); unknown topics and partitions
    are UNKNOWN_TOPIC_OR_PARTITION; with a member the group is NON_EMPTY_GROUP; a classic
    group is not a share group. DescribeShareGroupOffsets reports the start offsets (-1
    where the group has no state), all of them or those asked for."""
    _topic(node, uniq, 2, 20)  # partition p holds 10 records, values 2*offset + p
    missing = uniq + "-missing"
    answer = _alter(node, uniq, {uniq: {0: 4, 1: 7, 5: 0}, missing: {0: 0}})
    assert answer["error_code"] == 0
    assert _codes(answer) == {uniq: {0: 0, 1: 0, 5: 3}, missing: {0: 3}}
    assert answer["responses"][0]["topic_id"] == _topicId(node, uniq)
    assert _listed(node, uniq) == [("share", "share", "Empty")]
    assert _starts(_offsets(node, uniq, None)) == {uniq: {0: 4, 1: 7}}
    asked = _offsets(node, uniq, {uniq: [1, 0, 2], missing: [0]})
    assert _starts(asked) == {uniq: {0: 4, 1: 7, 2: -1}, missing: {0: -1}}
    assert [p["leader_epoch"] for p in asked["topics"][0]["partitions"]] == [0, 0, -1]
    # groups without share state: nothing for all topics, -1 for those asked
    assert _starts(_offsets(node, uniq + "-none", None)) == {}
    assert _starts(_offsets(node, uniq + "-none", {uniq: [0]})) == {uniq: {0: -1}}

    c = _consumer(node, uniq)
    c.subscribe([uniq])
    try:
        got: list = []
        _poll(c, 9, got)
        assert sorted(int(m.value()) for m in got) == [8, 10, 12, 14, 15, 16, 17, 18, 19]
        # a member: the group keeps its start offsets
        refused = _alter(node, uniq, {uniq: {0: 0}})
        assert refused["error_code"] == 68 and _codes(refused) == {uniq: {0: 68}}
        assert refused["error_message"] == "The group is not empty."
        assert _deleteOffsets(node, uniq, [uniq])["error_code"] == 68
        # implicit acknowledgement rides on the next poll: the start offsets reach the end
        deadline = time.monotonic() + TIMEOUT
        while _starts(_offsets(node, uniq, None)) != {uniq: {0: 10, 1: 10}}:
            assert time.monotonic() < deadline, _offsets(node, uniq, None)
            c.poll(0.3)
    finally:
        c.close()
    classic = uniq + "-classic"
    _classicGroup(node, classic, uniq)
    other = _alter(node, classic, {uniq: {0: 0}})
    assert (other["error_code"], _codes(other)) == (69, {uniq: {0: 69}})
    assert other["error_message"] == f"Group {classic} is not a share group."


def test_deleteOffsetsAndDeleteGroups(node: KafkaNodeProcess, uniq: str) -> None:
    """DeleteShareGroupOffsets drops a topic's state (one answer per topic; the group starts
    it again from share.auto.offset.reset), not a group's with members, nor of a group that
    does not exist or is not a share group. DeleteGroups deletes an empty share group with
    its state, refuses one with members."""
    other = uniq + "-b"
    _topic(node, uniq, 1, 5)
    _topic(node, other, 1, 5)
    _alter(node, uniq, {uniq: {0: 5}, other: {0: 2}})
    gone = _deleteOffsets(node, uniq, [uniq, uniq + "-missing", uniq])
    assert gone["error_code"] == 0
    assert [(t["topic_name"], t["error_code"]) for t in gone["responses"]] == [
        (uniq, 0),
        (uniq + "-missing", 3),
    ]
    assert _starts(_offsets(node, uniq, None)) == {other: {0: 2}}
    again = _deleteOffsets(node, uniq, [uniq])["responses"][0]
    assert (again["error_code"], again["error_message"]) == (
        3,
        "There is no offset information to delete.",
    )
    # the forgotten topic starts again from share.auto.offset.reset (earliest here)
    _earliest(node, uniq)
    c = _consumer(node, uniq)
    c.subscribe([uniq])
    try:
        got: list = []
        _poll(c, 5, got)
        assert sorted(int(m.value()) for m in got) == [0, 1, 2, 3, 4]
        assert _deleteGroups(node, uniq) == {uniq: 68}  # NON_EMPTY_GROUP
    finally:
        c.close()

    unknown = _deleteOffsets(node, uniq + "-unknown", [uniq])
    assert (unknown["error_code"], unknown["error_message"]) == (
        69,
        f"Group {uniq}-unknown not found.",
    )
    assert _listed(node, uniq + "-unknown") == []  # unlike an alter, a delete creates nothing
    classic = uniq + "-classic"
    _classicGroup(node, classic, uniq)
    assert _deleteOffsets(node, classic, [uniq])["error_code"] == 69

    # a member joined with a raw heartbeat; once it left, the group can be deleted
    member = _heartbeat(node, other, "m1", 0, [other])
    assert member["error_code"] == 0
    assert _deleteOffsets(node, other, [other])["error_code"] == 68
    assert _deleteGroups(node, other) == {other: 68}
    assert _heartbeat(node, other, "m1", -1, [other])["error_code"] == 0
    assert _deleteGroups(node, other, uniq) == {other: 0, uniq: 0}
    assert _listed(node, other) == [] and _listed(node, uniq) == []
    assert _describe(node, other)[0]["error_code"] == 69
    assert _starts(_offsets(node, uniq, None)) == {}


def test_deletingATopicDeletesItsShareState(node: KafkaNodeProcess, uniq: str) -> None:
    """A deleted topic takes the share groups' state of it along: a topic created again
    under the same name starts without it."""
    _topic(node, uniq, 1, 3)
    _alter(node, uniq, {uniq: {0: 2}})
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.delete_topics([uniq])[uniq].result(TIMEOUT)
    assert _starts(_offsets(node, uniq, None)) == {}
    _topic(node, uniq, 1, 3)
    assert _starts(_offsets(node, uniq, {uniq: [0]})) == {uniq: {0: -1}}


# -- authorization -----------------------------------------------------------------------


def _binding(
    rtype: ResourceType, name: str, op: AclOperation, permission: AclPermissionType
) -> AclBinding:
    return AclBinding(
        rtype, name, ResourcePatternType.LITERAL, "User:ANONYMOUS", "*", op, permission
    )


def test_shareAdminAuthorization(node: KafkaNodeProcess, uniq: str) -> None:
    """Kafka's rules: describing needs DESCRIBE on the group (and on the topics the group
    uses, or asked for); altering READ on the group and the topics; deleting offsets DELETE
    on the group and READ on the topics. Refusals carry GROUP_AUTHORIZATION_FAILED /
    TOPIC_AUTHORIZATION_FAILED where Kafka puts them."""
    seen, hidden, full, member = (uniq + s for s in ("-seen", "-hidden", "-full", "-member"))
    secret = uniq + "-secret"
    _topic(node, uniq, 1, 3)
    _topic(node, secret, 1, 3)
    for g in (seen, hidden, full):
        assert _codes(_alter(node, g, {uniq: {0: 1}, secret: {0: 1}})) == {
            uniq: {0: 0},
            secret: {0: 0},
        }
    bindings = [
        _binding(ResourceType.GROUP, seen, AclOperation.DESCRIBE, AclPermissionType.ALLOW),
        _binding(ResourceType.GROUP, hidden, AclOperation.DESCRIBE, AclPermissionType.DENY),
        _binding(ResourceType.GROUP, full, AclOperation.ALL, AclPermissionType.ALLOW),
        _binding(ResourceType.GROUP, member, AclOperation.ALL, AclPermissionType.ALLOW),
        _binding(ResourceType.TOPIC, secret, AclOperation.ALL, AclPermissionType.DENY),
    ]
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    for f in admin.create_acls(bindings).values():
        f.result(TIMEOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _describe(node, hidden)[0]["error_code"] != 30:
            assert time.monotonic() < deadline, "the bindings did not take effect"
            time.sleep(0.1)
        ok, denied = _describe(node, seen, hidden, ops=True)
        assert ok["error_code"] == 0 and ok["authorized_operations"] == 1 << DESCRIBE
        assert (denied["error_code"], denied["members"]) == (30, [])

        # DescribeShareGroupOffsets: the group, then each topic
        assert _offsets(node, hidden, None)["error_code"] == 30
        assert _starts(_offsets(node, seen, None)) == {uniq: {0: 1}}  # secret left out
        asked = _offsets(node, seen, {uniq: [0], secret: [0]})
        assert [
            (t["topic_name"], t["partitions"][0]["error_code"], t["partitions"][0]["start_offset"])
            for t in asked["topics"]
        ] == [(uniq, 0, 1), (secret, 29, -1)]

        # AlterShareGroupOffsets: READ on the group (DESCRIBE is not enough), READ on topics
        refused = _alter(node, seen, {uniq: {0: 0}})
        assert (refused["error_code"], _codes(refused)) == (30, {uniq: {0: 30}})
        mixed = _alter(node, full, {uniq: {0: 2}, secret: {0: 0}})
        assert (mixed["error_code"], _codes(mixed)) == (0, {uniq: {0: 0}, secret: {0: 29}})
        assert _starts(_offsets(node, full, {uniq: [0]})) == {uniq: {0: 2}}

        # DeleteShareGroupOffsets: DELETE on the group, READ on topics
        assert _deleteOffsets(node, seen, [uniq])["error_code"] == 30
        partly = _deleteOffsets(node, full, [secret, uniq])
        assert [(t["topic_name"], t["error_code"]) for t in partly["responses"]] == [
            (secret, 29),
            (uniq, 0),
        ]
        # ShareGroupDescribe of a group whose member uses a topic the client may not describe
        assert _heartbeat(node, member, "m1", 0, [secret])["error_code"] == 0
        (used,) = _describe(node, member)
        assert (used["error_code"], used["members"]) == (29, [])
        assert _heartbeat(node, member, "m1", -1, [secret])["error_code"] == 0
    finally:
        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in bindings
        ]
        for f in admin.delete_acls(filters).values():
            f.result(TIMEOUT)


def test_closingConsumerKeepsItsLastAcknowledgements(node: KafkaNodeProcess, uniq: str) -> None:
    """librdkafka's ShareConsumer sends its leaving heartbeat and its pending
    acknowledgements (ShareAcknowledge, epoch -1) at the same time when it closes: the
    share session outlives the membership until that request, so records acknowledged just
    before close() are not delivered again, whichever request comes first."""
    _topic(node, uniq, 1, 0)
    _earliest(node, uniq)
    p = Producer({"bootstrap.servers": node.bootstrap})
    for done in (5, 10, 15):
        for i in range(done - 5, done):
            p.produce(uniq, b"%d" % i)
        assert p.flush(TIMEOUT) == 0
        c = _consumer(node, uniq, **{"share.acknowledgement.mode": "explicit"})
        c.subscribe([uniq])
        got: list = []
        _poll(c, 5, got)
        assert sorted(int(m.value()) for m in got) == list(range(done - 5, done))
        for m in got:
            c.acknowledge(m, AcknowledgeType.ACCEPT)
        c.close()  # no commit: the acknowledgements go with the close
        assert _starts(_offsets(node, uniq, None)) == {uniq: {0: done}}


# -- the in-flight window ------------------------------------------------------------------


def test_inFlightWindowIsBounded(node: KafkaNodeProcess, uniq: str) -> None:
    """share_partition_max_record_locks (100 here) bounds the records between the start
    offset and the end of the in-flight window: a member asking for 500 gets 100; once the
    first 50 are acknowledged, the window moves on by 50."""
    _topic(node, uniq, 1, 160, **{"linger.ms": 0, "batch.num.messages": 1})
    _earliest(node, uniq)
    topicId = _topicId(node, uniq)
    assert _heartbeat(node, uniq, "m1", 0, [uniq])["error_code"] == 0

    def fetch(epoch: int, acks: list) -> list[dict]:
        body = {
            "group_id": uniq,
            "member_id": "m1",
            "share_session_epoch": epoch,
            "max_wait_ms": 0,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "max_records": 500,
            "batch_size": 500,
            "topics": [
                {
                    "topic_id": topicId,
                    "partitions": [{"partition_index": 0, "acknowledgement_batches": acks}],
                }
            ],
            "forgotten_topics_data": [],
        }
        answer = kafkaRequest(node.bootstrap, 78, 1, body)
        assert answer["error_code"] == 0, answer
        parts = [p for t in answer["responses"] for p in t["partitions"]]
        return [r for p in parts for r in p["acquired_records"]]

    assert fetch(0, []) == [{"first_offset": 0, "last_offset": 99, "delivery_count": 1}]
    assert fetch(1, []) == []  # the window is full
    accept = [{"first_offset": 0, "last_offset": 49, "acknowledge_types": [1]}]
    assert fetch(2, accept) == [{"first_offset": 100, "last_offset": 149, "delivery_count": 1}]
    assert _starts(_offsets(node, uniq, None)) == {uniq: {0: 50}}
    assert _heartbeat(node, uniq, "m1", -1, [uniq])["error_code"] == 0


def test_storedStateRoundTrip() -> None:
    """The stored form of a share partition: runs of (state, delivery count) read back."""

    class R:
        def __init__(self, state: int, count: int) -> None:
            self.state, self.count = state, count

    records = {5: R(2, 1), 6: R(2, 1), 7: R(1, 3), 8: R(0, 2), 9: R(0, 2), 11: R(3, 5)}
    import uuid

    tid = uuid.uuid4()
    value = dumpPartition(5, 12, records, tid)
    back = StoredPartition(b"p\0group\0topic\0" + b"3", value)
    assert (back.groupId, back.topic, back.index, back.topicId) == ("group", "topic", 3, tid)
    assert (back.start, back.next) == (5, 12)
    assert back.runs == [(5, 6, 2, 1), (7, 7, 1, 3), (8, 9, 0, 2), (11, 11, 3, 5)]
    with pytest.raises(ValueError):
        StoredPartition(
            b"p\0g\0t\0" + b"0",
            b'{"id": "%s", "start": 9, "next": 3, "runs": []}' % str(tid).encode(),
        )


# -- restart -------------------------------------------------------------------------------


_STARTED = "[robustmq.core.broker.Broker#info] broker "


def _restart(node: KafkaNodeProcess) -> None:
    before = node.output().count(_STARTED)
    node.stop()
    node.start()
    deadline = time.monotonic() + TIMEOUT
    while node.output().count(_STARTED) <= before:
        assert time.monotonic() < deadline, "the node did not start again"
        time.sleep(0.05)


def test_restartContinuesTheShareGroup(uniq: str) -> None:
    """Segment store: a ShareConsumer acquires a topic and acknowledges half of it; the node
    restarts (the consumer still holding the other half); a new ShareConsumer of the group
    gets exactly the unacknowledged half, each record with its delivery count raised (1
    before the restart, 2 after), and nothing twice. The group, its start offsets and its
    configs are there after the restart."""
    data = tempfile.mkdtemp(prefix="share-restart-")
    node = KafkaNodeProcess('[storage]\nbackend = "segment"\nsync = "always"\n', dataDir=data)
    node.start()
    try:
        _topic(node, uniq, 2, 30)
        _earliest(node, uniq)
        first = _consumer(node, uniq, **{"share.acknowledgement.mode": "explicit"})
        first.subscribe([uniq])
        got: list = []
        _poll(first, 30, got)
        assert sorted(int(m.value()) for m in got) == list(range(30))
        assert {m.delivery_count() for m in got} == {1}
        for m in got:
            if int(m.value()) < 16:
                first.acknowledge(m, AcknowledgeType.ACCEPT)
        first.commit_sync(TIMEOUT)
        before = _starts(_offsets(node, uniq, None))
        assert before == {uniq: {0: 8, 1: 8}}  # values 0..15 are offsets 0..7 of each

        _restart(node)  # the first consumer still holds values 16..29
        first.close()
        assert _listed(node, uniq) == [("share", "share", "Empty")]
        assert _starts(_offsets(node, uniq, None)) == before
        # read back at the first request after the start
        assert "restored 1 share groups with 2 share partitions" in node.output()

        second = _consumer(node, uniq, **{"share.acknowledgement.mode": "explicit"})
        second.subscribe([uniq])
        try:
            rest: list = []
            _poll(second, 14, rest)
            assert sorted(int(m.value()) for m in rest) == list(range(16, 30))
            assert {m.delivery_count() for m in rest} == {2}
            for m in rest:
                second.acknowledge(m, AcknowledgeType.ACCEPT)
            second.commit_sync(TIMEOUT)
            assert _starts(_offsets(node, uniq, None)) == {uniq: {0: 15, 1: 15}}
            more: list = []
            _poll(second, 1, more, seconds=2)
            assert more == []  # nothing acknowledged before the restart comes again
        finally:
            second.close()
    finally:
        node.cleanup()
