"""The schema-generated codec and the framing parser, fed whole and one byte at a time."""

from __future__ import annotations

import struct
import uuid
from importlib import resources

import crc32c
import pytest

from robustmq.protocols.kafka import FrameTooLarge, KafkaParser, decodeRequest, loadSchemas
from robustmq.protocols.kafka._codec import (
    API_KEYS,
    SUPPORTED,
    apiVersionsError,
    decodeResponse,
    encodeRequest,
    encodeResponse,
)
from robustmq.protocols.kafka._records import InvalidRecord, controlBatch, iterBatches
from robustmq.protocols.kafka._schema import DecodeError, Reader


def test_everySchemaCompilesForEveryVersion() -> None:
    """Each message of each valid version builds a codec that round-trips its defaults."""
    schemas = loadSchemas()
    folder = resources.files("robustmq.protocols.kafka").joinpath("schemas")
    assert len(schemas) == len([e for e in folder.iterdir() if e.name.endswith(".json")])
    for schema in schemas.values():
        lo, hi = schema.validVersions
        for v in range(lo, hi + 1):
            data = schema.encode(v, {})
            back = schema.decode(v, Reader(bytes(data)))
            assert schema.encode(v, back) == data, (schema.name, v)


def test_flexibleAndClassicEncodings() -> None:
    """The same Metadata body is compact with tagged fields in v9+, int16-prefixed before."""
    body = {"topics": [{"name": "abc"}], "allow_auto_topic_creation": True}
    classic = encodeRequest(3, 8, 7, body, clientId="c")
    flexible = encodeRequest(3, 9, 7, body, clientId="c")
    # header: key, version, correlation id, client id (never compact)
    assert classic[4:15] == struct.pack(">hhih", 3, 8, 7, 1) + b"c"
    assert flexible[4:15] == struct.pack(">hhih", 3, 9, 7, 1) + b"c"
    # classic body: int32 array count, int16 string length
    assert classic[15:] == struct.pack(">ih", 1, 3) + b"abc" + b"\x01\x00\x00"
    # flexible: header tags, uvarint count+1, uvarint length+1, tags after each struct
    assert flexible[15:] == b"\x00" + b"\x02" + b"\x04abc\x00" + b"\x01\x00\x00\x00"
    for frame in (classic, flexible):
        r = decodeRequest(frame[4:])
        assert r.body["topics"] == [{"name": "abc"}]
        assert r.clientId == "c"


def test_taggedFieldsRoundTrip() -> None:
    """Tagged fields are written only when set, and read back; unknown tags are skipped."""
    schema = loadSchemas()["ApiVersionsResponse"]
    plain = schema.encode(3, {"api_keys": []})
    tagged = schema.encode(3, {"api_keys": [], "finalized_features_epoch": 5})
    assert len(tagged) > len(plain)
    assert schema.decode(3, Reader(bytes(tagged)))["finalized_features_epoch"] == 5
    assert schema.decode(3, Reader(bytes(plain)))["finalized_features_epoch"] == -1
    # an unknown tag (99) in the top-level tagged fields is skipped
    unknown = bytes(plain[:-1]) + b"\x01" + b"\x63\x02ab"
    assert schema.decode(3, Reader(unknown))["api_keys"] == []


def test_nullableAndUuid() -> None:
    """Nullable strings and arrays, and UUIDs, in both encodings."""
    schema = loadSchemas()["MetadataRequest"]
    for v in (1, 9, 10):
        data = schema.encode(v, {"topics": None})
        assert schema.decode(v, Reader(bytes(data)))["topics"] is None
    tid = uuid.uuid4()
    data = schema.encode(10, {"topics": [{"topic_id": tid, "name": None}]})
    assert schema.decode(10, Reader(bytes(data)))["topics"] == [{"topic_id": tid, "name": None}]


def test_truncatedInputRaises() -> None:
    """Every prefix of a valid request fails to decode cleanly (never an IndexError)."""
    frame = encodeRequest(
        11,
        7,
        1,
        {
            "group_id": "g",
            "member_id": "",
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b"xyz"}],
            "session_timeout_ms": 10000,
        },
    )[4:]
    decodeRequest(frame)
    for n in range(len(frame)):
        with pytest.raises(DecodeError):
            decodeRequest(frame[:n])


