"""Fetch: topic ids (KIP-516), incremental fetch sessions (KIP-227), kafka-python (which
uses sessions) and librdkafka (which uses topic ids) reading through them."""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from kafka import KafkaConsumer, KafkaProducer


def _fetch(topics: list, sessionId: int = 0, epoch: int = -1, **extra: object) -> dict:
    return {
        "replica_id": -1,
        "max_wait_ms": 0,
        "min_bytes": 0,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "session_id": sessionId,
        "session_epoch": epoch,
        "topics": topics,
        "forgotten_topics_data": [],
        **extra,
    }


def _part(index: int, offset: int) -> dict:
    return {"partition": index, "fetch_offset": offset, "partition_max_bytes": 1 << 20}


def _produce(node: KafkaNodeProcess, topic: str, values: list[bytes], partition: int = 0) -> None:
    p = Producer({"bootstrap.servers": node.bootstrap})
    for v in values:
        p.produce(topic, v, partition=partition)
    assert p.flush(TIMEOUT) == 0


def test_topicIdsInMetadataAndFetch(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Metadata v12 gives a real topic id; Fetch v13 by that id reads; an unknown id errs."""
    _produce(kafkaNode, uniq, [b"a", b"b"])
    md = kafkaRequest(
        kafkaNode.bootstrap,
        3,
        12,
        {"topics": [{"topic_id": None, "name": uniq}], "allow_auto_topic_creation": False},
    )
    (topic,) = md["topics"]
    assert topic["topic_id"] != uuid.UUID(int=0)
    byId = kafkaRequest(
        kafkaNode.bootstrap, 3, 12, {"topics": [{"topic_id": topic["topic_id"], "name": None}]}
    )
    assert byId["topics"][0]["name"] == uniq
    got = kafkaRequest(
        kafkaNode.bootstrap,
        1,
        13,
        _fetch([{"topic_id": topic["topic_id"], "partitions": [_part(0, 0)]}]),
    )
    (t,) = got["responses"]
    assert t["topic_id"] == topic["topic_id"]
    assert t["partitions"][0]["high_watermark"] == 2 and t["partitions"][0]["records"]
    bogus = uuid.uuid4()
    got = kafkaRequest(
        kafkaNode.bootstrap, 1, 13, _fetch([{"topic_id": bogus, "partitions": [_part(0, 0)]}])
    )
    assert got["responses"][0]["partitions"][0]["error_code"] == 100  # UNKNOWN_TOPIC_ID


def test_incrementalFetchSession(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Open a session, then incremental fetches list only partitions with news (KIP-227)."""
    _produce(kafkaNode, uniq, [b"x"], partition=0)
    full = kafkaRequest(
        kafkaNode.bootstrap,
        1,
        12,
        _fetch([{"topic": uniq, "partitions": [_part(0, 1)]}], sessionId=0, epoch=0),
    )
    sid = full["session_id"]
    assert full["error_code"] == 0 and sid > 0
    assert full["responses"][0]["partitions"][0]["high_watermark"] == 1
    quiet = kafkaRequest(kafkaNode.bootstrap, 1, 12, _fetch([], sessionId=sid, epoch=1))
    assert quiet["error_code"] == 0 and quiet["responses"] == []  # nothing changed
    _produce(kafkaNode, uniq, [b"y"], partition=0)
    news = kafkaRequest(kafkaNode.bootstrap, 1, 12, _fetch([], sessionId=sid, epoch=2))
    (t,) = news["responses"]
    assert t["partitions"][0]["high_watermark"] == 2 and t["partitions"][0]["records"]
    stale = kafkaRequest(kafkaNode.bootstrap, 1, 12, _fetch([], sessionId=sid, epoch=2))
    assert stale["error_code"] == 71  # INVALID_FETCH_SESSION_EPOCH
    gone = kafkaRequest(kafkaNode.bootstrap, 1, 12, _fetch([], sessionId=sid + 1, epoch=1))
    assert gone["error_code"] == 70  # FETCH_SESSION_ID_NOT_FOUND


def test_clientsReadThroughSessionsAndIds(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python (incremental sessions) and librdkafka (Fetch by topic id) read everything."""
    values = [b"%d" % i for i in range(300)]
    kp = KafkaProducer(bootstrap_servers=kafkaNode.bootstrap, linger_ms=5)
    for i, v in enumerate(values):
        kp.send(uniq, v, partition=0)
        if i % 100 == 99:
            kp.flush(TIMEOUT)  # several fetches, so sessions go incremental
    kp.close()
    c = KafkaConsumer(
        uniq,
        bootstrap_servers=kafkaNode.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT * 1000),
        max_partition_fetch_bytes=2048,
    )
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == len(values):
            break
    c.close()
    assert got == values
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger(f"rdkafka-{uniq}")
    log.addHandler(Capture())
    log.setLevel(logging.DEBUG)
    rc = Consumer(
        {
            "bootstrap.servers": kafkaNode.bootstrap,
            "group.id": uniq,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": 2048,
            "debug": "protocol",
        },
        logger=log,
    )
    rc.assign([TopicPartition(uniq, 0, 0)])
    seen = []
    try:
        while len(seen) < len(values):
            m = rc.poll(TIMEOUT)
            assert m is not None
            if not m.error():
                seen.append(m.value())
    finally:
        rc.close()
    assert seen == values
    fetches = [x for x in lines if "Sent FetchRequest" in x]
    assert fetches and all("(v16," in x for x in fetches), fetches[:3]  # by topic id
