"""How brokers pack forwarded messages and store operations (robustmq.cluster.wire)."""

from __future__ import annotations

import pytest

from robustmq.cluster import wire
from robustmq.core.message import Message


def test_forwardedMessageRoundTrip() -> None:
    props = {
        "message_expiry_interval": 30,
        "user_property": [("k", "v"), ("k", "w")],
        "correlation_data": b"\x00\x01",
        "content_type": "text/plain",
    }
    message = Message("a/é/b", b"\x00payload", 2, True, 1234.5, props, "client-ü")
    targets = wire.encodeTargets({"b3", "b1"})
    entry = wire.encodeForward(message, wire.ROUTE | wire.RETAIN, ["$share/g/a/#"], targets)
    got, flags, groups, rawTargets = wire.decodeForward(entry)
    assert (flags, groups) == (wire.ROUTE | wire.RETAIN, ["$share/g/a/#"])
    assert wire.decodeTargets(rawTargets) == {"b1", "b3"}
    assert (got.topic, got.payload, got.qos, got.retain) == ("a/é/b", b"\x00payload", 2, True)
    assert (got.timestamp, got.origin) == (1234.5, "client-ü")
    assert got.expiresAt == message.expiresAt == 1264.5
    assert got.properties == props


def test_plainMessageHasNoOriginNoExpiryAndIsEncodedOnce() -> None:
    message = Message("t", b"", 0, False, 1.0)
    first = wire.encodeForward(message, wire.ROUTE)
    assert wire.encodeForward(message, wire.ROUTE) == first
    got, flags, groups, targets = wire.decodeForward(first)
    assert (got.origin, got.expiresAt, got.properties, groups) == (None, None, None, [])
    assert wire.decodeTargets(targets) == frozenset()


def test_batchDecodedInOnePassMatchesEntryByEntry() -> None:
    """decodeForwards over a packed (and chunked) batch gives what decodeForward gives."""
    props = {"content_type": "text/plain", "user_property": [("k", "v")]}
    messages = [
        Message("a/b", b"one", 0, False, 1.0, None, "c1"),
        Message("a/b", b"two" * 300_000, 1, True, 2.0, props, None),
        Message("x/é", b"", 2, False, 3.0, None, "c1"),
    ]
    entries = [
        wire.encodeForward(messages[0], wire.ROUTE, None, wire.encodeTargets({"n1", "n2"})),
        wire.encodeForward(messages[1], wire.ROUTE | wire.RETAIN, ["$share/g/a/#"]),
        wire.encodeForward(messages[2], wire.SESSION, ["c9"]),
    ]
    chunks = wire.pack(entries)
    assert len(chunks) > 1
    got = wire.decodeForwards(chunks)
    want = [wire.decodeForward(e) for e in entries]
    for (m1, f1, n1, t1), (m2, f2, n2, t2) in zip(got, want, strict=True):
        assert (f1, n1, t1) == (f2, n2, t2)
        for attr in ("topic", "payload", "qos", "retain", "timestamp", "origin", "expiresAt"):
            assert getattr(m1, attr) == getattr(m2, attr), attr
        assert m1.properties == m2.properties and m1.encodings is None
    with pytest.raises(ValueError):
        wire.decodeForwards([b"\x00\x00\x00\x09abc"])


def test_batchesSurviveChunking() -> None:
    entries = [b"x" * (700 * 1024), b"", b"small"]
    chunks = wire.pack(entries)
    assert all(len(c) <= wire.CHUNK for c in chunks)
    assert wire.unpack(chunks) == entries
    with pytest.raises(ValueError):
        wire.unpack([b"\x00\x00\x00\x09abc"])
    with pytest.raises(ValueError):
        wire.unpack("not a list")  # type: ignore[arg-type]


def test_storeOperationsRoundTrip() -> None:
    op = wire.encodeOp(wire.UPSERT, "mqtt/sessions", b"c\x001", b"value")
    assert wire.decodeOp(op) == (wire.UPSERT, "mqtt/sessions", b"c\x001", b"value")
    op = wire.encodeOp(wire.DELETE, "mqtt/sessions", b"c", None)
    assert wire.decodeOp(op) == (wire.DELETE, "mqtt/sessions", b"c", None)
