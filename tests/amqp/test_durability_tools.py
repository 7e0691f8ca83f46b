"""Persistent messages survive a restart with the segment store; Debian's amqp-tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))

TIMEOUT = 10.0


def test_persistentMessagesSurviveRestart(amqpNode):
    AMQPNode = type(amqpNode)  # the conftest helper class, without importing conftest by name
    dataDir = tempfile.mkdtemp(prefix="robustmq-amqp-")
    extra = '[storage]\nbackend = "segment"\nsync = "always"\n'
    node = AMQPNode(extra, dataDir=dataDir).start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("durable.ex", "direct", durable=True)
        ch.queue_declare("durable.q", durable=True)
        ch.queue_bind("durable.q", "durable.ex", "k")
        persistent = pika.BasicProperties(delivery_mode=2)
        for i in range(5):
            ch.basic_publish("durable.ex", "k", f"p{i}".encode(), persistent)
        ch.basic_publish("durable.ex", "k", b"transient")
        first = ch.basic_get("durable.q")
        ch.basic_ack(first[0].delivery_tag)  # p0 is gone for good
        conn.close()
        node.stop()

        node = AMQPNode(extra, dataDir=dataDir)
        node.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort))
        ch = conn.channel()
        ch.queue_declare("durable.q", durable=True, passive=True)
        ch.basic_publish("durable.ex", "k", b"after", persistent)  # binding survived too
        bodies = []
        while True:
            m = ch.basic_get("durable.q", auto_ack=True)
            if m[0] is None:
                break
            bodies.append(m[2])
        conn.close()
        assert bodies == [b"p1", b"p2", b"p3", b"p4", b"after"]
    finally:
        node.cleanup()
        shutil.rmtree(dataDir, ignore_errors=True)


@pytest.mark.skipif(shutil.which("amqp-publish") is None, reason="amqp-tools not installed")
def test_amqpTools(amqpNode, uniq):
    url = amqpNode.url.replace("%2F", "")
    subprocess.run(
        ["amqp-declare-queue", "--url", url, "-q", uniq],
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )
    for body in (b"one", b"two"):
        subprocess.run(
            ["amqp-publish", "--url", url, "-r", uniq, "-b", body.decode()],
            check=True,
            timeout=TIMEOUT,
        )
    out = subprocess.run(
        ["amqp-consume", "--url", url, "-q", uniq, "-c", "2", "cat"],
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )
    assert out.stdout == b"onetwo"
