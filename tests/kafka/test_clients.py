"""End-to-end: real Kafka clients produce and consume through a real node over loopback."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from kafka.admin import NewTopic as KpNewTopic
from kafkanode import TIMEOUT, KafkaNodeProcess

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer


def consumeConfluent(bootstrap: str, topic: str, n: int, **extra: object) -> list:
    """Read C{n} messages of C{topic} from the start with a confluent consumer."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": extra.pop("group", f"g-{topic}"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    c = Consumer(conf)
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(str(m.error()))
            got.append(m)
    finally:
        c.close()
    return got


def test_kafkaPythonProduceConsume(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python produces (auto-creating the topic) and reads back in order."""
    p = KafkaProducer(bootstrap_servers=kafkaNode.bootstrap)
    futures = [p.send(uniq, key=b"k%d" % i, value=b"v%d" % i) for i in range(50)]
    p.flush(TIMEOUT)
    offsets = [f.get(TIMEOUT).offset for f in futures]
    assert offsets == list(range(50))
    p.close()
    c = KafkaConsumer(
        uniq,
        bootstrap_servers=kafkaNode.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT * 1000),
        enable_auto_commit=False,
    )
    got = []
    for m in c:
        got.append((m.offset, m.key, m.value))
        if len(got) == 50:
            break
    c.close()
    assert got == [(i, b"k%d" % i, b"v%d" % i) for i in range(50)]


def test_confluentProduceConsume(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """librdkafka produces with headers and reads back keys, values and headers."""
    p = Producer({"bootstrap.servers": kafkaNode.bootstrap, "linger.ms": 5})
    for i in range(100):
        p.produce(uniq, key=b"k%d" % i, value=b"x" * i, headers=[("h", b"%d" % i)])
    assert p.flush(TIMEOUT) == 0
    got = consumeConfluent(kafkaNode.bootstrap, uniq, 100)
    assert [m.offset() for m in got] == list(range(100))
    assert [m.value() for m in got] == [b"x" * i for i in range(100)]
    assert got[7].headers() == [("h", b"7")]


def test_crossClients(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """What kafka-python writes, librdkafka reads, and the other way round."""
    p = KafkaProducer(bootstrap_servers=kafkaNode.bootstrap)
    for i in range(10):
        p.send(uniq, value=b"kp%d" % i)
    p.flush(TIMEOUT)
    p.close()
    cp = Producer({"bootstrap.servers": kafkaNode.bootstrap})
    for i in range(10):
        cp.produce(uniq, value=b"ck%d" % i)
    assert cp.flush(TIMEOUT) == 0
    got = consumeConfluent(kafkaNode.bootstrap, uniq, 20)
    assert [m.value() for m in got] == [b"kp%d" % i for i in range(10)] + [
        b"ck%d" % i for i in range(10)
    ]


def test_listOffsetsAndSeek(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Earliest, latest and by-timestamp offsets; a consumer starting mid-batch."""
    p = Producer({"bootstrap.servers": kafkaNode.bootstrap, "linger.ms": 50})
    for i in range(30):
        p.produce(uniq, value=b"%d" % i, timestamp=1_700_000_000_000 + i * 1000)
    assert p.flush(TIMEOUT) == 0
    c = Consumer({"bootstrap.servers": kafkaNode.bootstrap, "group.id": uniq})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(uniq, 0), timeout=TIMEOUT)
        assert (low, high) == (0, 30)
        found = c.offsets_for_times([TopicPartition(uniq, 0, 1_700_000_000_000 + 20_000)], TIMEOUT)
        # the first batch holding a record at or after the time starts at or before record 20
        assert 0 <= found[0].offset <= 20
        late = c.offsets_for_times([TopicPartition(uniq, 0, 1_700_000_000_000 + 40_000)], TIMEOUT)
        assert late[0].offset == -1
        c.assign([TopicPartition(uniq, 0, 17)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 13 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(int(m.value()))
        assert got == list(range(17, 30))
    finally:
        c.close()


def test_longPollWakesOnProduce(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """A consumer waiting at the end of the log gets a record produced later."""
    admin = AdminClient({"bootstrap.servers": kafkaNode.bootstrap})
    admin.create_topics([NewTopic(uniq, 1, 1)])[uniq].result(TIMEOUT)
    c = Consumer(
        {
            "bootstrap.servers": kafkaNode.bootstrap,
            "group.id": uniq,
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5000,
        }
    )
    c.assign([TopicPartition(uniq, 0, 0)])
    try:
        assert c.poll(1.0) is None
        p = Producer({"bootstrap.servers": kafkaNode.bootstrap})
        p.produce(uniq, value=b"late")
        assert p.flush(TIMEOUT) == 0
        m = None
        deadline = time.monotonic() + TIMEOUT
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.5)
        assert m is not None and m.value() == b"late"
    finally:
        c.close()


def test_adminTopics(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Create, list, grow, describe and delete topics with both admin clients."""
    admin = AdminClient({"bootstrap.servers": kafkaNode.bootstrap})
    fs = admin.create_topics([NewTopic(uniq, 3, 1, config={"retention.ms": "60000"})])
    fs[uniq].result(TIMEOUT)
    with pytest.raises(Exception, match="already exists"):
        admin.create_topics([NewTopic(uniq, 3, 1)])[uniq].result(TIMEOUT)
    md = admin.list_topics(timeout=TIMEOUT)
    assert len(md.topics[uniq].partitions) == 3
    admin.create_partitions([NewPartitions(uniq, 5)])[uniq].result(TIMEOUT)
    md = admin.list_topics(timeout=TIMEOUT)
    assert len(md.topics[uniq].partitions) == 5
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, uniq)
    configs = admin.describe_configs([res])[res].result(TIMEOUT)
    assert configs["retention.ms"].value == "60000"
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        other = uniq + "-kp"
        kp.create_topics([KpNewTopic(other, 2, 1)])
        assert {uniq, other} <= set(kp.list_topics())
        kp.delete_topics([other])
        admin.delete_topics([uniq])[uniq].result(TIMEOUT)
        assert uniq not in set(kp.list_topics())
        assert other not in set(kp.list_topics())
    finally:
        kp.close()


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Debian's kcat (librdkafka 2.0) produces and consumes."""
    lines = "".join(f"line{i}\n" for i in range(20))
    subprocess.run(
        ["kcat", "-b", kafkaNode.bootstrap, "-P", "-t", uniq],
        input=lines.encode(),
        check=True,
        timeout=TIMEOUT,
    )
    out = subprocess.run(
        ["kcat", "-b", kafkaNode.bootstrap, "-C", "-t", uniq, "-o", "beginning", "-c", "20", "-e"],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    assert out.stdout.decode().split() == [f"line{i}" for i in range(20)]
