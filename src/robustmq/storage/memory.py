"""
The C{memory} shard store: every shard in process memory, nothing on disk.

For tests and transient data (MQTT QoS 0 queues of clean sessions, caches):
everything is lost when the process exits, and every collection is bounded.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.interfaces import IShardAdminStore, ISpanShardStore
from robustmq.storage._common import defaultSettings, normalizeShardConfig, requireBytes
from robustmq.storage.errors import (
    LimitExceededError,
    NotCompactedError,
    ShardLimitError,
    StorageClosedError,
)

if TYPE_CHECKING:
    from robustmq.config import StorageSettings

__all__ = ["DEFAULT_MAX_GROUPS", "DEFAULT_MAX_RECORDS", "MemoryShardStore"]

#: default per-shard C{max_records}
DEFAULT_MAX_RECORDS = 100_000
#: default per-shard C{max_groups} (consumer groups with an offset for the shard)
DEFAULT_MAX_GROUPS = 10_000
#: bytes a record costs on top of its key, value and headers (same as a segment frame)
RECORD_OVERHEAD = 35

_Record = tuple[int, int, "bytes | None", "bytes | None", "tuple[tuple[str, bytes | None], ...]"]


def _recordSize(key: Any, value: Any, headers: Sequence[tuple[str, Any]]) -> int:
    size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    for name, v in headers:
        size += 6 + len(name.encode("utf-8")) + (len(v) if v else 0)
    return size


class _MemoryShard:
    """One shard's records: parallel lists from C{head} on, plus the key map."""

    __slots__ = (
        "config",
        "offsets",
        "records",
        "sizes",
        "maxTs",
        "head",
        "nextOffset",
        "startOffset",
        "bytes",
        "keys",
        "dead",
        "groups",
        "spans",
    )

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.offsets: list[int] = []
        self.records: list[_Record | None] = []  # None: superseded in a compacted shard
        self.sizes: list[int] = []
        self.maxTs: list[int] = []  # running maximum of timestamps, for offsetForTimestamp
        self.head = 0
        self.nextOffset = 0
        self.startOffset = 0
        self.bytes = 0
        self.keys: dict[bytes, int] | None = {} if config["compacted"] else None
        self.dead = 0
        self.groups: dict[str, tuple[int, bytes]] = {}
        #: first offset -> span, for records occupying more than one offset
        self.spans: dict[int, int] = {}

    def count(self) -> int:
        return len(self.offsets) - self.head - self.dead

    def indexOf(self, offset: int) -> int:
        """Index of the first stored record at or covering C{offset}."""
        i = max(self.head, bisect_left(self.offsets, offset))
        if self.spans and i > self.head:
            first = self.offsets[i - 1]
            if first + self.spans.get(first, 1) > offset:
                i -= 1
        return i

    def dropHead(self, n: int) -> None:
        """Forget the first C{n} stored entries."""
        keys = self.keys
        for i in range(self.head, self.head + n):
            rec = self.records[i]
            if rec is None:
                self.dead -= 1
                continue
            self.bytes -= self.sizes[i]
            if keys is not None and rec[2] is not None and keys.get(rec[2]) == rec[0]:
                del keys[rec[2]]
            if self.spans:
                self.spans.pop(rec[0], None)
        self.head += n
        if self.head < len(self.offsets):
            self.startOffset = max(self.startOffset, self.offsets[self.head])
        else:
            self.startOffset = max(self.startOffset, self.nextOffset)
        if self.head > 1024 and self.head * 2 > len(self.offsets):
            self._trim()

    def _trim(self) -> None:
        h = self.head
        del self.offsets[:h], self.records[:h], self.sizes[:h], self.maxTs[:h]
        self.head = 0

    def compact(self) -> None:
        """Drop superseded entries of a compacted shard."""
        keep = [i for i in range(self.head, len(self.offsets)) if self.records[i] is not None]
        self.offsets = [self.offsets[i] for i in keep]
        self.records = [self.records[i] for i in keep]
        self.sizes = [self.sizes[i] for i in keep]
        running = []
        m = -(1 << 63)
        for rec in self.records:
            assert rec is not None
            m = max(m, rec[1])
            running.append(m)
        self.maxTs = running
        self.head = 0
        self.dead = 0


