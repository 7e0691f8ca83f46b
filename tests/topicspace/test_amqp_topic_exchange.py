"""AMQP amq.topic ↔ MQTT, both ways, with pika, mosquitto_pub/sub and kcat (docs/topic-space.md)."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as paho
import pika
from topicspacenode import TIMEOUT, TopicSpaceNode

from robustmq.testing.mosquitto import MosquittoSub
from robustmq.testing.paho import PahoClient


def _channel(node: TopicSpaceNode) -> tuple[pika.BlockingConnection, object]:
    conn = pika.BlockingConnection(pika.URLParameters(node.amqpUrl))
    return conn, conn.channel()


def _get(channel: object, queue: str, timeout: float = TIMEOUT) -> tuple:
    """basic_get until a message arrives (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = channel.basic_get(queue, auto_ack=True)  # type: ignore[attr-defined]
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError(f"nothing in {queue} after {timeout}s")


def test_mosquittoPubReachesQueueBoundToAmqTopic(node: TopicSpaceNode) -> None:
    """A queue bound with sensors.# gets every MQTT publish under sensors/ (a.b.c keys)."""
    room = uuid.uuid4().hex[:8]
    conn, ch = _channel(node)
    try:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", f"sensors.{room}.#")
        node.mosquittoPub(f"sensors/{room}/kitchen/temp", "21.5", "-q", "1")
        node.mosquittoPub(f"sensors/{room}/v1.2/x", "dotted", "-q", "0")
        node.mosquittoPub(f"elsewhere/{room}", "not bound", "-q", "1")
        m1, p1, b1 = _get(ch, q)
        m2, p2, b2 = _get(ch, q)
        assert (m1.routing_key, b1) == (f"sensors.{room}.kitchen.temp", b"21.5")
        assert m1.exchange == "amq.topic"
        assert p1.delivery_mode == 2 and p1.headers["x-mqtt-publish-qos"] == 1
        # A '.' inside an MQTT level is a '/' in the routing key (RabbitMQ's convention).
        assert (m2.routing_key, b2) == (f"sensors.{room}.v1/2.x", b"dotted")
        assert p2.delivery_mode == 1
        assert ch.basic_get(q, auto_ack=True)[0] is None
    finally:
        conn.close()


def test_pikaPublishReachesMosquittoSubAndMappedKafkaTopic(node: TopicSpaceNode) -> None:
    """An AMQP publish to amq.topic reaches MQTT subscribers of sensors/# and the Kafka topic
    mapped to sensors/#, and queues bound to amq.topic, once each."""
    room = uuid.uuid4().hex[:8]
    sub = MosquittoSub(node.port, "mqttv311", ["-t", f"sensors/{room}/#", "-q", "1", "-C", "1"])
    conn, ch = _channel(node)
    try:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", f"sensors.{room}.*.temp")
        ch.queue_bind(q, "amq.topic", f"sensors.{room}.#")  # overlapping: still one copy
        sub.waitSubscribed()
        ch.confirm_delivery()
        ch.basic_publish(
            "amq.topic",
            f"sensors.{room}.hall.temp",
            b"19.0",
            pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
        lines, flags = sub.finish(TIMEOUT)
        assert lines == [f"sensors/{room}/hall/temp 19.0"]
        assert flags[0][2] == 1  # persistent → QoS 1
        method, _, body = _get(ch, q)
        assert (method.routing_key, body) == (f"sensors.{room}.hall.temp", b"19.0")
        assert ch.basic_get(q, auto_ack=True)[0] is None
    finally:
        sub.kill()
        conn.close()
    records = [r for r in node.kafkaRecords("sensors") if room in (r.get("key") or "")]
    assert [(r["key"], r["payload"]) for r in records] == [(f"sensors/{room}/hall/temp", "19.0")]


def test_propertiesAndHeadersMapBothWays(node: TopicSpaceNode) -> None:
    """MQTT 5 user properties, content type, correlation data, response topic and message
    expiry ↔ AMQP headers, content-type, correlation-id, reply-to and expiration."""
    room = uuid.uuid4().hex[:8]
    conn, ch = _channel(node)
    mqtt = PahoClient(node.port, f"props-{room}", protocol=paho.MQTTv5)
    try:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", f"props.{room}.#")
        mqtt.connect()
        mqtt.subscribe(f"props/{room}/from-amqp", 1)
        mqtt.publish(
            f"props/{room}/from-mqtt",
            b"m",
            1,
            properties={
                "UserProperty": [("site", "north"), ("unit", "C")],
                "ContentType": "text/plain",
                "CorrelationData": b"corr-1",
                "ResponseTopic": f"replies/{room}/x",
                "MessageExpiryInterval": 60,
            },
        )
        _, props, body = _get(ch, q)
        assert body == b"m"
        assert props.headers["site"] == "north" and props.headers["unit"] == "C"
        assert props.content_type == "text/plain"
        assert props.correlation_id == "corr-1"
        assert props.reply_to == f"replies.{room}.x"
        assert 0 < int(props.expiration) <= 60_000
        ch.basic_publish(
            "amq.topic",
            f"props.{room}.from-amqp",
            b"a",
            pika.BasicProperties(
                headers={"site": "south", "n": 3},
                content_type="application/json",
                correlation_id="corr-2",
                reply_to=f"replies.{room}.y",
                expiration="30000",
                delivery_mode=2,
            ),
        )
        message = mqtt.expect(TIMEOUT)
        assert message.payload == b"a" and message.qos == 1
        p = message.properties
        assert ("site", "south") in p.UserProperty and ("n", "3") in p.UserProperty
        assert p.ContentType == "application/json"
        assert p.CorrelationData == b"corr-2"
        assert p.ResponseTopic == f"replies/{room}/y"
        assert 0 < p.MessageExpiryInterval <= 30
    finally:
        mqtt.disconnect()
        conn.close()
