"""Messages dropped by policy are not silent: logged (first, then summaries), counted per
session and per queue in the API, and by reason in /api/v1/status."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pika
from adminhelpers import Paho, ProtocolNode, waitFor
from paho.mqtt.enums import CallbackAPIVersion


def test_offline_session_overflow_is_logged_once_and_counted() -> None:
    node = ProtocolNode(mqtt="sys_interval = 0\nmax_queued_messages = 10").start()
    try:
        parked = Paho(node.port, "parked", clean=False)
        parked.subscribe("drops/#", 1)
        parked.close()
        waitFor(lambda: not node.get("/api/v1/sessions/parked")["online"], "the disconnect")

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drops-pub")
        pub.connect("127.0.0.1", node.port)
        pub.loop_start()
        try:
            infos = [pub.publish("drops/t", f"m{i}".encode(), qos=1) for i in range(100)]
            for info in infos:
                info.wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()

        session = node.get("/api/v1/sessions/parked")
        assert session["queued"] == 10
        assert session["dropped"] == 90
        status = node.get("/api/v1/status")["stats"]
        assert status["dropped_by_reason"]["mqtt/queue_overflow"] == 90
        listed = node.get("/api/v1/sessions?client_id=parked")["data"]
        assert listed[0]["dropped"] == 90
        log = node.process.waitForOutput("parked: queue full")
        lines = [line for line in log.splitlines() if "parked: queue full" in line]
        assert len(lines) == 1, lines
        assert "max_queued_messages = 10" in lines[0] and "queue_overflow = drop_new" in lines[0]
    finally:
        node.stop()


def test_amqp_overflow_logged_and_drop_reasons_counted() -> None:
    node = ProtocolNode().start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
        try:
            ch = conn.channel()
            ch.queue_declare("bounded", arguments={"x-max-length": 2})
            for i in range(6):
                ch.basic_publish("", "bounded", f"m{i}".encode())
            # Celery's first publish goes to an exchange with no queue bound yet.
            ch.exchange_declare("celeryev", "topic")
            ch.basic_publish("celeryev", "worker.online", b"{}")
            ch.queue_declare("short", arguments={"x-message-ttl": 1})
            ch.basic_publish("", "short", b"expires")
        finally:
            conn.close()
        q = node.get("/api/v1/amqp/queues/%2F/bounded")
        assert q["dropped"] == {"overflow": 4}
        log = node.process.waitForOutput("AMQP queue bounded in vhost / is full")
        assert log.count("AMQP queue bounded in vhost / is full") == 1
        reasons = waitFor(
            lambda: (
                (r := node.get("/api/v1/status")["stats"]["dropped_by_reason"]).get("amqp/expired")
                and r
            ),
            "the expired message to be dropped",
        )
        assert reasons["amqp/overflow"] == 4
        assert reasons["amqp/unroutable"] == 1
        assert reasons["amqp/expired"] == 1
    finally:
        node.stop()
