"""Property tests of the three codecs (hypothesis), with a bounded, deterministic budget.

For MQTT, Kafka and AMQP: what the encoder writes, the decoder reads back
(fed whole and cut anywhere), and arbitrary or mutated bytes never make a
decoder raise anything but the protocol's own errors (which the connection
turns into a close with the protocol's error code).  Settings are
derandomized with no deadline, so a run is the same on every machine and
takes a few seconds; C{bench/fuzz.py} throws millions of frames at a live
node over real sockets.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustmq.protocols.amqp import _codegen
from robustmq.protocols.amqp import spec as amqp
from robustmq.protocols.amqp._frames import (
    PROTOCOL_HEADER,
    FrameError,
    FrameParser,
    MethodFrame,
    encodeMethod,
)
from robustmq.protocols.amqp._types import DecodeError as AMQPDecodeError
from robustmq.protocols.amqp._types import decodeTable, encodeTable
from robustmq.protocols.kafka import DecodeError, FrameTooLarge, KafkaParser, decodeRequest
from robustmq.protocols.kafka._codec import SUPPORTED, UnsupportedVersion, encodeRequest
from robustmq.protocols.kafka._records import InvalidRecord, iterBatches
from robustmq.protocols.mqtt import MQTTError, MQTTParser, encode
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    MQTT31,
    MQTT311,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)

BOUNDED = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def cuts(data: bytes, at: int) -> list[bytes]:
    """C{data} in two chunks, cut at C{at} (modulo its length)."""
    at = at % (len(data) + 1)
    return [data[:at], data[at:]]


# -- MQTT -------------------------------------------------------------------

#: MQTT strings: UTF-8 without U+0000 (MQTT-1.5.4-2; the decoder refuses it)
mqttText = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))

_level = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="+#/\x00"),
    min_size=1,
    max_size=8,
)
topicNames = st.lists(_level, min_size=1, max_size=4).map("/".join)
topicFilters = st.lists(st.one_of(_level, st.just("+")), min_size=1, max_size=4).map(
    "/".join
) | topicNames.map(lambda t: t + "/#")
pids = st.integers(1, 65535)


@st.composite
def publishes(draw: Any) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(topicNames),
        draw(st.binary(max_size=300)),
        qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packetId=draw(pids) if qos else None,
    )


@st.composite
def connects(draw: Any) -> Connect:
    level = draw(st.sampled_from([MQTT31, MQTT311]))
    will = draw(st.booleans())
    user = draw(st.one_of(st.none(), mqttText.filter(lambda t: len(t) <= 20)))
    return Connect(
        draw(st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), max_size=23)) or "c",
        level,
        cleanSession=draw(st.booleans()),
        keepAlive=draw(st.integers(0, 65535)),
        willTopic=draw(topicNames) if will else None,
        willPayload=draw(st.binary(max_size=50)) if will else None,
        willQos=draw(st.integers(0, 2)) if will else 0,
        willRetain=draw(st.booleans()) if will else False,
        username=user,
        password=draw(st.one_of(st.none(), st.binary(max_size=20))) if user is not None else None,
    )


clientPackets = st.one_of(
    publishes(),
    connects(),
    pids.map(Puback),
    pids.map(Pubrec),
    pids.map(Pubrel),
    pids.map(Pubcomp),
    st.builds(Subscribe, pids, st.lists(st.tuples(topicFilters, st.integers(0, 2)), min_size=1)),
    st.builds(Unsubscribe, pids, st.lists(topicFilters, min_size=1, max_size=5)),
    st.just(Pingreq()),
    st.just(Disconnect()),
)


@BOUNDED
@given(st.lists(clientPackets, min_size=1, max_size=6), st.integers(0, 1 << 16))
def test_mqttRoundTrip(packets: list[Any], at: int) -> None:
    """Client packets (3.1, 3.1.1) decode to what was encoded, however the stream is cut."""
    stream = b"".join(encode(p) for p in packets)
    parser = MQTTParser()
    got = [p for chunk in cuts(stream, at) for p in parser.feed(chunk)]
    assert got == packets


@BOUNDED
@given(
    st.lists(
        st.builds(
            Publish,
            topicNames,
            st.binary(max_size=200),
            st.just(1),
            packetId=pids,
            properties=st.fixed_dictionaries(
                {},
                optional={
                    "message_expiry_interval": st.integers(0, 2**32 - 1),
                    "content_type": mqttText.filter(lambda t: len(t) <= 20),
                    "payload_format_indicator": st.integers(0, 1),
                    "user_property": st.lists(
                        st.tuples(
                            mqttText.filter(lambda t: len(t) <= 8),
                            mqttText.filter(lambda t: len(t) <= 8),
                        ),
                        min_size=1,
                        max_size=3,
                    ),
                },
            ),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 1 << 16),
)
def test_mqtt5PublishRoundTrip(packets: list[Publish], at: int) -> None:
    """5.0 PUBLISH with properties round-trips through a parser switched to 5.0."""
    stream = b"".join(encode(p, MQTT5) for p in packets)
    parser = MQTTParser()
    parser.version = MQTT5
    got = [p for chunk in cuts(stream, at) for p in parser.feed(chunk)]
    assert got == packets


_MQTT5_CONNECT = encode(Connect("fuzz", MQTT5))


@BOUNDED
@given(st.binary(max_size=400), st.booleans())
def test_mqttArbitraryBytesRaiseOnlyMqttErrors(data: bytes, v5: bool) -> None:
    parser = MQTTParser(maxPacketSize=4096)
    try:
        if v5:
            parser.feed(_MQTT5_CONNECT)
        parser.feed(data)
    except MQTTError:
        pass


@BOUNDED
@given(st.lists(clientPackets, min_size=1, max_size=4), st.data())
def test_mqttMutatedPacketsRaiseOnlyMqttErrors(packets: list[Any], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode(p) for p in packets))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    try:
        MQTTParser(maxPacketSize=65536).feed(bytes(stream))
    except MQTTError:
        pass


# -- Kafka ------------------------------------------------------------------

kafkaNames = st.text(st.sampled_from("abcxyz019._-"), min_size=1, max_size=20)


def _metadata(draw: Any) -> dict[str, Any]:
    return {
        "topics": draw(st.lists(st.fixed_dictionaries({"name": kafkaNames}), max_size=4)),
        "allow_auto_topic_creation": draw(st.booleans()),
    }


def _produce(draw: Any) -> dict[str, Any]:
    partition = st.fixed_dictionaries(
        {"index": st.integers(0, 1000), "records": st.binary(max_size=100)}
    )
    return {
        "transactional_id": None,
        "acks": draw(st.sampled_from([-1, 0, 1])),
        "timeout_ms": draw(st.integers(0, 2**31 - 1)),
        "topic_data": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": kafkaNames, "partition_data": st.lists(partition, max_size=3)}
                ),
                max_size=3,
            )
        ),
    }


def _fetch(draw: Any) -> dict[str, Any]:
    part = st.fixed_dictionaries(
        {
            "partition": st.integers(0, 1000),
            "fetch_offset": st.integers(0, 2**62),
            "partition_max_bytes": st.integers(0, 2**31 - 1),
        }
    )
    return {
        "replica_id": -1,
        "max_wait_ms": draw(st.integers(0, 10000)),
        "min_bytes": draw(st.integers(0, 1 << 20)),
        "max_bytes": draw(st.integers(0, 2**31 - 1)),
        "isolation_level": draw(st.integers(0, 1)),
        "topics": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"topic": kafkaNames, "partitions": st.lists(part, max_size=3)}
                ),
                max_size=3,
            )
        ),
    }


_BODIES = {3: _metadata, 0: _produce, 1: _fetch}


@BOUNDED
@given(st.data())
def test_kafkaRequestRoundTrip(data: st.DataObject) -> None:
    """encode → decode → encode is the identity, for every supported version."""
    key = data.draw(st.sampled_from(sorted(_BODIES)))
    lo, hi = SUPPORTED[key]
    version = data.draw(st.integers(max(lo, 3 if key == 0 else lo), hi))
    body = _BODIES[key](data.draw)
    frame = encodeRequest(key, version, 7, body, clientId="c")
    request = decodeRequest(frame[4:])
    assert (request.apiKey, request.apiVersion, request.correlationId) == (key, version, 7)
    assert encodeRequest(key, version, 7, request.body, clientId="c") == frame


@BOUNDED
@given(st.binary(max_size=300))
def test_kafkaArbitraryFramesRaiseOnlyKafkaErrors(data: bytes) -> None:
    try:
        decodeRequest(data)
    except (DecodeError, UnsupportedVersion):
        pass
    parser = KafkaParser(1 << 16)
    try:
        parser.feed(data)
    except FrameTooLarge:
        pass
    try:
        list(iterBatches(data))
    except InvalidRecord:
        pass


@BOUNDED
@given(st.data())
def test_kafkaMutatedRequestsRaiseOnlyKafkaErrors(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(_BODIES)))
    lo, hi = SUPPORTED[key]
    version = data.draw(st.integers(max(lo, 3 if key == 0 else lo), hi))
    frame = bytearray(encodeRequest(key, version, 1, _BODIES[key](data.draw))[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        decodeRequest(bytes(frame))
    except (DecodeError, UnsupportedVersion):
        pass


# -- AMQP -------------------------------------------------------------------

_SPEC = json.loads(_codegen.SPEC.read_text())
_DOMAINS = dict(_SPEC["domains"])
_shortstr = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
tableValues = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**31), 2**31 - 1),
        st.integers(2**31, 2**62),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.none(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_shortstr, inner, max_size=3)
    ),
    max_leaves=8,
)
tables = st.dictionaries(_shortstr, tableValues, max_size=4)
_BY_TYPE = {
    "bit": st.booleans(),
    "octet": st.integers(0, 255),
    "short": st.integers(0, 65535),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**63 - 1),
    "shortstr": _shortstr,
    "longstr": st.text(max_size=40),
    "table": tables,
}


def _methodStrategy(cls: dict[str, Any], method: dict[str, Any]) -> Any:
    name = "".join(w.capitalize() for w in f"{cls['name']}-{method['name']}".split("-"))
    klass = getattr(amqp, name)
    fields = [_BY_TYPE[a.get("type") or _DOMAINS[a["domain"]]] for a in method.get("arguments", [])]
    return st.tuples(*fields).map(lambda values: klass(*values))


methods = st.one_of(*[_methodStrategy(c, m) for c in _SPEC["classes"] for m in c["methods"]])


def _normal(value: Any) -> Any:
    """What a field value reads back as (longstr fields come back as bytes or str)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


