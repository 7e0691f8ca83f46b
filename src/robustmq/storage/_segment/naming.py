"""
Safe, reversible file names for shard and group names.

Shard names come from protocols (MQTT topics, Kafka topic-partitions, AMQP
queues) and may contain C{/}, C{+}, C{#}, C{.}, spaces and any unicode.  A
name is encoded as UTF-8 and every byte outside C{[A-Za-z0-9_-]} becomes
C{%XX}; the result never contains C{/} or C{.}, so it can be neither a path
nor C{.}/C{..}, and suffixes the store adds after a C{.} cannot collide with
a name.  Names whose escaped form would pass the file system's 255-byte limit
are cut and suffixed with a SHA-256 digest (C{~<hex>}); the real name is then
read back from the metadata file inside the directory, which is why
L{unescape} returns None for them.
"""

from __future__ import annotations

import hashlib

__all__ = ["escape", "unescape"]

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX = 180  # room for suffixes such as ".deleted-123456" inside NAME_MAX (255)
_TABLE = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]


def escape(name: str) -> str:
    """Return a file-name-safe, reversible (see L{unescape}) form of C{name}."""
    escaped = "".join([_TABLE[b] for b in name.encode("utf-8")])
    if not escaped:
        return "%"  # the empty name: "%" alone is never produced for a non-empty name
    if len(escaped) <= _MAX:
        return escaped
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return escaped[: _MAX - 65] + "~" + digest


def unescape(escaped: str) -> str | None:
    """Invert L{escape}; None for hashed (over-long) names and foreign file names."""
    if escaped == "%":
        return ""
    if "~" in escaped:
        return None
    out = bytearray()
    i = 0
    n = len(escaped)
    while i < n:
        c = escaped[i]
        if c == "%":
            try:
                out.append(int(escaped[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        elif ord(c) < 128 and ord(c) in _SAFE:
            out.append(ord(c))
            i += 1
        else:
            return None
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None
