"""
Sans-IO Kafka framing and request/response codec.

L{KafkaParser} takes bytes as they arrive and returns complete requests:
the 4-byte size prefix is checked against the configured maximum as soon as
it is read, so an oversize request is refused without being buffered.
Request bodies are decoded with the schema-generated codec (L{_schema}).
"""

from __future__ import annotations

import struct
from typing import Any

from robustmq.protocols.kafka._schema import (
    API_KEYS,
    DecodeError,
    Reader,
    SplicedBuffer,
    loadSchemas,
)

__all__ = [
    "API_NAMES",
    "SUPPORTED",
    "FrameTooLarge",
    "KafkaParser",
    "Request",
    "UnsupportedVersion",
    "apiVersionsError",
    "encodeRequest",
    "encodeResponse",
    "encodeResponseParts",
]

loadSchemas()

_SIZE = struct.Struct(">i")
_HEAD = struct.Struct(">hhi")

#: api key -> snake_case name, e.g. 0 -> "produce"
API_NAMES: dict[int, str] = {}
for _key, (_req, _resp) in API_KEYS.items():
    _n = _req.name[: -len("Request")]
    API_NAMES[_key] = "".join("_" + c.lower() if c.isupper() else c for c in _n).lstrip("_")

#: The version ranges advertised in ApiVersions: those of Apache Kafka 3.0
#: for the APIs served here, with Produce and Fetch starting at the first
#: versions that carry record batch v2 (so batches are stored as received).
SUPPORTED: dict[int, tuple[int, int]] = {
    0: (3, 9),  # Produce
    1: (4, 16),  # Fetch (v13+: topic ids)
    2: (0, 7),  # ListOffsets
    3: (0, 12),  # Metadata (v10+: topic ids)
    8: (0, 9),  # OffsetCommit (v9: KIP-848 member epochs)
    9: (0, 9),  # OffsetFetch
    10: (0, 4),  # FindCoordinator
    11: (0, 7),  # JoinGroup
    12: (0, 4),  # Heartbeat
    13: (0, 4),  # LeaveGroup
    14: (0, 5),  # SyncGroup
    15: (0, 5),  # DescribeGroups
    16: (0, 5),  # ListGroups (v5: group types, KIP-848)
    17: (0, 1),  # SaslHandshake
    18: (0, 3),  # ApiVersions
    19: (0, 7),  # CreateTopics
    20: (0, 6),  # DeleteTopics
    21: (0, 1),  # DeleteRecords
    22: (0, 4),  # InitProducerId
    23: (0, 4),  # OffsetForLeaderEpoch
    24: (0, 3),  # AddPartitionsToTxn
    25: (0, 3),  # AddOffsetsToTxn
    26: (0, 3),  # EndTxn
    28: (0, 3),  # TxnOffsetCommit
    29: (0, 3),  # DescribeAcls
    30: (0, 3),  # CreateAcls
    31: (0, 3),  # DeleteAcls
    32: (0, 4),  # DescribeConfigs
    33: (0, 2),  # AlterConfigs
    35: (0, 3),  # DescribeLogDirs
    36: (0, 2),  # SaslAuthenticate
    37: (0, 3),  # CreatePartitions
    42: (0, 2),  # DeleteGroups
    43: (0, 2),  # ElectLeaders
    44: (0, 0),  # IncrementalAlterConfigs
    45: (0, 0),  # AlterPartitionReassignments
    46: (0, 0),  # ListPartitionReassignments
    50: (0, 0),  # DescribeUserScramCredentials
    51: (0, 0),  # AlterUserScramCredentials
    68: (0, 1),  # ConsumerGroupHeartbeat (KIP-848)
    69: (0, 0),  # ConsumerGroupDescribe
    76: (1, 1),  # ShareGroupHeartbeat (KIP-932)
    77: (1, 1),  # ShareGroupDescribe
    78: (1, 1),  # ShareFetch
    79: (1, 1),  # ShareAcknowledge
    90: (0, 0),  # DescribeShareGroupOffsets
    91: (0, 0),  # AlterShareGroupOffsets
    92: (0, 0),  # DeleteShareGroupOffsets
}

_REQ_HEADER = None
_RESP_HEADER = None


class FrameTooLarge(ValueError):
    """A request's size prefix is above the configured maximum (or negative)."""


class UnsupportedVersion(Exception):
    """A request whose API key or version is not served; carries what was parsed."""

    def __init__(self, apiKey: int, apiVersion: int, correlationId: int) -> None:
        super().__init__(f"api {apiKey} v{apiVersion} not supported")
        self.apiKey = apiKey
        self.apiVersion = apiVersion
        self.correlationId = correlationId


class Request:
    """One decoded request: header fields and the body dict."""

    __slots__ = ("apiKey", "apiVersion", "correlationId", "clientId", "body", "size")

    def __init__(
        self,
        apiKey: int,
        apiVersion: int,
        correlationId: int,
        clientId: str | None,
        body: dict[str, Any],
        size: int,
    ) -> None:
        self.apiKey = apiKey
        self.apiVersion = apiVersion
        self.correlationId = correlationId
        self.clientId = clientId
        self.body = body
        self.size = size

    @property
    def name(self) -> str:
        return API_NAMES[self.apiKey]


def _headers() -> tuple[Any, Any]:
    global _REQ_HEADER, _RESP_HEADER
    if _REQ_HEADER is None:
        schemas = loadSchemas()
        _REQ_HEADER = schemas["RequestHeader"]
        _RESP_HEADER = schemas["ResponseHeader"]
    return _REQ_HEADER, _RESP_HEADER


