"""How brokers pack forwarded messages and replicated store operations for Perspective Broker.

PB (banana) refuses strings over 640 KiB, and jellying thousands of small
objects is slow; so a batch travels as one length-prefixed blob cut into
chunks of at most L{CHUNK} bytes.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable

from robustmq.core.message import Message
from robustmq.core.persistence import propertiesFromJson, propertiesToJson

#: Largest piece of a packed batch (below banana's 640 KiB string limit).
CHUNK = 512 * 1024

_LEN = struct.Struct("!I")
#: A forward's header: flags, lengths of the names (JSON) and of the targets.
_FORWARD = struct.Struct("!BHH")
#: A forwarded message: QoS, bits (retain, has expiry), timestamp, expiry, lengths of
#: topic, origin and properties (JSON, only when there are any); then the payload.
_MESSAGE = struct.Struct("!BBddHHI")
_RETAINED = 1
_EXPIRES = 2
_OP = struct.Struct("!BHI")

#: Key of the encoded message in C{Message.encodings}.
_CACHE_KEY = "cluster-link"

#: Forward flags: route to the receiver's ordinary subscribers; store as retained;
#: deliver to the sessions named (a message redirected after a hand-over, see moves.py).
ROUTE = 1
RETAIN = 2
SESSION = 4

UPSERT = 0
DELETE = 1


def pack(entries: Iterable[bytes]) -> list[bytes]:
    """Entries as length-prefixed records, cut into chunks for PB."""
    blob = b"".join(_LEN.pack(len(e)) + e for e in entries)
    return [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)] or [b""]


def unpack(chunks: list[bytes]) -> list[bytes]:
    """The inverse of L{pack}.

    @raise ValueError: the chunks are not a packed batch.
    """
    if not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks):
        raise ValueError("a packed batch is a list of bytes")
    blob = b"".join(chunks)
    entries = []
    offset = 0
    while offset < len(blob):
        (n,) = _LEN.unpack_from(blob, offset)
        offset += 4
        if offset + n > len(blob):
            raise ValueError("truncated batch entry")
        entries.append(blob[offset : offset + n])
        offset += n
    return entries


def encodeMessage(message: Message) -> bytes:
    """A message for the broker link: a fixed binary header, no JSON unless it has
    MQTT 5 properties (the per-message cost that matters when forwarding)."""
    topic = message.topic.encode()
    origin = message.origin.encode() if message.origin is not None else b"\xff"
    props = (
        json.dumps(propertiesToJson(message.properties), separators=(",", ":")).encode()
        if message.properties
        else b""
    )
    bits = (_RETAINED if message.retain else 0) | (_EXPIRES if message.expiresAt else 0)
    header = _MESSAGE.pack(
        message.qos,
        bits,
        message.timestamp,
        message.expiresAt or 0.0,
        len(topic),
        len(origin),
        len(props),
    )
    return b"".join((header, topic, origin, props, message.payload))


def decodeMessage(data: bytes, offset: int = 0) -> Message:
    """The inverse of L{encodeMessage}."""
    qos, bits, timestamp, expiresAt, nTopic, nOrigin, nProps = _MESSAGE.unpack_from(data, offset)
    at = offset + _MESSAGE.size
    topic = data[at : at + nTopic].decode()
    at += nTopic
    rawOrigin = data[at : at + nOrigin]
    at += nOrigin
    props = propertiesFromJson(json.loads(data[at : at + nProps])) if nProps else None
    at += nProps
    message = Message(
        topic,
        data[at:],
        qos,
        bool(bits & _RETAINED),
        timestamp,
        props,
        None if rawOrigin == b"\xff" else rawOrigin.decode(),
    )
    message.expiresAt = expiresAt if bits & _EXPIRES else None
    return message


def encodeForward(
    message: Message, flags: int, names: list[str] | None = None, targets: bytes = b""
) -> bytes:
    """One forwarded message: flags, names, targets, the message.

    C{names} are the shared groups (C{$share/g/f}) to deliver to, or with
    L{SESSION} the client ids.  C{targets} are the brokers that route this
    message to their ordinary subscribers (L{encodeTargets}).  The encoded
    message is cached on the message (C{encodings}), so a message forwarded
    to several brokers is encoded once.
    """
    cache = message.encodings
    body = cache.get(_CACHE_KEY) if cache is not None else None
    if body is None:
        body = encodeMessage(message)
        if cache is None:
            message.encodings = cache = {}
        cache[_CACHE_KEY] = body
    packed = json.dumps(names).encode() if names else b""
    return b"".join((_FORWARD.pack(flags, len(packed), len(targets)), packed, targets, body))


def decodeForward(entry: bytes) -> tuple[Message, int, list[str], bytes]:
    """The inverse of L{encodeForward}: (message, flags, names, targets as encoded)."""
    flags, nNames, nTargets = _FORWARD.unpack_from(entry)
    start = _FORWARD.size
    names = json.loads(entry[start : start + nNames]) if nNames else []
    start += nNames
    targets = entry[start : start + nTargets]
    return decodeMessage(entry, start + nTargets), flags, names, targets


#: Decoded topics and client ids (they repeat across messages); bounded, then cleared.
_names: dict[bytes, str | None] = {}
_NAMES_LIMIT = 10_000
_NO_ORIGIN = b"\xff"

#: A forwarded message as decoded from the link: (message, flags, names, targets).
Forwarded = tuple[Message, int, list[str], bytes]


def decodeForwards(chunks: list[bytes]) -> list[Forwarded]:
    """A packed batch of forwarded messages (L{pack} of L{encodeForward}s) decoded in one
    pass: the same as L{unpack}, then L{decodeForward} of each entry, without copying each
    entry first and with topics and client ids decoded once while they repeat.

    @raise ValueError: the chunks are not a packed batch.
    """
    if not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks):
        raise ValueError("a packed batch is a list of bytes")
    blob = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    out: list[Forwarded] = []
    append = out.append
    names = _names
    unpackLength = _LEN.unpack_from
    unpackForward = _FORWARD.unpack_from
    unpackMessage = _MESSAGE.unpack_from
    forwardSize = _FORWARD.size
    messageSize = _MESSAGE.size
    new = Message.__new__
    offset = 0
    size = len(blob)
    while offset < size:
        (n,) = unpackLength(blob, offset)
        offset += 4
        end = offset + n
        if end > size:
            raise ValueError("truncated batch entry")
        flags, nNames, nTargets = unpackForward(blob, offset)
        at = offset + forwardSize
        groups: list[str] = json.loads(blob[at : at + nNames]) if nNames else []
        at += nNames
        targets = blob[at : at + nTargets]
        at += nTargets
        qos, bits, timestamp, expiresAt, nTopic, nOrigin, nProps = unpackMessage(blob, at)
        at += messageSize
        raw = blob[at : at + nTopic]
        at += nTopic
        topic = names.get(raw)
        if topic is None:
            if len(names) >= _NAMES_LIMIT:
                names.clear()
            topic = names[raw] = raw.decode()
        raw = blob[at : at + nOrigin]
        at += nOrigin
        if raw in names:
            origin = names[raw]
        else:
            if len(names) >= _NAMES_LIMIT:
                names.clear()
            origin = names[raw] = None if raw == _NO_ORIGIN else raw.decode()
        props = None
        if nProps:
            props = propertiesFromJson(json.loads(blob[at : at + nProps]))
            at += nProps
        # Field by field: Message.__init__ would recompute what the link carries.
        message = new(Message)
        message.topic = topic
        message.payload = blob[at:end]
        message.qos = qos
        message.retain = bool(bits & _RETAINED)
        message.timestamp = timestamp
        message.properties = props
        message.origin = origin
        message.source = None
        message.encodings = None
        message.expiresAt = expiresAt if bits & _EXPIRES else None
        append((message, flags, groups, targets))
        offset = end
    return out


def encodeTargets(nodeIds: Iterable[str]) -> bytes:
    """A set of node ids for L{encodeForward}."""
    return ",".join(sorted(nodeIds)).encode()


@functools.lru_cache(maxsize=1024)
def decodeTargets(raw: bytes) -> frozenset[str]:
    """The inverse of L{encodeTargets} (the few distinct sets are decoded once)."""
    return frozenset(raw.decode().split(",")) if raw else frozenset()


def encodeOp(op: int, shard: str, key: bytes, value: bytes | None) -> bytes:
    """One replicated store operation: upsert or delete of C{key} in C{shard}."""
    name = shard.encode()
    return _OP.pack(op, len(name), len(key)) + name + key + (value or b"")


def decodeOp(entry: bytes) -> tuple[int, str, bytes, bytes | None]:
    """The inverse of L{encodeOp}."""
    op, n, k = _OP.unpack_from(entry)
    start = _OP.size
    shard = entry[start : start + n].decode()
    key = entry[start + n : start + n + k]
    value = entry[start + n + k :] if op == UPSERT else None
    return op, shard, key, value