@BOUNDED
@given(st.lists(methods, min_size=1, max_size=5), st.integers(0, 1 << 16))
def test_amqpMethodFramesRoundTrip(sent: list[Any], at: int) -> None:
    stream = PROTOCOL_HEADER + b"".join(encodeMethod(1, m) for m in sent)
    parser = FrameParser(1 << 20)
    frames = [f for chunk in cuts(stream, at) for f in parser.feed(chunk)]
    got = [f.method for f in frames if isinstance(f, MethodFrame)]
    assert [type(m) for m in got] == [type(m) for m in sent]
    for a, b in zip(got, sent, strict=True):
        assert a.encode() == b.encode()


@BOUNDED
@given(tables)
def test_amqpTableRoundTrip(table: dict[str, Any]) -> None:
    out: list[bytes] = []
    encodeTable(table, out)
    data = b"".join(out)
    back, end = decodeTable(data, 0)
    assert end == len(data)
    again: list[bytes] = []
    encodeTable(back, again)
    assert b"".join(again) == data


@BOUNDED
@given(st.binary(max_size=400))
def test_amqpArbitraryBytesRaiseOnlyAmqpErrors(data: bytes) -> None:
    parser = FrameParser(4096)
    try:
        parser.feed(PROTOCOL_HEADER + data)
    except FrameError:
        pass
    try:
        decodeTable(struct.pack(">I", len(data)) + data, 0)
    except AMQPDecodeError:
        pass


@BOUNDED
@given(st.lists(methods, min_size=1, max_size=3), st.data())
def test_amqpMutatedFramesRaiseOnlyAmqpErrors(sent: list[Any], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encodeMethod(1, m) for m in sent))
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    try:
        FrameParser(1 << 16).feed(PROTOCOL_HEADER + bytes(stream))
    except FrameError:
        pass