def decodeRequest(frame: bytes) -> Request:
    """Decode one frame (without its size prefix) into a L{Request}.

    @raise UnsupportedVersion: unknown API key or version outside L{SUPPORTED}.
    @raise DecodeError: the bytes do not match the schema.
    """
    if len(frame) < _HEAD.size:
        raise DecodeError("request shorter than its header")
    apiKey, apiVersion, correlationId = _HEAD.unpack_from(frame, 0)
    rng = SUPPORTED.get(apiKey)
    if rng is None or not rng[0] <= apiVersion <= rng[1]:
        raise UnsupportedVersion(apiKey, apiVersion, correlationId)
    reqSchema = API_KEYS[apiKey][0]
    flexible = reqSchema.isFlexible(apiVersion)
    reqHeader, _ = _headers()
    r = Reader(frame)
    header = reqHeader.decode(2 if flexible else 1, r)
    body = reqSchema.decode(apiVersion, r)
    # Bytes after the last field are ignored, as Apache Kafka does (librdkafka's
    # all-topics Metadata v9+ request carries some).
    return Request(apiKey, apiVersion, correlationId, header["client_id"], body, len(frame))


def encodeResponse(apiKey: int, apiVersion: int, correlationId: int, body: dict[str, Any]) -> bytes:
    """A whole response frame, size prefix included."""
    respSchema = API_KEYS[apiKey][1]
    flexible = respSchema.isFlexible(apiVersion) and apiKey != 18  # ApiVersions: header v0
    _, respHeader = _headers()
    out = bytearray(4)
    respHeader.encode(1 if flexible else 0, {"correlation_id": correlationId}, out)
    respSchema.encode(apiVersion, body, out)
    _SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def encodeResponseParts(
    apiKey: int, apiVersion: int, correlationId: int, body: dict[str, Any]
) -> list[Any]:
    """A whole response frame as a list of C{bytes} for C{writeSequence}.

    C{Spliced} field values (the stored record batches of a Fetch) are
    passed through as they are, between the encoded pieces around them.
    """
    respSchema = API_KEYS[apiKey][1]
    flexible = respSchema.isFlexible(apiVersion) and apiKey != 18
    _, respHeader = _headers()
    out = SplicedBuffer()
    out += b"\0\0\0\0"
    respHeader.encode(1 if flexible else 0, {"correlation_id": correlationId}, out)
    respSchema.encode(apiVersion, body, out)
    if not out.splices:
        _SIZE.pack_into(out, 0, len(out) - 4)
        return [bytes(out)]
    total = len(out) - 4 + sum(sum(len(p) for p in parts) for _, parts in out.splices)
    _SIZE.pack_into(out, 0, total)
    # Twisted's transports take bytes only (and join what is queued once, in
    # doWrite): the small encoded pieces are copied, the batches are not.
    pieces: list[Any] = []
    pos = 0
    for at, parts in out.splices:
        pieces.append(bytes(out[pos:at]))
        pieces.extend(parts)
        pos = at
    pieces.append(bytes(out[pos:]))
    return pieces


def apiVersionsBody(errorCode: int = 0) -> dict[str, Any]:
    """The ApiVersions response body advertising L{SUPPORTED}."""
    return {
        "error_code": errorCode,
        "api_keys": [
            {"api_key": k, "min_version": lo, "max_version": hi}
            for k, (lo, hi) in sorted(SUPPORTED.items())
        ],
        "throttle_time_ms": 0,
    }


def apiVersionsError(correlationId: int) -> bytes:
    """UNSUPPORTED_VERSION (35) for an ApiVersions request too new, in the v0 layout."""
    return encodeResponse(18, 0, correlationId, apiVersionsBody(35))


def encodeRequest(
    apiKey: int, apiVersion: int, correlationId: int, body: dict[str, Any], clientId: str = "t"
) -> bytes:
    """A whole request frame (used by tests and the bench to speak to a broker)."""
    reqSchema = API_KEYS[apiKey][0]
    reqHeader, _ = _headers()
    out = bytearray(4)
    reqHeader.encode(
        2 if reqSchema.isFlexible(apiVersion) else 1,
        {
            "request_api_key": apiKey,
            "request_api_version": apiVersion,
            "correlation_id": correlationId,
            "client_id": clientId,
        },
        out,
    )
    reqSchema.encode(apiVersion, body, out)
    _SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decodeResponse(apiKey: int, apiVersion: int, frame: bytes) -> tuple[int, dict[str, Any]]:
    """Decode a response frame (without size prefix): C{(correlationId, body)}."""
    respSchema = API_KEYS[apiKey][1]
    flexible = respSchema.isFlexible(apiVersion) and apiKey != 18
    _, respHeader = _headers()
    r = Reader(frame)
    header = respHeader.decode(1 if flexible else 0, r)
    body = respSchema.decode(apiVersion, r)
    return header["correlation_id"], body


class KafkaParser:
    """Splits a byte stream into size-prefixed frames, refusing oversize ones early."""

    def __init__(self, maxFrameSize: int) -> None:
        self.maxFrameSize = maxFrameSize
        self._buf = bytearray()
        self._need = -1

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    @property
    def pendingFrame(self) -> int:
        """Bytes the frame being received will hold: its full size once the prefix is read."""
        buf = self._buf
        if len(buf) < 4:
            return len(buf)
        (size,) = _SIZE.unpack_from(buf, 0)
        return max(size, 0) + 4

    def feed(self, data: bytes) -> list[bytes]:
        """Add C{data}; return every complete frame (without its size prefix).

        @raise FrameTooLarge: as soon as a size prefix above the maximum is seen.
        """
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        while True:
            if len(buf) - pos < 4:
                break
            (size,) = _SIZE.unpack_from(buf, pos)
            if size < 0 or size > self.maxFrameSize:
                raise FrameTooLarge(f"request of {size} bytes; the maximum is {self.maxFrameSize}")
            if len(buf) - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames
