#!/usr/bin/env python3
"""Throw generated and mutated frames at a live node over real sockets, then check it.

    .venv/bin/python bench/fuzz.py                      # 1,000,000 frames per protocol
    .venv/bin/python bench/fuzz.py --frames 50000 --seconds 60 --protocols mqtt

For each protocol (MQTT 3.1.1 and 5.0, Kafka, AMQP 0-9-1) the fuzzer keeps
C{--connections} sockets busy with a stream of frames: a valid handshake,
then frames drawn from a pool built with the protocol's own encoder (random
field values), of which C{--mutate} are mutated (bytes flipped, inserted or
cut, garbage frames, bogus length prefixes); one connection in twenty has
its handshake mutated too.  A connection the node closes (as it must, with
the protocol's error, on bad input) is replaced.  Responses are read and
thrown away so the node never stalls on a full socket.

Afterwards, and half-way through each protocol, it checks that:

  - the node process is alive;
  - a well-behaved client of that protocol (paho-mqtt, confluent-kafka, pika)
    round-trips a message on another connection;
  - the node's RSS is flat (sampled throughout; the growth after warm-up is
    reported and bounded by C{--rss-growth-mib});
  - the node's log has no traceback.

It prints one JSON document (C{--json}) or a table, and exits 1 if a check
failed.  docs/reliability.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crc32c import crc32c

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from robustmq.protocols.amqp import spec as amqp  # noqa: E402
from robustmq.protocols.amqp._frames import (  # noqa: E402
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    encodeContent,
    encodeMethod,
)
from robustmq.protocols.kafka._codec import KafkaParser, encodeRequest  # noqa: E402
from robustmq.protocols.mqtt import MQTTParser, encode  # noqa: E402
from robustmq.protocols.mqtt._codec import PINGREQ_BYTES  # noqa: E402
from robustmq.protocols.mqtt._packets import (  # noqa: E402
    MQTT5,
    MQTT311,
    Connect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)
from robustmq.testing.process import BrokerProcess, freePort, waitForPort  # noqa: E402

# -- the node -----------------------------------------------------------------


class FuzzNode(BrokerProcess):
    """A node with every protocol, logging at info (debug would log every bad frame twice)."""

    def __init__(self, workdir: Path) -> None:
        self.kafkaPort = freePort()
        self.amqpPort = freePort()
        self.httpPort = freePort()
        super().__init__(workdir=workdir)

    def bytesRead(self, protocol: str) -> int:
        """What the node read from client sockets of C{protocol} (its own counter)."""
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.httpPort}/metrics", timeout=30) as response:
            text = response.read().decode()
        name = f'robustmq_bytes_received_total{{protocol="{protocol}"}}'
        for line in text.splitlines():
            if line.startswith(name):
                return int(float(line.split()[-1]))
        return 0

    def configText(self) -> str:
        return f"""
[node]
data_dir = "{self.dataDir}"

[log]
level = "info"

[[listeners]]
protocol = "mqtt"
transport = "tcp"
bind = "127.0.0.1"
port = {self.port}

[[listeners]]
protocol = "kafka"
transport = "tcp"
bind = "127.0.0.1"
port = {self.kafkaPort}

