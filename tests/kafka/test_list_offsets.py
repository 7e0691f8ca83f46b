"""ListOffsets by time answers with the record itself (KIP-79) and MAX_TIMESTAMP with the
record of the largest timestamp (KIP-734), with kafka-python and confluent-kafka."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka.admin import OffsetSpec as KpOffsetSpec
from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaAdminClient, KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

BASE = 1_700_000_000_000
#: timestamps of the records at offsets 0..5, produced as one batch; not monotonic
STAMPS = [BASE + 1000, BASE + 2000, BASE + 9000, BASE + 3000, BASE + 4000, BASE + 5000]


def _produceOneBatch(bootstrap: str, topic: str, codec: str = "none") -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "compression.type": codec})
    for i, ts in enumerate(STAMPS):
        p.produce(topic, value=b"v%d" % i, partition=0, timestamp=ts)
    assert p.flush(TIMEOUT) == 0


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd", "snappy"])
def test_offsetsForTimesConfluent(kafkaNode: KafkaNodeProcess, uniq: str, codec: str) -> None:
    """A time inside one batch answers with the first record at or after it, not the batch start."""
    _produceOneBatch(kafkaNode.bootstrap, uniq, codec)
    c = Consumer({"bootstrap.servers": kafkaNode.bootstrap, "group.id": uniq})
    try:
        asked = {
            BASE + 1500: 1,  # between records 0 and 1
            BASE + 2000: 1,  # exactly record 1
            BASE + 2500: 2,  # record 2 (9000) is the first at or after it
            BASE + 9000: 2,
            BASE + 9001: -1,  # nothing that late
        }
        for ts, want in asked.items():
            got = c.offsets_for_times([TopicPartition(uniq, 0, ts)], TIMEOUT)
            assert got[0].offset == want, (ts, got[0].offset)
    finally:
        c.close()


def test_offsetsForTimesKafkaPython(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python's offsets_for_times gets the record's offset and timestamp."""
    _produceOneBatch(kafkaNode.bootstrap, uniq)
    c = KafkaConsumer(bootstrap_servers=kafkaNode.bootstrap)
    try:
        tp = KpTopicPartition(uniq, 0)
        got = c.offsets_for_times({tp: BASE + 3500})[tp]
        assert (got.offset, got.timestamp) == (2, BASE + 9000)
        got = c.offsets_for_times({tp: BASE + 1001})[tp]
        assert (got.offset, got.timestamp) == (1, BASE + 2000)
    finally:
        c.close()


def test_maxTimestampBothAdmins(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """MAX_TIMESTAMP (-3) is the record with the largest timestamp, not the last one."""
    _produceOneBatch(kafkaNode.bootstrap, uniq)
    p = Producer({"bootstrap.servers": kafkaNode.bootstrap})
    p.produce(uniq, value=b"later", partition=0, timestamp=BASE + 8000)  # a second batch
    assert p.flush(TIMEOUT) == 0
    admin = AdminClient({"bootstrap.servers": kafkaNode.bootstrap})
    fut = admin.list_offsets({TopicPartition(uniq, 0): OffsetSpec.max_timestamp()})
    info = fut[TopicPartition(uniq, 0)].result(TIMEOUT)
    assert (info.offset, info.timestamp) == (2, BASE + 9000)
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        tp = KpTopicPartition(uniq, 0)
        got = kp.list_partition_offsets({tp: KpOffsetSpec.MAX_TIMESTAMP})[tp]
        assert (got.offset, got.timestamp) == (2, BASE + 9000)
    finally:
        kp.close()