def test_responsesMatchKafkaPython() -> None:
    """kafka-python decodes what we encode (its own schema-driven classes)."""
    from kafka.protocol.metadata import MetadataResponse

    for v in (1, 5, 9, 11):
        body = {
            "brokers": [{"node_id": 1, "host": "h", "port": 9092, "rack": None}],
            "cluster_id": "c",
            "controller_id": 1,
            "topics": [
                {
                    "error_code": 0,
                    "name": "t",
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": 0,
                            "leader_id": 1,
                            "replica_nodes": [1],
                            "isr_nodes": [1],
                            "offline_replicas": [],
                        }
                    ],
                }
            ],
        }
        frame = encodeResponse(3, v, 42, body)
        cls = MetadataResponse[v]
        hdr = 4 + 4 + (1 if v >= 9 else 0)
        decoded = cls.decode(frame[hdr:])
        assert decoded.topics[0].name == "t"
        assert decoded.brokers[0].port == 9092


def test_apiVersionsUnsupportedIsV0Layout() -> None:
    """A too-new ApiVersions gets error 35 in the v0 layout with response header v0."""
    frame = apiVersionsError(9)
    corr, body = decodeResponse(18, 0, frame[4:])
    assert corr == 9 and body["error_code"] == 35
    assert {
        k["api_key"]: (k["min_version"], k["max_version"]) for k in body["api_keys"]
    } == SUPPORTED
    # v3 is flexible in its body, but the header stays v0 (no tag byte)
    frame3 = encodeResponse(18, 3, 5, {"api_keys": []})
    assert frame3[4:8] == struct.pack(">i", 5) and frame3[8:10] == b"\x00\x00"


def test_advertisedRangesExist() -> None:
    """Every advertised version is one the schemas define."""
    for key, (lo, hi) in SUPPORTED.items():
        req, resp = API_KEYS[key]
        assert req.validVersions[0] <= lo <= hi <= req.validVersions[1]
        assert resp.validVersions[0] <= lo <= hi <= resp.validVersions[1]


@pytest.mark.parametrize("chunk", [None, 1])
def test_parserWholeAndByteByByte(chunk: int | None) -> None:
    """Frames come out the same whether fed at once or one byte at a time."""
    frames = [encodeRequest(18, v, v, {}) for v in range(4)] + [
        encodeRequest(3, 11, 9, {"topics": None})
    ]
    stream = b"".join(frames)
    parser = KafkaParser(1 << 20)
    out: list[bytes] = []
    if chunk is None:
        out = parser.feed(stream)
    else:
        for i in range(len(stream)):
            out.extend(parser.feed(stream[i : i + 1]))
    assert out == [f[4:] for f in frames]
    assert [decodeRequest(f).correlationId for f in out] == [0, 1, 2, 3, 9]
    assert parser.buffered == 0


def test_parserRefusesOversizeEarly() -> None:
    """The size prefix alone triggers the refusal; nothing of the body is needed."""
    parser = KafkaParser(100)
    with pytest.raises(FrameTooLarge):
        parser.feed(struct.pack(">i", 101))
    with pytest.raises(FrameTooLarge):
        KafkaParser(100).feed(struct.pack(">i", -1))


def _batch(records: int = 3, producerId: int = -1) -> bytes:
    tail = (
        struct.pack(">hiqqqhii", 0, records - 1, 1000, 1000, producerId, 0, 0, records)
        + b"\x00" * 7 * records
    )
    crc = crc32c.crc32c(tail)
    return struct.pack(">qiibI", 0, 4 + 1 + 4 + len(tail), 0, 2, crc) + tail


def test_recordBatchesCheckedAndSplit() -> None:
    """Batches are split, CRC-checked, and a flipped byte is refused."""
    data = _batch(3) + _batch(5)
    hs = list(iterBatches(data))
    assert [(h.count, h.lastOffsetDelta) for h in hs] == [(3, 2), (5, 4)]
    bad = bytearray(data)
    bad[70] ^= 1
    with pytest.raises(InvalidRecord):
        list(iterBatches(bytes(bad)))
    with pytest.raises(InvalidRecord):
        list(iterBatches(data[:-1]))


def test_controlBatch() -> None:
    """A transaction marker is a valid, CRC-correct control batch."""
    (h,) = iterBatches(controlBatch(7, 1, True, 1234))
    assert h.control and h.transactional and h.producerId == 7 and h.count == 1
