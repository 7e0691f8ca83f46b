"""
The record frame: how one record is laid out in a segment file.

Every record is one frame, little-endian::

    u32  body_length      bytes after the CRC field
    u32  crc32c(body)     Castagnoli CRC of the whole body
    body:
      u8   magic          format version, 1
      i64  offset
      i64  timestamp      milliseconds since the epoch
      i32  key_length     -1 for a None key
      i32  value_length   -1 for a None value (a tombstone in compacted shards)
      u16  header_count
      key bytes, value bytes,
      header_count x (u16 name_length, UTF-8 name, i32 value_length, value bytes)

A record that occupies a range of offsets (L{ISpanShardStore.appendSpan},
e.g. a Kafka record batch) is framed with magic 2 and one more field right
after the fixed body, covered by the CRC::

      u32  span           offsets the record occupies (>= 2), from C{offset} on

(and then key, value and headers as above).

The encoder lives with the append path (L{robustmq.storage._segment.log}),
where it is fused with index and segment-roll bookkeeping; this module holds
the layout and the decoders used by reads and recovery.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from crc32c import crc32c

__all__ = [
    "BODY",
    "BODY_SIZE",
    "FRAME_OVERHEAD",
    "MAGIC",
    "MAX_BODY",
    "PREFIX",
    "SPAN",
    "SPAN_MAGIC",
    "decodeRecords",
    "encodeHeaders",
    "frameLengthAt",
]

MAGIC = 1
#: the magic of a frame with a span field (a record occupying several offsets)
SPAN_MAGIC = 2
PREFIX = struct.Struct("<II")  # body_length, crc
BODY = struct.Struct("<BqqiiH")  # magic, offset, timestamp, key_length, value_length, header_count
BODY_SIZE = BODY.size  # 27
FRAME_OVERHEAD = PREFIX.size + BODY_SIZE  # 35
MAX_BODY = 1 << 30  # a longer length field can only be damage

SPAN = struct.Struct("<I")
SPAN_SIZE = SPAN.size

_H_NAME = struct.Struct("<H")
_H_VALUE = struct.Struct("<i")
_FULL = struct.Struct("<IIBqqiiH")


def encodeHeaders(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Encode a record's header list (the slow, rarely taken path of an append)."""
    parts: list[bytes] = []
    for name, value in headers:
        raw = name.encode("utf-8")
        parts.append(_H_NAME.pack(len(raw)))
        parts.append(raw)
        if value is None:
            parts.append(_H_VALUE.pack(-1))
        else:
            parts.append(_H_VALUE.pack(len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


def _decodeHeaders(buf: Any, pos: int, count: int) -> tuple[list[tuple[str, bytes | None]], int]:
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        (nlen,) = _H_NAME.unpack_from(buf, pos)
        pos += 2
        name = bytes(buf[pos : pos + nlen]).decode("utf-8")
        pos += nlen
        (vlen,) = _H_VALUE.unpack_from(buf, pos)
        pos += 4
        if vlen < 0:
            headers.append((name, None))
        else:
            headers.append((name, bytes(buf[pos : pos + vlen])))
            pos += vlen
    return headers, pos


def decodeRecords(
    buf: Any,
    start: int,
    end: int,
    fromOffset: int,
    maxRecords: int,
    maxBytes: int,
    out: list[dict[str, Any]],
) -> tuple[int, int, bool, bool]:
    """
    Decode frames of C{buf[start:end]} into record dicts appended to C{out}.

    Frames wholly below C{fromOffset} are skipped (a span frame that covers
    it is returned, with a C{"span"} key).  Stops after C{maxRecords} records
    in C{out}, before a record that would push the returned bytes past
    C{maxBytes} (unless C{out} is empty: one record is always returned), at a
    frame that is not wholly inside C{buf[:end]}, or at a damaged frame: one
    whose header cannot be right or that fails its CRC.  What to do about the
    damage is the caller's business (it alone knows where the next valid
    frame is and which offsets were lost, see L{robustmq.storage._segment.scan}).

    @return: C{(position after the last consumed frame, bytes returned, done,
        damaged)}: C{done} is true when a limit was reached, C{damaged} when
        the frame at the returned position is damaged.
    """
    pos = start
    used = 0
    unpackFull = _FULL.unpack_from
    mv = memoryview(buf)
    try:
        while pos + FRAME_OVERHEAD <= end:
            blen, crc, magic, offset, ts, klen, vlen, hcount = unpackFull(buf, pos)
            stop = pos + 8 + blen
            if blen > MAX_BODY or blen < BODY_SIZE or (magic != MAGIC and magic != SPAN_MAGIC):
                return pos, used, False, True
            if stop > end:
                break
            if crc32c(mv[pos + 8 : stop]) != crc:
                return pos, used, False, True
            span = 1
            p = pos + FRAME_OVERHEAD
            if magic == SPAN_MAGIC:
                (span,) = SPAN.unpack_from(buf, p)
                p += SPAN_SIZE
            if offset + span > fromOffset:
                size = stop - pos
                if out and (len(out) >= maxRecords or used + size > maxBytes):
                    return pos, used, True, False
                try:
                    if klen >= 0:
                        key: bytes | None = bytes(mv[p : p + klen])
                        p += klen
                    else:
                        key = None
                    if vlen >= 0:
                        value: bytes | None = bytes(mv[p : p + vlen])
                        p += vlen
                    else:
                        value = None
                    headers: list[tuple[str, bytes | None]] = []
                    if hcount:
                        headers, p = _decodeHeaders(mv, p, hcount)
                except (struct.error, UnicodeDecodeError):
                    # a CRC-valid frame whose fields do not add up: written wrong, not rotted
                    return pos, used, False, True
                record = {
                    "offset": offset,
                    "timestamp": ts,
                    "key": key,
                    "value": value,
                    "headers": headers,
                }
                if span > 1:
                    record["span"] = span
                out.append(record)
                used += size
                if len(out) >= maxRecords:
                    return stop, used, True, False
            pos = stop
    finally:
        mv.release()
    return pos, used, False, False


def frameLengthAt(buf: Any, pos: int, end: int) -> int | None:
    """Return the total length of a plausible frame at C{pos} (CRC unchecked), or None."""
    if pos + FRAME_OVERHEAD > end:
        return None
    blen, _crc, magic = struct.unpack_from("<IIB", buf, pos)
    if blen > MAX_BODY or blen < BODY_SIZE or magic not in (MAGIC, SPAN_MAGIC):
        return None
    if pos + 8 + blen > end:
        return None
    return 8 + blen


def findTimestamp(
    buf: Any, start: int, end: int, timestamp: int, minOffset: int
) -> tuple[int | None, int, bool]:
    """
    Scan frames of C{buf[start:end]} for the first record with a timestamp
    >= C{timestamp} that occupies an offset >= C{minOffset}.

    @return: C{(offset or None, position after the last whole frame scanned,
        damaged)}: the offset of a span record that starts below C{minOffset}
        is C{minOffset}; C{damaged} is true when the scan stopped at a
        damaged frame (at the returned position).
    """
    pos = start
    unpackFull = _FULL.unpack_from
    mv = memoryview(buf)
    try:
        while pos + FRAME_OVERHEAD <= end:
            blen, crc, magic, offset, ts, _k, _v, _h = unpackFull(buf, pos)
            if blen > MAX_BODY or blen < BODY_SIZE or (magic != MAGIC and magic != SPAN_MAGIC):
                return None, pos, True
            stop = pos + 8 + blen
            if stop > end:
                break
            if crc32c(mv[pos + 8 : stop]) != crc:
                return None, pos, True
            span = SPAN.unpack_from(buf, pos + FRAME_OVERHEAD)[0] if magic == SPAN_MAGIC else 1
            if ts >= timestamp and offset + span > minOffset:
                return max(offset, minOffset), stop, False
            pos = stop
    finally:
        mv.release()
    return None, pos, False
