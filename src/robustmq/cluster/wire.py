"""How brokers pack forwarded messages and replicated store operations for Perspective Broker.

PB (banana) refuses strings over 640 KiB, and jellying thousands of small
objects is slow; so a batch travels as one length-prefixed blob cut into
chunks of at most L{CHUNK} bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

from robustmq.core.message import Message
from robustmq.core.persistence import decodeMessage, encodeMessage

#: Largest piece of a packed batch (below banana's 640 KiB string limit).
CHUNK = 512 * 1024

_LEN = struct.Struct("!I")
_FORWARD = struct.Struct("!BH")
_OP = struct.Struct("!BHI")

#: Forward flags: route to the receiver's ordinary subscribers; store as retained.
ROUTE = 1
RETAIN = 2

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


def encodeForward(message: Message, flags: int, groups: list[str] | None = None) -> bytes:
    """One forwarded message: flags, the shared groups (C{$share/g/f}) to deliver to, the message."""
    names = json.dumps(groups).encode() if groups else b""
    return _FORWARD.pack(flags, len(names)) + names + encodeMessage(message)


def decodeForward(entry: bytes) -> tuple[Message, int, list[str]]:
    """The inverse of L{encodeForward}."""
    flags, n = _FORWARD.unpack_from(entry)
    start = _FORWARD.size
    groups = json.loads(entry[start : start + n]) if n else []
    message, _ = decodeMessage(entry[start + n :])
    return message, flags, groups


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
