"""aio-pika with its defaults (robust connection, publisher confirms), RPC, dead-lettering + TTL."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.patterns import RPC

TIMEOUT = 10.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


async def _double(*, x: int) -> int:
    return x * 2


def test_robustConnectionConfirmsAndConsume(amqpNode, uniq):
    async def main():
        conn = await aio_pika.connect_robust(amqpNode.url)
        async with conn:
            ch = await conn.channel()  # publisher confirms on by default
            q = await ch.declare_queue(uniq, auto_delete=True)
            for i in range(10):
                confirmation = await ch.default_exchange.publish(
                    aio_pika.Message(str(i).encode()), routing_key=uniq
                )
                assert confirmation is not None
            got = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 10:
                        break
            return got

    assert run(main()) == [str(i).encode() for i in range(10)]


def test_rpcPatternWithDirectReplyTo(amqpNode, uniq):
    async def main():
        conn = await aio_pika.connect_robust(amqpNode.url)
        async with conn:
            ch = await conn.channel()
            rpc = await RPC.create(ch)
            await rpc.register(uniq, _double, auto_delete=True)
            return [await rpc.proxy.__getattr__(uniq)(x=i) for i in range(3)]

    assert run(main()) == [0, 2, 4]


def test_directReplyToByHand(amqpNode, uniq):
    async def main():
        conn = await aio_pika.connect(amqpNode.url)
        async with conn:
            ch = await conn.channel()
            server = await ch.declare_queue(uniq, exclusive=True)
            replies = await ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
            got = asyncio.get_running_loop().create_future()

            async def onReply(message):
                got.set_result(message.body)

            await replies.consume(onReply, no_ack=True)
            await ch.default_exchange.publish(
                aio_pika.Message(b"ping", reply_to="amq.rabbitmq.reply-to"), routing_key=uniq
            )
            request = await server.get(timeout=TIMEOUT)
            assert request.reply_to.startswith("amq.rabbitmq.reply-to.")
            await request.ack()
            await ch.default_exchange.publish(
                aio_pika.Message(b"pong"), routing_key=request.reply_to
            )
            return await got

    assert run(main()) == b"pong"


def test_deadLetterAfterTTL(amqpNode, uniq):
    async def main():
        conn = await aio_pika.connect(amqpNode.url)
        async with conn:
            ch = await conn.channel()
            dlx = await ch.declare_exchange(f"{uniq}.dlx", aio_pika.ExchangeType.DIRECT)
            dead = await ch.declare_queue(f"{uniq}.dead", exclusive=True)
            await dead.bind(dlx, routing_key="expired")
            await ch.declare_queue(
                f"{uniq}.wait",
                exclusive=True,
                arguments={
                    "x-message-ttl": 100,
                    "x-dead-letter-exchange": f"{uniq}.dlx",
                    "x-dead-letter-routing-key": "expired",
                },
            )
            await ch.default_exchange.publish(
                aio_pika.Message(b"late", headers={"k": "v"}), routing_key=f"{uniq}.wait"
            )
            async with dead.iterator() as it:
                async for message in it:
                    await message.ack()
                    return message.body, message.headers

    body, headers = run(main())
    assert body == b"late"
    death = headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"].endswith(".wait")
    assert headers["k"] == "v"


def test_rejectDeadLettersAndMaxLength(amqpNode, uniq):
    async def main():
        conn = await aio_pika.connect(amqpNode.url)
        async with conn:
            ch = await conn.channel()
            dead = await ch.declare_queue(f"{uniq}.dead", exclusive=True)
            q = await ch.declare_queue(
                f"{uniq}.q",
                exclusive=True,
                arguments={
                    "x-max-length": 2,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": f"{uniq}.dead",
                },
            )
            for i in range(3):
                await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), q.name)
            m = await q.get(timeout=TIMEOUT)
            await m.reject(requeue=False)
            reasons = []
            for _ in range(2):
                d = await dead.get(timeout=TIMEOUT)
                reasons.append((d.body, d.headers["x-death"][0]["reason"]))
                await d.ack()
            return reasons

    assert run(main()) == [(b"0", "maxlen"), (b"1", "rejected")]
