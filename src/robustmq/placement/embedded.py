"""The C{embedded} placement backend: SQLite under C{<node.data_dir>/placement}.

One placement node owns the file, so it always wins its elections.  Every
operation is queued and the queue is run in order on one dedicated thread
(L{deferToThreadPool} over a one-thread pool): operations queued in the
same reactor turn, or while the previous batch was being written, are
applied in one SQLite transaction and committed once (group commit), so
a million small writes cost a few thousand fsyncs, not a million.  The
pending queue is bounded by C{[placement] embedded_max_pending}; beyond it an
operation fails at once with L{LimitError}.

Leases live in memory as reactor timers; their ids and TTLs are stored, so
after a restart every lease gets its full TTL again (as etcd does) and a key
attached to a lease that no longer exists is deleted.  Watches are in
process: a change is reported after its batch commits and before the
caller's Deferred fires.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from robustmq.interfaces import IPlacementBackend
from robustmq.placement.election import ElectionMixin
from robustmq.placement.errors import BackendUnavailableError, LeaseNotFoundError, LimitError
from robustmq.placement.kv import KeyValue, Watcher

#: An event produced by an operation: ("put", KeyValue) or ("delete", key).
Event = tuple[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class _Database:
    """The SQLite side: used only from the backend's one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.revision = 0

    def open(self) -> tuple[int, int, list[tuple[int, float]]]:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self.conn = conn
        row = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        self.revision = row[0] if row else 0
        row = conn.execute("SELECT value FROM meta WHERE name='next_lease'").fetchone()
        nextLease = row[0] if row else 1
        leases = conn.execute("SELECT id, ttl FROM leases").fetchall()
        # Keys whose lease is gone (revoked while a write was queued, or an
        # inconsistent file) must not outlive it.
        conn.execute("BEGIN")
        conn.execute("DELETE FROM kv WHERE lease != 0 AND lease NOT IN (SELECT id FROM leases)")
        conn.execute("COMMIT")
        return self.revision, nextLease, leases

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def runBatch(
        self, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[bool, Any, list[Event]]]:
        """Apply C{ops} in one transaction; per op: (ok, result or exception, events)."""
        conn = self.conn
        if conn is None:
            raise BackendUnavailableError("the embedded placement store is closed")
        results: list[tuple[bool, Any, list[Event]]] = []
        start = self.revision
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op, args in ops:
                events: list[Event] = []
                try:
                    results.append((True, op(self, events, *args), events))
                except Exception as e:
                    results.append((False, e, []))
            if self.revision != start:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)",
                    (self.revision,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self.revision = start
            raise
        return results

    # The operations (run inside runBatch's transaction).

    def opPut(self, events: list[Event], key: str, value: bytes, lease: int) -> int:
        assert self.conn is not None
        self.revision += 1
        row = self.conn.execute("SELECT create_rev FROM kv WHERE key=?", (key,)).fetchone()
        created = row[0] if row else self.revision
        self.conn.execute(
            "INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?,?,?,?,?)",
            (key, value, created, self.revision, lease),
        )
        events.append(("put", KeyValue(key, value, created, self.revision, lease)))
        return self.revision

    def opGet(self, events: list[Event], key: str) -> KeyValue | None:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else KeyValue(row[0], bytes(row[1]), row[2], row[3], row[4])

    def opDelete(self, events: list[Event], key: str) -> bool:
        assert self.conn is not None
        if self.conn.execute("DELETE FROM kv WHERE key=?", (key,)).rowcount:
            self.revision += 1
            events.append(("delete", key))
            return True
        return False

    def opList(self, events: list[Event], prefix: str) -> list[KeyValue]:
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT key, value, create_rev, mod_rev, lease FROM kv "
            "WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key",
            (prefix, len(prefix), prefix),
        ).fetchall()
        return [KeyValue(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def opCompareAndSet(
        self,
        events: list[Event],
        key: str,
        expected: bytes | None,
        value: bytes | None,
        lease: int,
    ) -> bool:
        current = self.opGet(events, key)
        if (current.value if current is not None else None) != expected:
            return False
        if value is None:
            self.opDelete(events, key)
        else:
            self.opPut(events, key, value, lease)
        return True

    def opGrant(self, events: list[Event], lease: int, ttl: float) -> int:
        assert self.conn is not None
        self.conn.execute("INSERT OR REPLACE INTO leases (id, ttl) VALUES (?, ?)", (lease, ttl))
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('next_lease', ?)", (lease + 1,)
        )
        return lease

    def opRevoke(self, events: list[Event], lease: int) -> bool:
        assert self.conn is not None
        keys = [r[0] for r in self.conn.execute("SELECT key FROM kv WHERE lease=?", (lease,))]
        for key in keys:
            self.opDelete(events, key)
        return bool(self.conn.execute("DELETE FROM leases WHERE id=?", (lease,)).rowcount)


class _Lease:
    __slots__ = ("id", "ttl", "timer")

    def __init__(self, leaseId: int, ttl: float, timer: IDelayedCall) -> None:
        self.id = leaseId
        self.ttl = ttl
        self.timer = timer


@implementer(IPlacementBackend)
class EmbeddedBackend(ElectionMixin):
    """SQLite-backed L{IPlacementBackend} for one placement node.

    @param directory: where C{placement.sqlite3} lives (created if missing).
    @param maxPending: bound of operations queued or being written.
    """

    name = "embedded"
    log = Logger()

    def __init__(self, directory: str, reactor: Any, maxPending: int = 100_000) -> None:
        self.directory = directory
        self.reactor = reactor
        self.maxPending = maxPending
        self._db = _Database(os.path.join(directory, "placement.sqlite3"))
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="robustmq-placement-sqlite")
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._inFlight = 0
        self._writing = False
        self._flushCall: IDelayedCall | None = None
        self._leases: dict[int, _Lease] = {}
        self._nextLease = 1
        self._watchers: list[Watcher] = []
        self._open = False

    # Life cycle

    async def _open_(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._pool.start()
        try:
            _, self._nextLease, leases = await deferToThreadPool(
                self.reactor, self._pool, self._db.open
            )
        except BaseException:
            self._pool.stop()
            raise
        for leaseId, ttl in leases:
            self._leases[leaseId] = _Lease(leaseId, ttl, self._schedule(leaseId, ttl))
        self._open = True

    def open(self) -> Deferred[None]:
        return ensureDeferred(self._open_())

    async def _close(self) -> None:
        if not self._open:
            return
        self._open = False
        for lease in self._leases.values():
            if lease.timer.active():
                lease.timer.cancel()
        self._leases.clear()
        for watcher in list(self._watchers):
            watcher.stop()
        while self._pending or self._writing:
            if self._flushCall is not None and self._flushCall.active():
                self._flushCall.cancel()
                self._flushCall = None
                self._flush()
            waiter: Deferred[None] = Deferred()
            self.reactor.callLater(0.01, waiter.callback, None)
            await waiter
        await deferToThreadPool(self.reactor, self._pool, self._db.close)
        self._pool.stop()

    def close(self) -> Deferred[None]:
        return ensureDeferred(self._close())

    # The operation queue

    def _submit(self, op: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if not self._open:
            return fail(BackendUnavailableError("the embedded placement store is not open"))
        if len(self._pending) + self._inFlight >= self.maxPending:
            return fail(
                LimitError(f"{self.maxPending} placement operations pending (embedded_max_pending)")
            )
        d: Deferred[Any] = Deferred()
        self._pending.append((op, args, d))
        if not self._writing and self._flushCall is None:
            self._flushCall = self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flushCall = None
        if self._writing or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._writing = True
        self._inFlight = len(batch)
        ops = [(op, args) for op, args, _ in batch]
        d = deferToThreadPool(self.reactor, self._pool, self._db.runBatch, ops)
        d.addBoth(self._written, batch)

    def _written(self, results: Any, batch: list[tuple[Any, Any, Deferred[Any]]]) -> None:
        self._writing = False
        self._inFlight = 0
        if isinstance(results, Failure):
            self.log.failure("placement store write failed", results)
            for _, _, d in batch:
                d.errback(BackendUnavailableError(str(results.value)))
        else:
            for (ok, value, events), (_, _, d) in zip(results, batch, strict=True):
                for kind, what in events:
                    self._dispatch(kind, what)
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)
        if self._pending:
            self._flush()

    def _dispatch(self, kind: str, what: Any) -> None:
        key = what.key if kind == "put" else what
        for watcher in [w for w in self._watchers if key.startswith(w.prefix)]:
            if kind == "put":
                watcher.deliverPut(what)
            else:
                watcher.deliverDelete(what)

    # Key-value

    def put(self, key: str, value: bytes, lease: int = 0) -> Deferred[int]:
        if lease and lease not in self._leases:
            return fail(LeaseNotFoundError(lease))
        return self._submit(_Database.opPut, key, bytes(value), lease)

    def get(self, key: str) -> Deferred[KeyValue | None]:
        return self._submit(_Database.opGet, key)

    def delete(self, key: str) -> Deferred[bool]:
        return self._submit(_Database.opDelete, key)

    def list(self, prefix: str) -> Deferred[list[KeyValue]]:
        return self._submit(_Database.opList, prefix)

    def compareAndSet(
        self, key: str, expected: bytes | None, value: bytes | None, lease: int = 0
    ) -> Deferred[bool]:
        if lease and lease not in self._leases:
            return fail(LeaseNotFoundError(lease))
        return self._submit(_Database.opCompareAndSet, key, expected, value, lease)

    # Leases

    def _schedule(self, leaseId: int, ttl: float) -> IDelayedCall:
        return self.reactor.callLater(ttl, self._expire, leaseId)  # type: ignore[no-any-return]

    def _expire(self, leaseId: int) -> None:
        if self._leases.pop(leaseId, None) is not None:
            self.log.debug("placement lease {lease} expired", lease=leaseId)
            self._submit(_Database.opRevoke, leaseId).addErrback(
                lambda f: self.log.failure("revoking expired lease failed", f)
            )

    def grantLease(self, ttl: float) -> Deferred[int]:
        if not self._open:
            return fail(BackendUnavailableError("the embedded placement store is not open"))
        if ttl <= 0:
            return fail(ValueError(f"lease TTL must be positive, got {ttl}"))
        leaseId = self._nextLease
        self._nextLease += 1
        self._leases[leaseId] = _Lease(leaseId, ttl, self._schedule(leaseId, ttl))
        return self._submit(_Database.opGrant, leaseId, float(ttl))

    def keepAlive(self, lease: int) -> Deferred[float]:
        entry = self._leases.get(lease)
        if entry is None:
            return fail(LeaseNotFoundError(lease))
        entry.timer.reset(entry.ttl)
        return succeed(entry.ttl)

    def revokeLease(self, lease: int) -> Deferred[bool]:
        entry = self._leases.pop(lease, None)
        if entry is None:
            return succeed(False)
        if entry.timer.active():
            entry.timer.cancel()
        return self._submit(_Database.opRevoke, lease)

    # Watches

    def watch(
        self, prefix: str, onPut: Callable[[KeyValue], Any], onDelete: Callable[[str], Any]
    ) -> Deferred[Watcher]:
        watcher = Watcher(prefix, onPut, onDelete, self._watchers.remove)
        self._watchers.append(watcher)
        return succeed(watcher)


__all__ = ["EmbeddedBackend"]
