"""Queue arguments and Basic methods with pika: x-expires, priorities, delivery limit, overflow,
server-sent cancel, recover, per-message expiration, and Connection.Blocked under the memory alarm."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, NackError

TIMEOUT = 10.0


def connect(node, **kw) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqpPort, **kw))


@pytest.fixture
def conn(amqpNode) -> Iterator[pika.BlockingConnection]:
    c = connect(amqpNode)
    yield c
    if c.is_open:
        c.close()


def waitFor(conn: pika.BlockingConnection, predicate, what: str) -> None:
    """Let pika's I/O run until C{predicate()} holds (at most TIMEOUT seconds)."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        conn.process_data_events(time_limit=0.05)


def drain(ch, queue: str) -> list[bytes]:
    out = []
    for _ in range(100):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(body)
    return out


def test_xExpiresDeletesAnIdleQueue(conn, uniq):
    conn.channel().queue_declare(uniq, arguments={"x-expires": 200})
    assert conn.channel().queue_declare(uniq, passive=True).method.queue == uniq
    gone = []

    def expired() -> bool:
        try:
            conn.channel().queue_declare(uniq, passive=True)
        except ChannelClosedByBroker as e:
            gone.append(e.reply_code)
            return True
        return False

    waitFor(conn, expired, "the idle queue to expire")
    assert gone == [404]


def test_xExpiresSparesAQueueWithAConsumer(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq, arguments={"x-expires": 100})
    ch.basic_consume(uniq, lambda *a: None)
    conn.process_data_events(time_limit=0.5)  # five idle periods with a consumer
    assert conn.channel().queue_declare(uniq, passive=True).method.queue == uniq
    conn.channel().queue_delete(uniq)


def test_maxPriorityDeliversHighestFirstThenFifo(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq, exclusive=True, arguments={"x-max-priority": 5})
    for body, priority in [(b"p1", 1), (b"p5a", 5), (b"none", None), (b"p9", 9), (b"p5b", 5)]:
        ch.basic_publish("", uniq, body, pika.BasicProperties(priority=priority))
    # 9 is capped to the queue's maximum (5) and keeps its place among the 5s.
    assert drain(ch, uniq) == [b"p5a", b"p9", b"p5b", b"p1", b"none"]


def test_requeuedMessagesKeepTheirOrderWithinAPriority(conn, uniq):
    """Issue item 10, RabbitMQ's behaviour: first/second/third at priorities 3/6/3,
    consumed, each rejected with requeue (one reject at a time), then fourth at 9:
    redelivered fourth, second, first, third.  They used to come back LIFO within
    a priority (fourth, second, third, first)."""
    ch = conn.channel()
    ch.queue_declare(uniq, exclusive=True, arguments={"x-max-priority": 10})
    for body, priority in [(b"first", 3), (b"second", 6), (b"third", 3)]:
        ch.basic_publish("", uniq, body, pika.BasicProperties(priority=priority))
    tags = []
    for _ in range(3):
        method, _props, _body = ch.basic_get(uniq)
        tags.append(method.delivery_tag)
    for tag in tags:  # in delivery order: second, first, third
        ch.basic_reject(tag, requeue=True)
    ch.basic_publish("", uniq, b"fourth", pika.BasicProperties(priority=9))
    assert drain(ch, uniq) == [b"fourth", b"second", b"first", b"third"]


def test_requeuedOutOfOrderComeBackInPublishOrder(conn, uniq):
    """Rejecting the first message, then the third, puts the third behind the first
    (not in front of it, as a plain push to the head would)."""
    ch = conn.channel()
    ch.queue_declare(uniq, exclusive=True)
    for body in (b"1", b"2", b"3", b"4"):
        ch.basic_publish("", uniq, body)
    tags = [ch.basic_get(uniq)[0].delivery_tag for _ in range(3)]
    ch.basic_reject(tags[0], requeue=True)
    ch.basic_reject(tags[2], requeue=True)
    ch.basic_ack(tags[1])
    assert drain(ch, uniq) == [b"1", b"3", b"4"]


def test_unknownExchangeTypeClosesTheChannelWith406(conn, uniq):
    """Issue item 11, RabbitMQ 4: an unknown exchange type is a channel error, 406
    PRECONDITION_FAILED (RabbitMQ 3 closed the connection with 503); the connection
    and its other channels go on."""
    other = conn.channel()
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(uniq, exchange_type="no-such-type")
    assert e.value.reply_code == 406
    assert "unknown exchange type 'no-such-type'" in e.value.reply_text
    assert conn.is_open
    other.queue_declare(uniq, exclusive=True)


def test_quorumDeliveryLimitDeadLetters(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(f"{uniq}.dead", exclusive=True)
    ch.queue_declare(
        f"{uniq}.q",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{uniq}.dead",
        },
    )
    try:
        ch.basic_publish("", f"{uniq}.q", b"poison")
        deliveries = 0
        for _ in range(10):
            method, _props, body = ch.basic_get(f"{uniq}.q")
            if method is None:
                break
            deliveries += 1
            assert body == b"poison" and method.redelivered == (deliveries > 1)
            ch.basic_nack(method.delivery_tag, requeue=True)
        assert deliveries == 3  # the first delivery and two redeliveries
        method, props, body = ch.basic_get(f"{uniq}.dead", auto_ack=True)
        assert body == b"poison"
        assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    finally:
        ch.queue_delete(f"{uniq}.q")


