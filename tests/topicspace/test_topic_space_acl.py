"""One authorisation model: the MQTT topic ACL holds on every path into and out of the topic
space (AMQP amq.topic, mapped Kafka topics), for a user denied sensors/secret/#."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pika
import pika.exceptions
import pytest
from topicspacenode import TIMEOUT, TopicSpaceNode

from robustmq.testing.process import freePort, waitForPort

CTL = str(Path(sys.executable).with_name("robustmq"))
PASSWORDS = {"mallory": "mallory-pw-1", "alice": "alice-pw-1"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopicSpaceNode]:
    rules = tmp_path_factory.mktemp("acl") / "acl.toml"
    rules.write_text(
        '[[rules]]\npermission = "deny"\naction = "all"\ntopics = ["sensors/secret/#"]\n'
        'username = "mallory"\n'
    )
    admin = freePort()
    n = TopicSpaceNode(
        f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {admin}

[auth]
chain = ["users", "anonymous"]

[acl]
file = "{rules}"
"""
    ).start()
    try:
        waitForPort("127.0.0.1", admin)
        for user, password in PASSWORDS.items():
            done = subprocess.run(
                [CTL, "ctl", "--url", f"http://127.0.0.1:{admin}", "user", "add", user],
                input=password + "\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
        yield n
    finally:
        n.cleanup()


def _amqp(node: TopicSpaceNode, user: str) -> pika.BlockingConnection:
    creds = pika.PlainCredentials(user, PASSWORDS[user])
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", node.amqpPort, "/", creds)
    )


@pytest.mark.parametrize("key", ["sensors.secret.#", "sensors.#", "#", "sensors.*.door"])
def test_amqpBindingThatReachesDeniedTopicsIsRefused(node: TopicSpaceNode, key: str) -> None:
    """A binding on amq.topic is a subscription the broker cannot filter per message: it is
    refused (403) when any topic under it is denied."""
    conn = _amqp(node, "mallory")
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_bind(q, "amq.topic", key)
        assert refused.value.reply_code == 403
        assert "read access to topic" in refused.value.reply_text
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", "sensors.public.#")  # allowed
    finally:
        conn.close()


def test_amqpPublishToDeniedTopicIsRefused(node: TopicSpaceNode) -> None:
    conn = _amqp(node, "mallory")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish("amq.topic", "sensors.secret.code", b"x")
        assert refused.value.reply_code == 403
        assert "write access to topic" in refused.value.reply_text
    finally:
        conn.close()
    conn = _amqp(node, "alice")
    try:
        conn.channel().basic_publish("amq.topic", "sensors.secret.code", b"alice may")
    finally:
        conn.close()


def _saslConf(node: TopicSpaceNode, user: str) -> dict[str, str]:
    return {
        "bootstrap.servers": node.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": PASSWORDS[user],
    }


def _consumeError(node: TopicSpaceNode, user: str, topic: str) -> int | None:
    """The error code a consumer of C{topic} gets (None: it read a record or reached the end)."""
    consumer = confluent_kafka.Consumer(
        {
            **_saslConf(node, user),
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p) for p in range(3)])
        for _ in range(int(TIMEOUT * 5)):
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is None or error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                return None
            return error.code()
        raise AssertionError("the consumer saw neither a record nor an error")
    finally:
        consumer.close()


def test_kafkaConsumerOfMappedTopicNeedsReadAccessToTheWholeFilter(node: TopicSpaceNode) -> None:
    """ "sensors" carries sensors/# (secret topics too): mallory may not read it, alice may."""
    node.mosquittoPub("sensors/public/x", "seed", "-q", "1")  # the topic exists
    assert (
        _consumeError(node, "mallory", "sensors")
        == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED
    )
    assert _consumeError(node, "alice", "sensors") is None


def test_kafkaProduceKeyedByDeniedTopicIsRefused(node: TopicSpaceNode) -> None:
    """A record keyed sensors/secret/... would be an MQTT publish to a denied topic."""
    results: list[object] = []
    producer = confluent_kafka.Producer({**_saslConf(node, "mallory"), "acks": "all"})
    producer.produce(
        "sensors", b"leak", key=b"sensors/secret/code", on_delivery=lambda e, m: results.append(e)
    )
    producer.flush(TIMEOUT)
    assert results and results[0] is not None
    assert results[0].code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED
    # librdkafka remembers a topic authorization failure: a new producer for the next try.
    results.clear()
    producer = confluent_kafka.Producer({**_saslConf(node, "mallory"), "acks": "all"})
    producer.produce(
        "sensors", b"fine", key=b"sensors/public/x", on_delivery=lambda e, m: results.append(e)
    )
    producer.flush(TIMEOUT)
    assert results == [None]
