"""The generated codec, field tables, the sans-IO frame parser and the connection over StringTransport."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from robustmq.config import Settings
from robustmq.core.broker import Broker
from robustmq.protocols.amqp import _codegen, spec
from robustmq.protocols.amqp._connection import AMQPServerProtocol
from robustmq.protocols.amqp._frames import (
    PROTOCOL_HEADER,
    BodyFrame,
    FrameError,
    FrameParser,
    HeaderFrame,
    MethodFrame,
    ProtocolHeader,
    encodeContent,
    encodeMethod,
)
from robustmq.protocols.amqp._model import Exchange, headersMatch
from robustmq.protocols.amqp._server import AMQPServer
from robustmq.protocols.amqp._types import decodeTable, encodeTable


def test_generatedCodeIsUpToDate(tmp_path: Path):
    text = _codegen.generate(json.loads(_codegen.SPEC.read_text()))
    out = tmp_path / "_spec.py"
    out.write_text(text)
    ruff = shutil.which("ruff") or str(Path(__file__).parents[2] / ".venv" / "bin" / "ruff")
    subprocess.run([ruff, "format", "-q", str(out)], check=True)
    assert out.read_text() == Path(_codegen.TARGET).read_text()


def test_everyMethodRoundTrips():
    data = json.loads(_codegen.SPEC.read_text())
    assert len(spec.METHODS) == sum(len(c["methods"]) for c in data["classes"])
    for cls in spec.METHODS.values():
        m = cls()
        payload = m.encode()
        assert payload[:4] == m.HEAD
        assert cls.decode(payload, 4).encode() == payload


def test_methodWithValues():
    m = spec.BasicDeliver("ctag", 2**40, True, "ex", "rk")
    assert spec.BasicDeliver.decode(m.encode(), 4) == m
    q = spec.QueueDeclare(0, "q", False, True, True, False, True, {"x-max-priority": 5})
    back = spec.QueueDeclare.decode(q.encode(), 4)
    assert back.durable and back.exclusive and back.nowait and not back.passive
    assert back.arguments == {"x-max-priority": 5}


def test_tableTypes():
    table = {
        "s": "text",
        "i": -5,
        "l": 1 << 40,
        "t": True,
        "f": {"nested": [1, "a", False]},
        "d": 1.5,
        "x": b"\x00\xff",
        "v": None,
        "dec": Decimal("1.25"),
        "ts": datetime(2024, 1, 2, tzinfo=UTC),
    }
    out: list[bytes] = []
    encodeTable(table, out)
    raw = b"".join(out)
    assert decodeTable(raw, 0) == (table, len(raw))


def test_properties():
    p = spec.BasicProperties(content_type="a/b", delivery_mode=2, headers={"h": 1}, priority=3)
    raw = p.encode()
    assert spec.BasicProperties.decode(raw, 0) == p


def _stream() -> bytes:
    props = spec.BasicProperties(delivery_mode=2).encode()
    return (
        PROTOCOL_HEADER
        + encodeMethod(1, spec.BasicPublish(0, "ex", "rk", True, False))
        + encodeContent(1, spec.BasicPublish(0, "ex", "rk"), props, b"x" * 10000, 4096)[
            len(encodeMethod(1, spec.BasicPublish(0, "ex", "rk"))) :
        ]
        + b"\x08\x00\x00\x00\x00\x00\x00\xce"
    )


def _kinds(frames):
    return [type(f).__name__ for f in frames]


@pytest.mark.parametrize("step", [None, 1, 7])
def test_parserWholeAndByteByByte(step):
    data = _stream()
    parser = FrameParser(131072)
    frames = []
    if step is None:
        frames = parser.feed(data)
    else:
        for i in range(0, len(data), step):
            frames += parser.feed(data[i : i + step])
    assert _kinds(frames) == [
        "ProtocolHeader",
        "MethodFrame",
        "HeaderFrame",
        "BodyFrame",
        "BodyFrame",
        "BodyFrame",
        "Heartbeat",
    ]
    assert isinstance(frames[0], ProtocolHeader) and frames[0].valid
    assert isinstance(frames[1], MethodFrame) and frames[1].method.mandatory
    assert isinstance(frames[2], HeaderFrame) and frames[2].bodySize == 10000
    assert b"".join(f.data for f in frames if isinstance(f, BodyFrame)) == b"x" * 10000


def test_parserRejectsOversizedAndBadEnd():
    parser = FrameParser(4096)
    parser.feed(PROTOCOL_HEADER)
    with pytest.raises(FrameError) as e:
        parser.feed(b"\x01\x00\x01\x00\x01\x00\x00")
    assert e.value.code == spec.FRAME_ERROR
    parser = FrameParser(4096)
    with pytest.raises(FrameError):
        parser.feed(PROTOCOL_HEADER + b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0b\x00")


def test_unknownMethodIsCommandInvalid():
    parser = FrameParser(4096)
    with pytest.raises(FrameError) as e:
        parser.feed(PROTOCOL_HEADER + b"\x01\x00\x00\x00\x00\x00\x04\x00\x63\x00\x01\xce")
    assert e.value.code == spec.COMMAND_INVALID


def test_topicAndHeadersMatching():
    def topicMatches(pattern: str, key: str) -> bool:
        ex = Exchange("t", "topic", False, False, False, {})
        ex.bind("q", pattern, {})
        return "q" in ex.destinations(key, None)

    assert topicMatches("a.*.c", "a.b.c") and not topicMatches("a.*.c", "a.b.b.c")
    assert topicMatches("a.#", "a") and topicMatches("a.#", "a.b.c") and topicMatches("#", "")
    assert topicMatches("#.c", "a.b.c") and topicMatches("a.#.c", "a.c")
    assert not topicMatches("a.#.c", "a.b.d")
    assert headersMatch({"x-match": "all", "a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3})
    assert not headersMatch({"x-match": "all", "a": 1, "b": 2}, {"a": 1})
    assert headersMatch({"x-match": "any", "a": 1, "b": 2}, {"b": 2})


class _Peer:
    host = "127.0.0.1"
    port = 5555


def _connect(clock: Clock) -> tuple[AMQPServerProtocol, StringTransport]:
    settings = Settings()
    broker = Broker(settings, clock)
    broker.startService()  # no store: ready at once (whenReady fires)
    server = AMQPServer(broker, clock)
    proto = AMQPServerProtocol(server, settings.listeners[0], clock)
    transport = StringTransport(peerAddress=_Peer())
    proto.makeConnection(transport)
    return proto, transport


def _methods(transport: StringTransport) -> list[spec.Method]:
    parser = FrameParser(1 << 20)
    parser.feed(PROTOCOL_HEADER)
    frames = parser.feed(transport.value())
    transport.clear()
    return [f.method for f in frames if isinstance(f, MethodFrame)]


def test_handshakeOverStringTransport():
    clock = Clock()
    proto, transport = _connect(clock)
    proto.dataReceived(PROTOCOL_HEADER)
    (start,) = _methods(transport)
    assert isinstance(start, spec.ConnectionStart)
    caps = start.server_properties["capabilities"]
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify", "direct_reply_to"):
        assert caps[cap] is True
    assert start.mechanisms == b"PLAIN AMQPLAIN"
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    (tune,) = _methods(transport)
    assert isinstance(tune, spec.ConnectionTune) and tune.frame_max > 0
    proto.dataReceived(encodeMethod(0, spec.ConnectionTuneOk(10, 8192, 2)))
    proto.dataReceived(encodeMethod(0, spec.ConnectionOpen("/")))
    assert isinstance(_methods(transport)[0], spec.ConnectionOpenOk)
    clock.advance(1.0)
    assert transport.value() == b"\x08\x00\x00\x00\x00\x00\x00\xce"  # our heartbeat
    clock.advance(5.0)  # no client traffic for 2 intervals
    assert transport.disconnecting or transport.disconnected
    proto.connectionLost(None)


def test_channelErrorClosesOnlyTheChannel():
    clock = Clock()
    proto, transport = _connect(clock)
    proto.dataReceived(PROTOCOL_HEADER)
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    proto.dataReceived(encodeMethod(0, spec.ConnectionTuneOk(10, 8192, 0)))
    proto.dataReceived(encodeMethod(0, spec.ConnectionOpen("/")))
    _methods(transport)
    proto.dataReceived(encodeMethod(1, spec.ChannelOpen()))
    proto.dataReceived(encodeMethod(1, spec.QueueDeclare(0, "nope", True)))
    out = _methods(transport)
    assert isinstance(out[-1], spec.ChannelClose) and out[-1].reply_code == 404
    assert (out[-1].class_id, out[-1].method_id) == (50, 10)
    assert not transport.disconnecting
    proto.dataReceived(encodeMethod(2, spec.ChannelOpen()))
    assert isinstance(_methods(transport)[0], spec.ChannelOpenOk)
    proto.connectionLost(None)


def test_handshakeWaitsForBrokerRecovery():
    """Connection.Tune only after the broker's whenReady (durable queues recovered)."""
    clock = Clock()
    settings = Settings()
    broker = Broker(settings, clock)  # not started: storage not open yet
    server = AMQPServer(broker, clock)
    proto = AMQPServerProtocol(server, settings.listeners[0], clock)
    transport = StringTransport(peerAddress=_Peer())
    proto.makeConnection(transport)
    proto.dataReceived(PROTOCOL_HEADER)
    _methods(transport)
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    assert _methods(transport) == []
    broker.startService()
    (tune,) = _methods(transport)
    assert isinstance(tune, spec.ConnectionTune)
    assert server.start().called
    proto.connectionLost(None)