[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {self.amqpPort}

[storage]
backend = "segment"
retention_bytes = 16777216

[http]
enabled = true
bind = "127.0.0.1"
port = {self.httpPort}
"""

    def rss(self) -> int:
        """Resident set size of the node in bytes."""
        assert self.pid is not None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


# -- frame pools ----------------------------------------------------------------


def _topic(r: random.Random) -> str:
    return "fuzz/%d/%d" % (r.randrange(16), r.randrange(64))


def mqttPool(r: random.Random, version: int, n: int) -> list[bytes]:
    """Valid client packets (after CONNECT) of one protocol version."""
    out = []
    for _ in range(n):
        kind = r.randrange(10)
        pid = r.randrange(1, 65536)
        if kind < 5:
            qos = r.choice((0, 0, 1, 2))
            p: Any = Publish(
                _topic(r),
                r.randbytes(r.randrange(0, 200)),
                qos,
                retain=r.random() < 0.02,
                packetId=pid if qos else None,
            )
        elif kind == 5:
            p = Subscribe(pid, [("fuzz/%d/+" % r.randrange(16), r.randrange(3))])
        elif kind == 6:
            p = Unsubscribe(pid, ["fuzz/%d/+" % r.randrange(16)])
        elif kind == 7:
            p = Pingreq()
        else:
            p = r.choice((Puback, Pubrec, Pubrel, Pubcomp))(pid)
        out.append(encode(p, version))
    return out


def mqttHandshake(r: random.Random, version: int) -> bytes:
    return encode(Connect(f"fz-{uuid.uuid4().hex[:12]}", version, keepAlive=0), version)


def _varint(v: int) -> bytes:
    v = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def recordBatch(r: random.Random) -> bytes:
    """A valid Kafka record batch (magic 2, no compression) of a few records."""
    n = r.randrange(1, 6)
    records = b""
    for i in range(n):
        value = r.randbytes(r.randrange(0, 120))
        body = b"\x00" + _varint(0) + _varint(i) + _varint(-1) + _varint(len(value)) + value
        body += _varint(0)
        records += _varint(len(body)) + body
    ts = int(time.time() * 1000)
    tail = struct.pack(">hiqqqhii", 0, n - 1, ts, ts, -1, -1, -1, n) + records
    return struct.pack(">qiibI", 0, 9 + len(tail), 0, 2, crc32c(tail)) + tail


_TOPICS = ["fz%d" % i for i in range(8)]


def kafkaPool(r: random.Random, n: int) -> list[bytes]:
    """Valid requests of the kinds a client sends most (none that park the connection)."""
    out = []
    for i in range(n):
        kind = r.randrange(8)
        topic = r.choice(_TOPICS)
        if kind < 3:
            body: dict[str, Any] = {
                "transactional_id": None,
                "acks": r.choice((-1, 0, 1)),
                "timeout_ms": 5000,
                "topic_data": [
                    {"name": topic, "partition_data": [{"index": 0, "records": recordBatch(r)}]}
                ],
            }
            frame = encodeRequest(0, r.randrange(3, 10), i, body, clientId="fuzz")
        elif kind == 3:
            part = {
                "partition": 0,
                "fetch_offset": r.randrange(0, 5000),
                "partition_max_bytes": 65536,
            }
            body = {
                "replica_id": -1,
                "max_wait_ms": 0,
                "min_bytes": 0,
                "max_bytes": 65536,
                "isolation_level": r.randrange(2),
                "topics": [{"topic": topic, "partitions": [part]}],
            }
            frame = encodeRequest(1, r.randrange(4, 12), i, body, clientId="fuzz")
        elif kind == 4:
            body = {"topics": [{"name": topic}], "allow_auto_topic_creation": True}
            frame = encodeRequest(3, r.randrange(1, 12), i, body, clientId="fuzz")
        elif kind == 5:
            frame = encodeRequest(18, r.randrange(0, 4), i, {}, clientId="fuzz")
        elif kind == 6:
            body = {
                "replica_id": -1,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition_index": 0, "timestamp": r.choice((-1, -2))}],
                    }
                ],
            }
            frame = encodeRequest(2, r.randrange(1, 7), i, body, clientId="fuzz")
        else:
            body = {"key": f"g{r.randrange(8)}", "key_type": 0}
            frame = encodeRequest(10, r.randrange(0, 4), i, body, clientId="fuzz")
        out.append(frame)
    return out


def amqpHandshake() -> bytes:
    return (
        PROTOCOL_HEADER
        + encodeMethod(0, amqp.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest", "en_US"))
        + encodeMethod(0, amqp.ConnectionTuneOk(2047, 131072, 0))
        + encodeMethod(0, amqp.ConnectionOpen("/"))
        + encodeMethod(1, amqp.ChannelOpen())
    )


def amqpPool(r: random.Random, n: int) -> list[bytes]:
    out = []
    props = amqp.BasicProperties(content_type="text/plain", delivery_mode=1)
    raw = props.encode() if hasattr(props, "encode") else b"\x00\x00"
    for _ in range(n):
        kind = r.randrange(9)
        queue = "fz-q%d" % r.randrange(4)
        if kind < 4:
            exchange, key = ("amq.topic", "fuzz.%d" % r.randrange(64)) if kind < 3 else ("", queue)
            frame = encodeContent(
                1,
                amqp.BasicPublish(0, exchange, key),
                raw,
                r.randbytes(r.randrange(0, 300)),
                131072,
            )
        elif kind == 4:
            frame = encodeMethod(
                1,
                amqp.QueueDeclare(
                    0, queue, False, False, False, False, False, {"x-max-length": 100}
                ),
            )
        elif kind == 5:
            frame = encodeMethod(1, amqp.BasicGet(0, queue, True))
        elif kind == 6:
            frame = encodeMethod(1, amqp.QueuePurge(0, queue, False))
        elif kind == 7:
            frame = encodeMethod(1, amqp.BasicQos(0, r.randrange(0, 100), False))
        else:
            frame = HEARTBEAT_FRAME
        out.append(frame)
    return out


# -- mutation -------------------------------------------------------------------


def mutate(r: random.Random, frame: bytes) -> bytes:
    """One of: flipped bytes, inserted bytes, a cut, garbage, a bogus length prefix."""
    kind = r.randrange(6)
    data = bytearray(frame)
    if kind <= 1 and data:
        for _ in range(r.randrange(1, 5)):
            data[r.randrange(len(data))] = r.randrange(256)
    elif kind == 2:
        at = r.randrange(len(data) + 1)
        data[at:at] = r.randbytes(r.randrange(1, 16))
    elif kind == 3 and data:
        del data[r.randrange(len(data)) :]
    elif kind == 4:
        data = bytearray(r.randbytes(r.randrange(1, 200)))
    elif len(data) >= 4:
        data[0:4] = struct.pack(">I", r.choice((0, 1, 0x7FFFFFFF, r.randrange(1 << 32))))
    return bytes(data)


# -- the load -------------------------------------------------------------------


class Dialect:
    """How one protocol opens a connection, frames a batch and proves the node read it.

    Every batch of valid frames ends with a I{sync} request the node must
    answer (MQTT PINGREQ, Kafka ApiVersions with a marked correlation id,
    AMQP channel.open of a fresh channel); frames count as I{confirmed} once
    that answer is back, i.e. once the node has handled them.
    """

    name = ""

    def __init__(self, r: random.Random) -> None:
        self.r = r

    def handshake(self, c: Conn) -> bytes:
        raise NotImplementedError

    def batch(self, c: Conn, n: int) -> list[bytes]:
        raise NotImplementedError

    def sync(self, c: Conn) -> bytes:
        raise NotImplementedError

    def synced(self, c: Conn, data: bytes) -> bool:
        """Feed what the node sent; True once the latest sync is answered."""
        raise NotImplementedError


class MqttDialect(Dialect):
    name = "mqtt"

    def __init__(self, r: random.Random) -> None:
        super().__init__(r)
        self.pools = {MQTT311: mqttPool(r, MQTT311, 4000), MQTT5: mqttPool(r, MQTT5, 4000)}

    def handshake(self, c: Conn) -> bytes:
        c.version = self.r.choice((MQTT311, MQTT5))
        c.parser = MQTTParser(server=False)
        c.parser.version = c.version
        return mqttHandshake(self.r, c.version)

    def batch(self, c: Conn, n: int) -> list[bytes]:
        pool = self.pools[c.version]
        return [pool[self.r.randrange(len(pool))] for _ in range(n)]

    def sync(self, c: Conn) -> bytes:
        return PINGREQ_BYTES

    def synced(self, c: Conn, data: bytes) -> bool:
        return any(isinstance(p, Pingresp) for p in c.parser.feed(data))


class KafkaDialect(Dialect):
    name = "kafka"

    def __init__(self, r: random.Random) -> None:
        super().__init__(r)
        self.pool = kafkaPool(r, 4000)
        self.counter = 0

    def handshake(self, c: Conn) -> bytes:
        c.parser = KafkaParser(1 << 30)
        return b""

    def batch(self, c: Conn, n: int) -> list[bytes]:
        return [self.pool[self.r.randrange(len(self.pool))] for _ in range(n)]

    def sync(self, c: Conn) -> bytes:
        self.counter += 1
        c.marker = 0x40000000 | (self.counter & 0x3FFFFFFF)
        return encodeRequest(18, 0, c.marker, {}, clientId="sync")

    def synced(self, c: Conn, data: bytes) -> bool:
        found = False
        for frame in c.parser.feed(data):
            if len(frame) >= 4 and struct.unpack_from(">i", frame)[0] == c.marker:
                found = True
        return found


def _onChannel(data: bytes, channel: int) -> bytes:
    """The AMQP frames of C{data} moved to C{channel}."""
    out = bytearray(data)
    pos = 0
    while pos + 7 <= len(out):
        size = struct.unpack_from(">I", out, pos + 3)[0]
        struct.pack_into(">H", out, pos + 1, channel)
        pos += 8 + size
    return bytes(out)


class AmqpDialect(Dialect):
    name = "amqp"

    def __init__(self, r: random.Random) -> None:
        super().__init__(r)
        self.pool = amqpPool(r, 4000)
        self.declare = b"".join(
            encodeMethod(1, amqp.QueueDeclare(0, "fz-q%d" % i, arguments={"x-max-length": 100}))
            for i in range(4)
        )

    def handshake(self, c: Conn) -> bytes:
        c.channel = 1
        c.buffer = bytearray()
        return amqpHandshake()

    def batch(self, c: Conn, n: int) -> list[bytes]:
        frames = [self.pool[self.r.randrange(len(self.pool))] for _ in range(n)]
        return [_onChannel(f, c.channel) for f in [self.declare, *frames]]

    def sync(self, c: Conn) -> bytes:
        # a fresh channel each batch: a channel the last batch got closed stays behind
        c.channel = c.channel + 1 if c.channel < 2000 else 2
        return encodeMethod(c.channel, amqp.ChannelOpen())

    def synced(self, c: Conn, data: bytes) -> bool:
        buf = c.buffer
        buf += data
        found = False
        pos = 0
        while pos + 7 <= len(buf):
            kind, channel, size = struct.unpack_from(">BHI", buf, pos)
            if pos + 8 + size > len(buf):
                break
            if (
                kind == 1
                and channel == c.channel
                and buf[pos + 7 : pos + 11] == b"\x00\x14\x00\x0b"
            ):
                found = True  # channel.open-ok
            pos += 8 + size
        del buf[:pos]
        return found


class Conn:
    """One fuzzing connection and where it is in its cycle."""

    __slots__ = (
        "sock",
        "out",
        "state",
        "since",
        "pending",
        "version",
        "parser",
        "marker",
        "channel",
        "buffer",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        #: "send": next batch; "sync": waiting for the sync answer; "mutated": a
        #: mutated frame went out, waiting to be closed
        self.state = "send"
        self.since = 0.0
        #: frames of the batch awaiting its sync answer
        self.pending = 0
        self.version = MQTT311
        self.parser: Any = None
        self.marker = 0
        self.channel = 1
        self.buffer = bytearray()


#: how long a connection waits for the node to close it after a mutated frame
MUTATION_WAIT = 0.02
#: how long a sync answer may take before the connection counts as stuck
SYNC_TIMEOUT = 2.0


def throw(
    port: int,
    dialect: Dialect,
    target: int,
    seconds: float,
    connections: int,
    mutateRate: float,
    onProgress: Callable[[int], None],
) -> dict[str, Any]:
    """Run fuzzing cycles on C{connections} sockets until C{target} frames are thrown."""
    r = dialect.r
    sel = selectors.DefaultSelector()
    counts = {
        "frames": 0,
        "confirmed": 0,
        "mutated": 0,
        "bytes": 0,
        "connections": 0,
        "closed_by_node": 0,
        "stuck": 0,
    }
    start = time.monotonic()
    deadline = start + seconds
    nextReport = target // 10
    meanBatch = max(1, round(1 / mutateRate) if mutateRate else 200)

    def open_() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        c = Conn(s)
        hs = dialect.handshake(c)
        if r.random() < 0.05:  # now and then, a damaged handshake
            hs = mutate(r, hs) if hs else r.randbytes(r.randrange(1, 64))
            counts["mutated"] += 1
            counts["frames"] += 1
            c.out += hs
            c.state = "mutated"
            c.since = time.monotonic()
        else:
            counts["frames"] += 1 if hs else 0
            c.out += hs
        counts["connections"] += 1
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def drop(c: Conn) -> None:
        sel.unregister(c.sock)
        c.sock.close()

    def nextBatch(c: Conn) -> None:
        n = r.randrange(1, 2 * meanBatch)
        frames = dialect.batch(c, n)
        c.out += b"".join(frames) + dialect.sync(c)
        c.pending = len(frames) + 1
        counts["frames"] += c.pending
        c.state = "sync"
        c.since = time.monotonic()

    for _ in range(connections):
        open_()
    while counts["frames"] < target and time.monotonic() < deadline:
        now = time.monotonic()
        for key, events in sel.select(0.01):
            c = key.data
            alive = True
            if events & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(1 << 20)
                    if not data:
                        alive = False
                    elif c.state == "sync" and dialect.synced(c, data):
                        counts["confirmed"] += c.pending
                        c.pending = 0
                        if r.random() < mutateRate * meanBatch:
                            frame = mutate(r, b"".join(dialect.batch(c, 1)))
                            c.out += frame
                            counts["mutated"] += 1
                            counts["frames"] += 1
                            c.state = "mutated"
                            c.since = now
                        else:
                            c.state = "send"
                except BlockingIOError:
                    pass
                except OSError:
                    alive = False
            if alive and events & selectors.EVENT_WRITE:
                if not c.out and c.state == "send" and counts["frames"] < target:
                    nextBatch(c)
                if c.out:
                    try:
                        n = c.sock.send(c.out)
                        del c.out[:n]
                        counts["bytes"] += n
                    except BlockingIOError:
                        pass
                    except OSError:
                        alive = False
            if alive and c.state == "mutated" and not c.out and now - c.since > MUTATION_WAIT:
                # Not closed: probe with a lone sync request before the next batch, so
                # a batch is not swallowed by a frame whose mutated length never ends.
                c.out += dialect.sync(c)
                c.pending = 1
                counts["frames"] += 1
                c.state = "sync"
                c.since = now
            if alive and c.state == "sync" and now - c.since > SYNC_TIMEOUT:
                counts["stuck"] += 1  # e.g. a bogus length prefix swallowed the sync request
                alive = False
            elif not alive:
                counts["closed_by_node"] += 1
            if not alive:
                drop(c)
                open_()
        if counts["frames"] >= nextReport:
            onProgress(counts["frames"])
            nextReport += target // 10
    for key in list(sel.get_map().values()):
        drop(key.data)
    elapsed = time.monotonic() - start
    counts["seconds"] = round(elapsed, 1)
    counts["frames_per_sec"] = round(counts["frames"] / elapsed)
    return counts


# -- well-behaved clients -------------------------------------------------------


def mqttRoundTrip(node: FuzzNode) -> bool:
    from robustmq.testing.paho import PahoClient

    topic = f"good/{uuid.uuid4().hex[:8]}"
    sub = PahoClient(node.port, f"good-sub-{uuid.uuid4().hex[:6]}")
    pub = PahoClient(node.port, f"good-pub-{uuid.uuid4().hex[:6]}")
    try:
        sub.connect()
        sub.subscribe(topic, 1)
        pub.connect()
        pub.publish(topic, b"hello", 1)
        return sub.expect(10).payload == b"hello"
    finally:
        sub.stop()
        pub.stop()


def kafkaRoundTrip(node: FuzzNode) -> bool:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = f"good-{uuid.uuid4().hex[:8]}"
    bootstrap = f"127.0.0.1:{node.kafkaPort}"
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    done: list[Any] = []
    p.produce(topic, b"hello", on_delivery=lambda err, msg: done.append(err))
    p.flush(20)
    if done != [None]:
        return False
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})
    c.assign([TopicPartition(topic, 0, 0)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                return bool(msg.value() == b"hello")
        return False
    finally:
        c.close()


def amqpRoundTrip(node: FuzzNode) -> bool:
    import pika

    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.amqpPort}/%2F")
    )
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        ch.basic_publish("", q, b"hello")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            method, _, body = ch.basic_get(q, auto_ack=True)
            if method is not None:
                return bool(body == b"hello")
            time.sleep(0.05)
        return False
    finally:
        conn.close()


# -- the run --------------------------------------------------------------------


def tracebacks(text: str) -> list[str]:
    lines = text.splitlines()
    return [
        "\n".join(lines[max(0, i - 2) : i + 12])
        for i, line in enumerate(lines)
        if "Traceback (most recent call last)" in line
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames per protocol")
    parser.add_argument("--seconds", type=float, default=900, help="time bound per protocol")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--mutate", type=float, default=0.05, help="share of frames mutated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protocols", default="mqtt,kafka,amqp")
    parser.add_argument("--rss-growth-mib", type=float, default=64.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory")
    args = parser.parse_args(argv)
    r = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="robustmq-fuzz-"))
    node = FuzzNode(workdir)
    node.start()
    for port in (node.kafkaPort, node.amqpPort):
        waitForPort("127.0.0.1", port)
    report: dict[str, Any] = {"seed": args.seed, "mutate": args.mutate, "protocols": {}}
    ok = True
    try:
        rssStart = node.rss()
        for proto in args.protocols.split(","):
            dialect: Dialect
            if proto == "mqtt":
                dialect, port, good = MqttDialect(r), node.port, mqttRoundTrip
            elif proto == "kafka":
                dialect, port, good = KafkaDialect(r), node.kafkaPort, kafkaRoundTrip
            else:
                dialect, port, good = AmqpDialect(r), node.amqpPort, amqpRoundTrip
            samples: list[tuple[int, int]] = []
            midway: dict[str, Any] = {}

            def progress(
                sent: int,
                target: int = args.frames,
                samples: list[tuple[int, int]] = samples,
                midway: dict[str, Any] = midway,
                good: Callable[[FuzzNode], bool] = good,
            ) -> None:
                samples.append((sent, node.rss()))
                if not midway and sent >= target // 2:
                    midway["good_client"] = good(node)

            readBefore = node.bytesRead(proto)
            result = throw(
                port, dialect, args.frames, args.seconds, args.connections, args.mutate, progress
            )
            time.sleep(2)
            result["bytes_read_by_node"] = node.bytesRead(proto) - readBefore
            result["alive"] = node.alive()
            result["good_client_midway"] = midway.get("good_client")
            result["good_client_after"] = good(node) if result["alive"] else False
            warm = samples[0][1] if samples else rssStart
            result["rss_mib"] = {
                "warm": round(warm / 2**20, 1),
                "end": round(node.rss() / 2**20, 1),
                "max": round(max((s for _, s in samples), default=warm) / 2**20, 1),
            }
            growth = result["rss_mib"]["end"] - result["rss_mib"]["warm"]
            result["rss_flat"] = growth <= args.rss_growth_mib
            report["protocols"][proto] = result
            ok = ok and all(
                (
                    result["alive"],
                    result["good_client_after"],
                    result["good_client_midway"] is not False,
                    result["rss_flat"],
                )
            )
            if not args.json:
                print(proto, json.dumps(result), flush=True)
        found = tracebacks(node.output())
        report["tracebacks"] = found[:10]
        report["traceback_count"] = len(found)
        report["log_bytes"] = len(node.output())
        ok = ok and not found and node.alive()
        report["ok"] = ok
    finally:
        node.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(json.dumps({k: v for k, v in report.items() if k != "protocols"}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