def test_quorumQueueMustBeDurable(conn, uniq):
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().queue_declare(uniq, arguments={"x-queue-type": "quorum"})
    assert e.value.reply_code == 406


def test_rejectPublishOverflowNacksTheNewMessage(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(
        uniq, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    ch.basic_publish("", uniq, b"1")
    ch.basic_publish("", uniq, b"2")
    with pytest.raises(NackError):
        ch.basic_publish("", uniq, b"3")
    assert drain(ch, uniq) == [b"1", b"2"]  # the head is kept, unlike drop-head


def test_rejectPublishDlxDeadLettersTheNewMessage(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(f"{uniq}.dead", exclusive=True)
    ch.queue_declare(
        uniq,
        exclusive=True,
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{uniq}.dead",
        },
    )
    ch.basic_publish("", uniq, b"kept")
    with pytest.raises(NackError):
        ch.basic_publish("", uniq, b"over")
    assert drain(ch, uniq) == [b"kept"]
    assert drain(ch, f"{uniq}.dead") == [b"over"]


def test_serverSentCancelWhenTheQueueIsDeleted(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(uniq, lambda *a: None)
    other = conn.channel()
    other.queue_delete(uniq)
    waitFor(conn, lambda: cancelled, "Basic.Cancel from the broker")
    assert cancelled == [tag]
    assert ch.is_open  # the channel stays usable
    ch.queue_declare(uniq, exclusive=True)


def test_basicRecoverRequeuesUnackedInOrder(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(uniq, exclusive=True)
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", uniq, body)
    first = [ch.basic_get(uniq) for _ in range(2)]
    assert [m[2] for m in first] == [b"a", b"b"]
    ch.basic_recover(requeue=True)
    again = [ch.basic_get(uniq) for _ in range(3)]
    assert [m[2] for m in again] == [b"a", b"b", b"c"]
    assert [m[0].redelivered for m in again] == [True, True, False]
    ch.basic_ack(again[-1][0].delivery_tag, multiple=True)
    # The old delivery tags are gone: acknowledging one closes the channel (406).
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_ack(first[0][0].delivery_tag)
        ch.queue_declare(uniq, passive=True)
    assert e.value.reply_code == 406


def test_perMessageExpiration(conn, uniq):
    ch = conn.channel()
    ch.queue_declare(f"{uniq}.dead", exclusive=True)
    ch.queue_declare(
        uniq,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{uniq}.dead"},
    )
    ch.basic_publish("", uniq, b"short", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", uniq, b"kept")
    ch.basic_publish("", uniq, b"zero", pika.BasicProperties(expiration="0"))

    def count() -> int:
        return ch.queue_declare(uniq, passive=True).method.message_count

    # The head expires on its own; as in RabbitMQ, an expired message behind a
    # live one leaves when it reaches the head (here: when "kept" is fetched).
    waitFor(conn, lambda: count() == 2, "the expired head to leave the queue")
    assert drain(ch, uniq) == [b"kept"]
    dead = []
    for _ in range(2):
        method, props, body = ch.basic_get(f"{uniq}.dead", auto_ack=True)
        death = props.headers["x-death"][0]
        dead.append((body, death["reason"], death.get("original-expiration")))
    assert dead == [(b"short", "expired", "50"), (b"zero", "expired", "0")]


@pytest.fixture(scope="module")
def lowMemoryNode(amqpNode):
    """A node whose memory alarm goes off above 64 KiB of queued message bodies."""
    AMQPNode = type(amqpNode)
    node = AMQPNode("[amqp]\nmemory_high_watermark = 65536\nmemory_low_watermark = 32768\n")
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


def test_connectionBlockedAndUnblockedByTheMemoryAlarm(lowMemoryNode, uniq):
    publisher = connect(lowMemoryNode)
    other = connect(lowMemoryNode)
    try:
        events = []
        publisher.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
        publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        ch = publisher.channel()
        ch.queue_declare(uniq)
        body = b"x" * 20000
        for _ in range(4):  # 80 000 bytes queued: above the high watermark
            ch.basic_publish("", uniq, body)
        waitFor(publisher, lambda: events == ["blocked"], "Connection.Blocked")
        # While blocked, the broker does not read the publisher: this one waits.
        ch.basic_publish("", uniq, b"while blocked")
        oc = other.channel()
        assert oc.queue_declare(uniq, passive=True).method.message_count == 4
        # A consumer is not blocked: draining below the low watermark clears the alarm.
        assert oc.queue_purge(uniq).method.message_count == 4
        waitFor(publisher, lambda: events == ["blocked", "unblocked"], "Connection.Unblocked")
        waitFor(
            publisher,
            lambda: oc.queue_declare(uniq, passive=True).method.message_count == 1,
            "the held publish",
        )
        assert oc.basic_get(uniq, auto_ack=True)[2] == b"while blocked"
        oc.queue_delete(uniq)
    finally:
        for c in (publisher, other):
            if c.is_open:
                c.close()