def test_guestRefusedFromNonLoopback():
    clock = Clock()
    proto, transport = _connect(clock)
    proto.peer = "10.1.2.3:5555"
    proto.dataReceived(PROTOCOL_HEADER)
    _methods(transport)
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    (close,) = _methods(transport)
    assert isinstance(close, spec.ConnectionClose) and close.reply_code == 403
    proto.connectionLost(None)


@pytest.mark.parametrize("bodySize", [0, 10, 4088, 4089, 10000])
def test_encodeDeliverMatchesTheGenericEncoder(bodySize: int):
    from robustmq.protocols.amqp._frames import encodeDeliver
    from robustmq.protocols.amqp._model import Message

    props = spec.BasicProperties(content_type="text/plain", delivery_mode=2, headers={"a": 1})
    body = bytes(range(256)) * (bodySize // 256) + b"z" * (bodySize % 256)
    msg = Message("ex", "rk.1", props, body)
    fast = encodeDeliver(7, b"\x03tag", 2**40, True, msg.tail, msg.header, body, 4096)
    generic = encodeContent(
        7, spec.BasicDeliver("tag", 2**40, True, "ex", "rk.1"), msg.propsRaw, body, 4096
    )
    assert fast == generic
    for chunks in ([fast], [fast[i : i + 1] for i in range(len(fast))]):
        parser = FrameParser(4096)
        parser.feed(PROTOCOL_HEADER)
        frames = [f for c in chunks for f in parser.feed(c)]
        assert isinstance(frames[0].method, spec.BasicDeliver)
        assert frames[0].method.delivery_tag == 2**40 and frames[0].method.redelivered
        assert frames[1].properties.headers == {"a": 1} and frames[1].bodySize == bodySize
        assert b"".join(f.data for f in frames[2:]) == body


def test_writesOfOneReadGoOutAsOneTransportWrite():
    clock = Clock()
    proto, transport = _connect(clock)
    proto.dataReceived(PROTOCOL_HEADER)
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    proto.dataReceived(encodeMethod(0, spec.ConnectionTuneOk(10, 8192, 0)))
    proto.dataReceived(encodeMethod(0, spec.ConnectionOpen("/")))
    _methods(transport)
    writes = []
    original = transport.write
    transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[method-assign]
    opens = b"".join(encodeMethod(n, spec.ChannelOpen()) for n in range(1, 6))
    proto.dataReceived(opens)
    assert len(writes) == 1
    assert [type(m) for m in _methods(transport)] == [spec.ChannelOpenOk] * 5
    proto.connectionLost(None)


def test_namesThatAreNotUtf8():
    """Found by bench/fuzz.py: a durable queue (or exchange) named with bytes that are not
    UTF-8 failed to be stored with a traceback and an internal error; it is a 406 now.
    Binding keys may be any bytes, and a durable binding with one is stored."""
    from robustmq.storage.memory import MemoryShardStore

    clock = Clock()
    settings = Settings()
    store = MemoryShardStore(settings.storage, clock=clock)
    store.durable = True  # persist as a disk store would
    store.open()
    broker = Broker(settings, clock, store=store)
    broker.startService()
    clock.advance(1)
    server = AMQPServer(broker, clock)
    proto = AMQPServerProtocol(server, settings.listeners[0], clock)
    transport = StringTransport(peerAddress=_Peer())
    proto.makeConnection(transport)
    proto.dataReceived(PROTOCOL_HEADER)
    proto.dataReceived(encodeMethod(0, spec.ConnectionStartOk({}, "PLAIN", b"\0guest\0guest")))
    proto.dataReceived(encodeMethod(0, spec.ConnectionTuneOk(10, 8192, 0)))
    proto.dataReceived(encodeMethod(0, spec.ConnectionOpen("/")))
    clock.advance(1)
    _methods(transport)
    bad = "q-\udcff"  # the bytes b"q-\xff" as the codec decodes them
    proto.dataReceived(encodeMethod(1, spec.ChannelOpen()))
    proto.dataReceived(encodeMethod(1, spec.QueueDeclare(0, bad, False, True)))
    out = _methods(transport)
    assert isinstance(out[-1], spec.ChannelClose) and out[-1].reply_code == 406, out
    proto.dataReceived(encodeMethod(2, spec.ChannelOpen()))
    proto.dataReceived(encodeMethod(2, spec.ExchangeDeclare(0, bad, "topic", False, True)))
    out = _methods(transport)
    assert isinstance(out[-1], spec.ChannelClose) and out[-1].reply_code == 406, out
    proto.dataReceived(encodeMethod(3, spec.ChannelOpen()))
    proto.dataReceived(encodeMethod(3, spec.ExchangeDeclare(0, "x", "topic", False, True)))
    proto.dataReceived(encodeMethod(3, spec.QueueDeclare(0, "q", False, True)))
    proto.dataReceived(encodeMethod(3, spec.QueueBind(0, "q", "x", "k.\udcff")))
    clock.advance(1)
    out = _methods(transport)
    assert isinstance(out[-1], spec.QueueBindOk), out
    assert not transport.disconnecting
    proto.connectionLost(None)
