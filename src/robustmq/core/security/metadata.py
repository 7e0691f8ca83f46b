"""Where users, ACL rules and bans live: a small metadata-store interface.

The placement center will own this data in a cluster; until it exists the
node keeps it in an embedded store, one SQLite file under C{node.data_dir}.
Everything above talks to L{IMetadataStore} only, so the cluster work can
swap the implementation without touching the security code.

Reads are synchronous, from an in-memory view that the store keeps current
(an embedded store is the only writer; a cluster store would apply pushed
updates to the same view).  Writes return Deferreds that fire once the
change is durable, and every change (local or pushed) is announced to the
watchers of its kind.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

#: watcher(kind, key, value-or-None)
Watcher = Callable[[str, str, "dict[str, Any] | None"], None]


class IMetadataStore(Interface):
    """Durable, shared key → JSON-object records grouped by kind ("users", "acl", "bans")."""

    durable = Attribute("True when records survive a restart.")

    def get(kind, key):  # type: ignore[no-untyped-def]
        """The record (a dict) stored under C{kind}/C{key}, or None."""

    def items(kind):  # type: ignore[no-untyped-def]
        """Every C{(key, record)} of C{kind}, in insertion order."""

    def count(kind):  # type: ignore[no-untyped-def]
        """How many records C{kind} has."""

    def put(kind, key, value):  # type: ignore[no-untyped-def]
        """Store C{value} (a JSON-able dict); Deferred firing once durable."""

    def delete(kind, key):  # type: ignore[no-untyped-def]
        """Remove a record; Deferred firing True if it existed."""

    def watch(kind, callback):  # type: ignore[no-untyped-def]
        """Call C{callback(kind, key, value or None)} after each change of C{kind}."""


class _Watchers:
    def __init__(self) -> None:
        self.watchers: dict[str, list[Watcher]] = {}

    def watch(self, kind: str, callback: Watcher) -> None:
        self.watchers.setdefault(kind, []).append(callback)

    def notify(self, kind: str, key: str, value: dict[str, Any] | None) -> None:
        for callback in self.watchers.get(kind, ()):
            callback(kind, key, value)


@implementer(IMetadataStore)
class MemoryMetadataStore(_Watchers):
    """Records in memory only: for tests and in-process brokers."""

    durable = False

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, dict[str, dict[str, Any]]] = {}

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.data.get(kind, {}).get(key)

    def items(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return list(self.data.get(kind, {}).items())

    def count(self, kind: str) -> int:
        return len(self.data.get(kind, {}))

    def put(self, kind: str, key: str, value: dict[str, Any]) -> defer.Deferred[None]:
        # Round-trip through JSON so callers cannot keep references into the store.
        self.data.setdefault(kind, {})[key] = json.loads(json.dumps(value))
        self.notify(kind, key, value)
        return defer.succeed(None)

    def delete(self, kind: str, key: str) -> defer.Deferred[bool]:
        existed = self.data.get(kind, {}).pop(key, None) is not None
        if existed:
            self.notify(kind, key, None)
        return defer.succeed(existed)


@implementer(IMetadataStore)
class EmbeddedMetadataStore(MemoryMetadataStore):
    """The single-node store: the in-memory view backed by one SQLite file.

    Each write is one SQLite transaction, committed (with SQLite's fsync)
    before its Deferred fires; the file is read once, at start.  Writes are
    administrative (user, rule and ban changes) and run on the reactor
    thread: each costs one small transaction.
    """

    durable = True
    log = Logger()

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " seq INTEGER NOT NULL, PRIMARY KEY (kind, key))"
        )
        self._seq = 0
        for kind, key, value, seq in self.db.execute(
            "SELECT kind, key, value, seq FROM records ORDER BY seq"
        ):
            self.data.setdefault(kind, {})[key] = json.loads(value)
            self._seq = max(self._seq, seq)

    def put(self, kind: str, key: str, value: dict[str, Any]) -> defer.Deferred[None]:
        text = json.dumps(value, separators=(",", ":"))
        try:
            self._seq += 1
            with self.db:
                # Keep an existing record's position (ACL rule order is insertion order).
                cur = self.db.execute(
                    "UPDATE records SET value = ? WHERE kind = ? AND key = ?", (text, kind, key)
                )
                if cur.rowcount == 0:
                    self.db.execute(
                        "INSERT INTO records (kind, key, value, seq) VALUES (?, ?, ?, ?)",
                        (kind, key, text, self._seq),
                    )
        except sqlite3.Error as e:
            return defer.fail(e)
        return super().put(kind, key, value)

    def delete(self, kind: str, key: str) -> defer.Deferred[bool]:
        try:
            with self.db:
                self.db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
        except sqlite3.Error as e:
            return defer.fail(e)
        return super().delete(kind, key)

    def close(self) -> None:
        """Close the file."""
        self.db.close()


@implementer(IMetadataStore)
class ShardMetadataStore(MemoryMetadataStore):
    """The in-memory view backed by one compacted shard of the node's shard store.

    For stores whose data any node can read (the C{s3} store): users, ACL rules
    and bans then live with the shards, and a node started with an empty
    directory finds them.  Each record is one key (C{kind}, NUL, C{key}) whose
    value is JSON C{[seq, record]}; C{seq} keeps insertion order (ACL rule
    order) across reloads.  L{load} must run once the store is open; it
    announces every record to the watchers, so views built earlier refresh.
    """

    durable = True
    log = Logger()
    #: the shard the records live in
    SHARD = "robustmq/security"

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store
        self._seq = 0
        self._order: dict[tuple[str, str], int] = {}

    async def load(self) -> None:
        """Read every record from the shard (creating it if missing)."""
        await self.store.createShard(self.SHARD, {"compacted": True})
        loaded = []
        for raw in await self.store.keys(self.SHARD):
            record = await self.store.lookup(self.SHARD, raw)
            if record is None or record["value"] is None:
                continue
            kind, _, key = bytes(raw).decode("utf-8").partition("\0")
            seq, value = json.loads(record["value"])
            loaded.append((seq, kind, key, value))
        for seq, kind, key, value in sorted(loaded, key=lambda item: item[0]):
            self.data.setdefault(kind, {})[key] = value
            self._order[(kind, key)] = seq
            self._seq = max(self._seq, seq)
            self.notify(kind, key, value)
        self.log.info("loaded {count} security records from the shard store", count=len(loaded))

    def put(self, kind: str, key: str, value: dict[str, Any]) -> defer.Deferred[None]:
        seq = self._order.get((kind, key))
        if seq is None:
            self._seq += 1
            seq = self._order[(kind, key)] = self._seq
        text = json.dumps([seq, value], separators=(",", ":")).encode()
        d = self.store.upsert(self.SHARD, f"{kind}\0{key}".encode(), text)
        super().put(kind, key, value)
        return d.addCallback(lambda _: None)

    def delete(self, kind: str, key: str) -> defer.Deferred[bool]:
        self._order.pop((kind, key), None)
        existed = self.get(kind, key) is not None
        d = self.store.deleteKey(self.SHARD, f"{kind}\0{key}".encode())
        super().delete(kind, key)
        return d.addCallback(lambda _: existed)


__all__ = [
    "EmbeddedMetadataStore",
    "IMetadataStore",
    "MemoryMetadataStore",
    "ShardMetadataStore",
]
