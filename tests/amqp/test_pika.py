"""pika (blocking and select connections) against a real node over loopback."""

from __future__ import annotations

import socket
import struct
import time

import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ProbableAuthenticationError,
    UnroutableError,
)

TIMEOUT = 10.0


def connect(node, **kw):
    params = pika.ConnectionParameters("127.0.0.1", node.amqpPort, **kw)
    return pika.BlockingConnection(params)


@pytest.fixture
def conn(amqpNode):
    c = connect(amqpNode)
    yield c
    if c.is_open:
        c.close()


def test_publishGetAckNackReject(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    for i in range(3):
        ch.basic_publish("", uniq, f"m{i}".encode())
    m0 = ch.basic_get(uniq)
    assert m0[2] == b"m0" and m0[0].message_count == 2
    ch.basic_nack(m0[0].delivery_tag, requeue=True)
    again = ch.basic_get(uniq)
    assert again[2] == b"m0" and again[0].redelivered
    ch.basic_ack(again[0].delivery_tag)
    m1 = ch.basic_get(uniq)
    ch.basic_reject(m1[0].delivery_tag, requeue=False)
    m2 = ch.basic_get(uniq, auto_ack=True)
    assert m2[2] == b"m2"
    assert ch.basic_get(uniq) == (None, None, None)


def test_consumeWithPrefetchAndMultipleAck(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    ch.basic_qos(prefetch_count=2)
    for i in range(5):
        ch.basic_publish("", uniq, str(i).encode(), pika.BasicProperties(content_type="text/plain"))
    got = []
    for method, props, body in ch.consume(uniq, inactivity_timeout=TIMEOUT):
        assert method is not None, "timed out"
        assert props.content_type == "text/plain"
        got.append(body)
        if len(got) % 2 == 0 or len(got) == 5:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if len(got) == 5:
            break
    ch.cancel()
    assert got == [b"0", b"1", b"2", b"3", b"4"]


def test_exchangesTopicFanoutHeaders(conn, uniq):
    ch = conn.channel()
    ch.exchange_declare(f"{uniq}.t", "topic")
    ch.exchange_declare(f"{uniq}.f", "fanout")
    ch.exchange_declare(f"{uniq}.h", "headers")
    for q in ("a", "b", "c", "d"):
        ch.queue_declare(f"{uniq}.{q}", exclusive=True)
    ch.queue_bind(f"{uniq}.a", f"{uniq}.t", "x.*.z")
    ch.queue_bind(f"{uniq}.b", f"{uniq}.t", "x.#")
    ch.exchange_bind(f"{uniq}.f", f"{uniq}.t", "#.fan")  # exchange-to-exchange
    ch.queue_bind(f"{uniq}.c", f"{uniq}.f")
    ch.queue_bind(f"{uniq}.d", f"{uniq}.h", arguments={"x-match": "any", "k": "v", "n": 1})
    ch.basic_publish(f"{uniq}.t", "x.y.z", b"1")
    ch.basic_publish(f"{uniq}.t", "x.fan", b"2")
    ch.basic_publish(f"{uniq}.h", "", b"3", pika.BasicProperties(headers={"n": 1}))
    ch.basic_publish(f"{uniq}.h", "", b"no", pika.BasicProperties(headers={"k": "other"}))

    def drain(q):
        out = []
        while True:
            m = ch.basic_get(q, auto_ack=True)
            if m[0] is None:
                return out
            out.append(m[2])

    assert drain(f"{uniq}.a") == [b"1"]
    assert drain(f"{uniq}.b") == [b"1", b"2"]
    assert drain(f"{uniq}.c") == [b"2"]
    assert drain(f"{uniq}.d") == [b"3"]


def test_confirmsAndMandatoryReturn(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(uniq)
    ch.basic_publish("", uniq, b"ok", mandatory=True)
    with pytest.raises(UnroutableError):
        ch.basic_publish("amq.direct", "nowhere-" + uniq, b"lost", mandatory=True)
    assert ch.basic_get(uniq, auto_ack=True)[2] == b"ok"


def test_transactions(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    ch.tx_select()
    ch.basic_publish("", uniq, b"rolled-back")
    ch.tx_rollback()
    ch.basic_publish("", uniq, b"committed")
    assert ch.queue_declare(uniq, passive=True).method.message_count == 0
    ch.tx_commit()
    assert ch.basic_get(uniq, auto_ack=True)[2] == b"committed"


def test_channelErrorsUseRabbitMQCodes(conn, uniq):
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("missing-" + uniq, passive=True)
    assert e.value.reply_code == 404
    ch = conn.channel()
    ch.queue_declare(uniq, durable=False)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(uniq, durable=True)
    assert e.value.reply_code == 406 and "inequivalent arg 'durable'" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_ack(99)
        ch.queue_declare(uniq)  # a round trip so the close arrives
    assert e.value.reply_code == 406
    assert conn.is_open  # soft errors close only the channel


def test_exclusiveQueueOfAnotherConnection(amqpNode, conn, uniq):
    conn.channel().queue_declare(uniq, exclusive=True)
    other = connect(amqpNode)
    try:
        with pytest.raises(ChannelClosedByBroker) as e:
            other.channel().queue_declare(uniq, passive=True)
        assert e.value.reply_code == 405
    finally:
        other.close()


def test_unackedRequeuedInOrderWhenChannelCloses(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    for i in range(4):
        ch.basic_publish("", uniq, str(i).encode())
    for _ in range(3):
        ch.basic_get(uniq)
    ch.close()
    ch = conn.channel()
    bodies = [ch.basic_get(uniq, auto_ack=True)[2] for _ in range(4)]
    assert bodies == [b"0", b"1", b"2", b"3"]


def test_wrongPasswordRefused(amqpNode):
    creds = pika.PlainCredentials("guest", "wrong")
    with pytest.raises(ProbableAuthenticationError) as e:
        connect(amqpNode, credentials=creds, connection_attempts=1)
    assert "403" in str(e.value) and "ACCESS_REFUSED" in str(e.value)


def test_malformedFrameClosesOnlyThatConnection(amqpNode, conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    with socket.create_connection(("127.0.0.1", amqpNode.amqpPort), timeout=TIMEOUT) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        # A method frame whose end octet is wrong.
        s.sendall(struct.pack(">BHI", 1, 0, 4) + b"\x00\x0a\x00\x0b" + b"\x00")
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"FRAME_ERROR" in data
    ch.basic_publish("", uniq, b"still here")
    assert ch.basic_get(uniq, auto_ack=True)[2] == b"still here"


def test_selectConnection(amqpNode, uniq):
    params = pika.ConnectionParameters("127.0.0.1", amqpNode.amqpPort)
    received = []

    def onOpen(connection):
        connection.channel(on_open_callback=onChannel)

    def onChannel(ch):
        def declared(_):
            ch.basic_consume(uniq, onMessage)
            ch.basic_publish("", uniq, b"select")

        ch.queue_declare(uniq, exclusive=True, callback=declared)

    def onMessage(ch, method, props, body):
        received.append(body)
        ch.basic_ack(method.delivery_tag)
        ch.connection.close()

    connection = pika.SelectConnection(params, on_open_callback=onOpen)
    timer = connection.ioloop.call_later(TIMEOUT, connection.ioloop.stop)

    def onClosed(*_):
        connection.ioloop.remove_timeout(timer)
        connection.ioloop.stop()

    connection.add_on_close_callback(onClosed)
    connection.ioloop.start()
    assert received == [b"select"]