@implementer(ISpanShardStore, IShardAdminStore)
class MemoryShardStore:
    """
    Shards held in memory, for tests and transient data.

    Bounds (from the store settings and each shard's config) and what happens
    at them:

      - C{max_shards} (settings): C{createShard} fails with L{ShardLimitError}.
      - C{max_records} (per shard, default 100,000): appending to a full
        shard evicts its oldest records (the start offset moves up); a
        compacted shard is compacted first and, if every record is still a
        live key, the upsert fails with L{LimitExceededError}.
      - C{retention_bytes} (per shard, default from settings, 0 = none): the
        oldest records of a non-compacted shard are evicted until the shard
        fits, keeping at least the newest record.
      - C{retention_ms} (per shard, default from settings, 0 = forever):
        records of a non-compacted shard older than this are evicted on each
        append to the shard and on L{enforceRetention}.
      - C{max_groups} (per shard, default 10,000): committing an offset for
        one more group fails with L{LimitExceededError}.
      - Compacted shards drop superseded records when they outnumber live ones.

    Append Deferreds fire at once: there is no durability to wait for.
    """

    name = "memory"
    #: nothing survives the process: the broker does not persist sessions into it
    durable = False
    log = Logger()

    def __init__(
        self, settings: StorageSettings | None = None, *, clock: IReactorTime | None = None
    ) -> None:
        self._settings = settings if settings is not None else defaultSettings()
        self._clock = clock
        self._shards: dict[str, _MemoryShard] = {}
        self._open = False

    def _now(self) -> int:
        if self._clock is not None:
            return int(self._clock.seconds() * 1000)
        return int(time.time() * 1000)

    def _shard(self, shard: str) -> _MemoryShard:
        if not self._open:
            raise StorageClosedError("the memory store is not open")
        s = self._shards.get(shard)
        if s is None:
            raise KeyError(shard)
        return s

    def _keyed(self, shard: str) -> _MemoryShard:
        s = self._shard(shard)
        if s.keys is None:
            raise NotCompactedError(f"shard {shard!r} is not compacted")
        return s

    # -- lifecycle -------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Nothing to recover; fires at once."""
        self._open = True
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        """Drop everything; fires at once."""
        self._open = False
        self._shards.clear()
        return defer.succeed(None)

    # -- shards ----------------------------------------------------------

    def createShard(self, shard: str, config: dict[str, Any] | None = None) -> defer.Deferred[bool]:
        """Create C{shard}; fires False if it already exists."""
        try:
            if not self._open:
                raise StorageClosedError("the memory store is not open")
            if shard in self._shards:
                return defer.succeed(False)
            if len(self._shards) >= self._settings.max_shards:
                raise ShardLimitError(
                    f"cannot create shard {shard!r}: max_shards={self._settings.max_shards}"
                )
            cfg = normalizeShardConfig(
                config,
                self._settings,
                {"max_records": DEFAULT_MAX_RECORDS, "max_groups": DEFAULT_MAX_GROUPS},
            )
            if cfg["max_records"] < 1:
                raise ValueError("shard config 'max_records' must be at least 1")
        except Exception as e:
            return defer.fail(e)
        self._shards[shard] = _MemoryShard(cfg)
        return defer.succeed(True)

    def configureShard(self, shard: str, config: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """Replace C{shard}'s config (L{IShardAdminStore}); bounds apply from now on."""
        try:
            s = self._shard(shard)
            cfg = normalizeShardConfig(
                config,
                self._settings,
                {"max_records": DEFAULT_MAX_RECORDS, "max_groups": DEFAULT_MAX_GROUPS},
            )
            if cfg["compacted"] != s.config["compacted"]:
                raise ValueError("shard config 'compacted' cannot change")
        except Exception as e:
            return defer.fail(e)
        s.config = cfg
        return defer.succeed(dict(cfg))

    def shardSize(self, shard: str) -> defer.Deferred[int]:
        """Bytes of C{shard}'s live records (L{IShardAdminStore})."""
        try:
            return defer.succeed(self._shard(shard).bytes)
        except Exception as e:
            return defer.fail(e)

    def deleteShard(self, shard: str) -> defer.Deferred[bool]:
        """Forget C{shard} and the group offsets committed for it."""
        if not self._open:
            return defer.fail(StorageClosedError("the memory store is not open"))
        return defer.succeed(self._shards.pop(shard, None) is not None)

    def listShards(self) -> defer.Deferred[dict[str, dict[str, Any]]]:
        """Fire with every shard's config."""
        if not self._open:
            return defer.fail(StorageClosedError("the memory store is not open"))
        return defer.succeed({name: dict(s.config) for name, s in self._shards.items()})

    # -- records ---------------------------------------------------------

    def append(self, shard: str, records: Sequence[dict[str, Any]]) -> defer.Deferred[list[int]]:
        """Store C{records} at the next offsets, evicting per the shard's bounds."""
        try:
            s = self._shard(shard)
            if s.keys is not None and any(r.get("key") is None for r in records):
                raise ValueError(f"records appended to compacted shard {shard!r} need a key")
            return defer.succeed(self._append(s, records))
        except Exception as e:
            return defer.fail(e)

    def appendSpan(self, shard: str, record: dict[str, Any], span: int) -> defer.Deferred[int]:
        """Store one record occupying C{span} offsets (L{ISpanShardStore}); fires with its first."""
        try:
            s = self._shard(shard)
            if isinstance(span, bool) or not isinstance(span, int) or not 1 <= span <= 0x7FFFFFFF:
                raise ValueError(f"span must be an int in 1..2**31-1, not {span!r}")
            if s.keys is not None:
                raise ValueError(f"compacted shard {shard!r} takes no span records")
            return defer.succeed(self._append(s, [record], span)[0])
        except Exception as e:
            return defer.fail(e)

    def _append(
        self, s: _MemoryShard, records: Sequence[dict[str, Any]], span: int = 1
    ) -> list[int]:
        now = self._now()
        prepared = []
        for r in records:
            key = r.get("key")
            value = r.get("value")
            requireBytes("key", key)
            requireBytes("value", value)
            headers = tuple(
                (str(n), None if v is None else bytes(v)) for n, v in r.get("headers") or ()
            )
            ts = r.get("timestamp")
            if ts is None:
                ts = now
            elif isinstance(ts, bool) or not isinstance(ts, int):
                raise TypeError(f"timestamp must be an int, not {type(ts).__name__}")
            prepared.append(
                (
                    ts,
                    None if key is None else bytes(key),
                    None if value is None else bytes(value),
                    headers,
                )
            )
        cfg = s.config
        if s.keys is not None:
            newKeys = {k for _, k, v, _ in prepared if v is not None and k not in s.keys}
            if len(s.keys) + len(newKeys) > cfg["max_records"]:
                raise LimitExceededError(
                    f"compacted shard holds max_records={cfg['max_records']} live keys"
                )
        out = []
        for ts, key, value, headers in prepared:
            offset = s.nextOffset
            s.nextOffset += span
            if span > 1:
                s.spans[offset] = span
            size = _recordSize(key, value, headers)
            s.offsets.append(offset)
            s.records.append((offset, ts, key, value, headers))
            s.sizes.append(size)
            s.maxTs.append(max(ts, s.maxTs[-1]) if len(s.maxTs) > s.head else ts)
            s.bytes += size
            out.append(offset)
            if s.keys is not None:
                self._applyKey(s, key, offset, value is None)
        self._evict(s, now)
        return out

    def _applyKey(self, s: _MemoryShard, key: bytes | None, offset: int, tombstone: bool) -> None:
        keys = s.keys
        assert keys is not None and key is not None
        old = keys.get(key)
        if old is not None:
            i = bisect_left(s.offsets, old, s.head)
            if i < len(s.offsets) and s.offsets[i] == old and s.records[i] is not None:
                s.records[i] = None
                s.bytes -= s.sizes[i]
                s.dead += 1
        if tombstone:
            keys.pop(key, None)
            i = len(s.offsets) - 1  # the tombstone itself need not be kept
            s.records[i] = None
            s.bytes -= s.sizes[i]
            s.dead += 1
        else:
            keys[key] = offset

    def _evict(self, s: _MemoryShard, now: int) -> None:
        cfg = s.config
        if s.keys is not None:
            if s.dead > s.count() or len(s.offsets) - s.head > cfg["max_records"]:
                s.compact()
            return
        stored = len(s.offsets) - s.head
        n = max(0, stored - cfg["max_records"])
        limit = cfg["retention_bytes"]
        if limit and s.bytes > limit:
            total = s.bytes
            for i in range(s.head, len(s.offsets) - 1):
                if total <= limit:
                    break
                if i >= s.head + n:
                    n += 1
                total -= s.sizes[i]
        ms = cfg["retention_ms"]
        if ms:
            cutoff = now - ms
            while s.head + n < len(s.offsets):
                rec = s.records[s.head + n]
                if rec is None or rec[1] >= cutoff:
                    break
                n += 1
        if n:
            s.dropHead(n)

    def enforceRetention(self) -> None:
        """Apply every shard's time-based retention now."""
        now = self._now()
        for s in self._shards.values():
            self._evict(s, now)

    def read(
        self, shard: str, offset: int, maxRecords: int = 1000, maxBytes: int = 1048576
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Records from C{offset}: at most C{maxRecords}, C{maxBytes} (one at least)."""
        try:
            s = self._shard(shard)
        except Exception as e:
            return defer.fail(e)
        out: list[dict[str, Any]] = []
        used = 0
        i = s.indexOf(max(offset, s.startOffset))
        records, sizes, spans = s.records, s.sizes, s.spans
        while i < len(records) and len(out) < maxRecords:
            rec = records[i]
            if rec is not None:
                if out and used + sizes[i] > maxBytes:
                    break
                used += sizes[i]
                record = {
                    "offset": rec[0],
                    "timestamp": rec[1],
                    "key": rec[2],
                    "value": rec[3],
                    "headers": list(rec[4]),
                }
                span = spans.get(rec[0]) if spans else None
                if span is not None:
                    record["span"] = span
                out.append(record)
            i += 1
        return defer.succeed(out)

    def offsetForTimestamp(self, shard: str, timestamp: int) -> defer.Deferred[int | None]:
        """First offset with a timestamp >= C{timestamp}, or None."""
        try:
            s = self._shard(shard)
        except Exception as e:
            return defer.fail(e)
        i = max(s.head, bisect_left(s.maxTs, timestamp, s.head))
        while i < len(s.records):
            rec = s.records[i]
            if rec is not None and rec[1] >= timestamp:
                end = rec[0] + (s.spans.get(rec[0], 1) if s.spans else 1)
                if end > s.startOffset:
                    return defer.succeed(max(rec[0], s.startOffset))
            i += 1
        return defer.succeed(None)

    def offsets(self, shard: str) -> defer.Deferred[tuple[int, int]]:
        """Fire with C{(startOffset, nextOffset)}."""
        try:
            s = self._shard(shard)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed((s.startOffset, s.nextOffset))

    def deleteBefore(self, shard: str, offset: int) -> defer.Deferred[int]:
        """Forget records below C{offset} (clamped to the shard's offsets)."""
        try:
            s = self._shard(shard)
        except Exception as e:
            return defer.fail(e)
        new = min(max(offset, s.startOffset), s.nextOffset)
        s.dropHead(s.indexOf(new) - s.head)
        s.startOffset = new
        return defer.succeed(new)

    # -- compacted shards ------------------------------------------------

    def upsert(
        self, shard: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> defer.Deferred[int]:
        """Keyed write to a compacted shard; fires with the record's offset."""
        try:
            s = self._keyed(shard)
            if key is None:
                raise ValueError("upsert needs a key")
            return defer.succeed(
                self._append(s, [{"key": key, "value": value, "headers": headers}])[0]
            )
        except Exception as e:
            return defer.fail(e)

    def lookup(self, shard: str, key: bytes) -> defer.Deferred[dict[str, Any] | None]:
        """The latest record of C{key}, or None."""
        try:
            s = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        assert s.keys is not None
        offset = s.keys.get(bytes(key))
        if offset is None:
            return defer.succeed(None)
        i = bisect_left(s.offsets, offset, s.head)
        rec = s.records[i]
        assert rec is not None
        return defer.succeed(
            {
                "offset": rec[0],
                "timestamp": rec[1],
                "key": rec[2],
                "value": rec[3],
                "headers": list(rec[4]),
            }
        )

    def deleteKey(self, shard: str, key: bytes) -> defer.Deferred[bool]:
        """Write a tombstone for C{key}; fires True if it was live."""
        try:
            s = self._keyed(shard)
            assert s.keys is not None
            if bytes(key) not in s.keys:
                return defer.succeed(False)
            self._append(s, [{"key": key, "value": None}])
            return defer.succeed(True)
        except Exception as e:
            return defer.fail(e)

    def keys(self, shard: str) -> defer.Deferred[list[bytes]]:
        """The live keys of a compacted shard."""
        try:
            s = self._keyed(shard)
        except Exception as e:
            return defer.fail(e)
        assert s.keys is not None
        return defer.succeed(list(s.keys))

    # -- consumer groups -------------------------------------------------

    # -- introspection (admin API, metrics, $SYS) ------------------------

    def shardUsage(self, shard: str) -> tuple[int, int]:
        """C{(records, bytes)} held by one shard now; L{KeyError} if there is none."""
        s = self._shards.get(shard)
        if s is None:
            raise KeyError(shard)
        return s.count(), s.bytes

    def usage(self) -> tuple[int, int]:
        """C{(records, bytes)} held by every shard now."""
        records = size = 0
        for s in self._shards.values():
            records += s.count()
            size += s.bytes
        return records, size

    def commitOffset(
        self, group: str, shard: str, offset: int, metadata: bytes = b""
    ) -> defer.Deferred[None]:
        """Record C{group}'s offset for C{shard}."""
        try:
            s = self._shard(shard)
            if group not in s.groups and len(s.groups) >= s.config["max_groups"]:
                raise LimitExceededError(
                    f"shard {shard!r} has offsets of max_groups={s.config['max_groups']} groups"
                )
        except Exception as e:
            return defer.fail(e)
        s.groups[group] = (int(offset), bytes(metadata))
        return defer.succeed(None)

    def fetchOffset(self, group: str, shard: str) -> defer.Deferred[tuple[int, bytes] | None]:
        """Fire with C{(offset, metadata)} committed by C{group}, or None."""
        try:
            s = self._shard(shard)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(s.groups.get(group))
