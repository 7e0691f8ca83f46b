"""Durable AMQP state in the node's shard store.

- C{amqp/meta}: one compacted shard holding every durable exchange, durable
  queue and binding between durable ends, keyed by kind and name, valued
  by a JSON description.
- C{amqp/queue/<vhost>/<queue>}: one compacted shard per durable queue.
  A persistent message (delivery mode 2) routed to it is upserted under its
  8-byte queue sequence number; acknowledging (or dropping, or purging) it
  writes a tombstone.  At start the live keys, sorted, give the queue's
  messages back in order.

Writes are grouped: the upserts and tombstones a queue collects while the
node handles one read (L{AMQPServer.batch}) go to the store as one
C{append}, and a message that leaves the queue before its batch is written
is never written at all.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from robustmq.core.persistence import logWriteFailure
from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._model import (
    Exchange,
    Message,
    Queue,
    QueuedMessage,
    VirtualHost,
    packSeq,
)

if TYPE_CHECKING:
    from robustmq.interfaces import IShardStore

__all__ = ["Persistence", "QueueStore"]

META = "amqp/meta"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def queueShard(vhost: str, name: str) -> str:
    """The shard name of a durable queue."""
    return f"amqp/queue/{vhost}/{name}"


class QueueStore:
    """Writes one durable queue's persistent messages to its shard."""

    log = Logger()

    def __init__(self, persistence: Persistence, queue: Queue) -> None:
        self.persistence = persistence
        store = persistence.store
        assert store is not None, "durable queues need a shard store"
        self.store: IShardStore = store
        self.queue = queue
        self.shard = queueShard(queue.vhost.name, queue.name)
        self.ready: defer.Deferred[Any] = defer.Deferred()
        #: this batch's upserts by sequence number, and its tombstones
        self._upserts: dict[int, dict[str, Any]] = {}
        self._tombstones: list[dict[str, Any]] = []
        #: fires when this batch's records are durable; None before the first write
        self._batch: defer.Deferred[Any] | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "compacted": True,
            "retention_ms": 0,
            "retention_bytes": 0,
            "max_records": self.queue.vhost.settings.max_queue_length + 1,
        }

    async def create(self) -> None:
        """Create the shard if it does not exist."""
        await self.store.createShard(self.shard, self._config())

    def write(self, qm: QueuedMessage) -> defer.Deferred[Any]:
        """Store C{qm} with this batch.

        Returns the batch's Deferred (shared by every record of the batch),
        which fires once the batch is durable per the store's sync policy;
        callers must pass its result on (L{defer.Deferred.addBoth} returning it).
        """
        m = qm.message
        qm.stored = True
        self._upserts[qm.seq] = {
            "key": packSeq(qm.seq),
            "value": m.body,
            "headers": [
                ("e", m.exchange.encode()),
                ("k", m.routingKey.encode()),
                ("p", m.propsRaw),
            ],
        }
        return self._pending()

    def _pending(self) -> defer.Deferred[Any]:
        """This batch's Deferred; the batch is written when the node's batch ends."""
        d = self._batch
        if d is None:
            d = self._batch = defer.Deferred()
            self.persistence.server.storeDirty(self)
        return d

    def flush(self) -> None:
        """Write this batch's upserts and tombstones as one append."""
        d, self._batch = self._batch, None
        records = [*self._upserts.values(), *self._tombstones]
        self._upserts = {}
        self._tombstones = []
        if d is None:
            return
        if not records:
            d.callback(None)
            return
        shard = self.shard
        self._whenReady(lambda: self.store.append(shard, records), d)
        # Last in the chain (callers added theirs during the batch): log, do not raise.
        d.addErrback(self._failed, "write")

    def _whenReady(self, op: Any, d: defer.Deferred[Any]) -> None:
        def run(_: Any) -> None:
            try:
                inner = op()
            except Exception as e:
                d.errback(e)
                return
            inner.addCallbacks(d.callback, d.errback)

        if self.ready.called:
            run(None)
        else:
            self.ready.addCallback(_runThen, run)

    def remove(self, qm: QueuedMessage) -> None:
        """The message left the queue: write its tombstone (or drop its unwritten upsert)."""
        if not qm.stored:
            return
        qm.stored = False
        if self._upserts.pop(qm.seq, None) is not None:
            return  # never written: nothing to delete
        self._tombstones.append({"key": packSeq(qm.seq), "value": None})
        self._pending()

    def dropQueue(self) -> None:
        """The queue was deleted: delete its shard and its declaration."""
        self._upserts = {}
        self._tombstones = []
        d: defer.Deferred[Any] = defer.Deferred()
        self._whenReady(lambda: self.store.deleteShard(self.shard), d)
        d.addErrback(self._failed, "delete")
        self.persistence.queueDeleted(self.queue)

    def _failed(self, failure: Any, what: str) -> None:
        # Publishers in confirm mode got basic.nack for the batch already; a store
        # that refuses writes (disk full) said why once: no traceback per batch.
        logWriteFailure(
            self.log, failure, "AMQP queue {shard}: {what} failed", shard=self.shard, what=what
        )

    async def recover(self) -> int:
        """Load the stored messages back into the queue, in order; returns how many."""
        keys = sorted(await self.store.keys(self.shard))
        n = 0
        for key in keys:
            record = await self.store.lookup(self.shard, key)
            if record is None:
                continue
            h = dict(record["headers"])
            props = _spec.BasicProperties.decode(h["p"], 0)
            message = Message(
                h["e"].decode(), h["k"].decode(), props, record["value"] or b"", h["p"]
            )
            seq = int.from_bytes(key, "big")
            qm = QueuedMessage(message, seq, self.queue.expiryFor(message, _nowSeconds()))
            qm.stored = True
            if self.queue.push(message, fromStore=qm) is None:
                self.remove(qm)
            else:
                n += 1
        return n


def _nowSeconds() -> float:
    import time

    return time.time()


class Persistence:
    """Durable topology (exchanges, queues, bindings) and the per-queue stores."""

    log = Logger()

    def __init__(self, server: Any, store: IShardStore | None) -> None:
        self.server = server
        self.store = store

    @property
    def enabled(self) -> bool:
        """False when the node has no shard store (unit tests)."""
        return self.store is not None

    def _put(self, key: str, value: dict[str, Any]) -> None:
        if self.store is None:
            return
        # binding keys are any bytes (shortstr decodes them with surrogateescape)
        d = self.store.upsert(
            META,
            key.encode("utf-8", "surrogateescape"),
            json.dumps(value, default=_jsonable).encode(),
        )
        d.addErrback(lambda f: logWriteFailure(self.log, f, "AMQP metadata write failed"))

    def _delete(self, key: str) -> None:
        if self.store is None:
            return
        d = self.store.deleteKey(META, key.encode("utf-8", "surrogateescape"))
        d.addErrback(lambda f: logWriteFailure(self.log, f, "AMQP metadata delete failed"))

    def exchangeDeclared(self, vhost: VirtualHost, ex: Exchange) -> None:
        """Remember a durable exchange."""
        self._put(
            f"x\x00{vhost.name}\x00{ex.name}",
            {
                "type": ex.type,
                "auto_delete": ex.autoDelete,
                "internal": ex.internal,
                "arguments": ex.arguments,
            },
        )

    def exchangeDeleted(self, vhost: VirtualHost, ex: Exchange) -> None:
        """Forget a durable exchange."""
        self._delete(f"x\x00{vhost.name}\x00{ex.name}")

    def queueDeclared(self, queue: Queue) -> None:
        """Remember a durable queue and attach its message store."""
        if self.store is None:
            return
        self._put(
            f"q\x00{queue.vhost.name}\x00{queue.name}",
            {"auto_delete": queue.autoDelete, "arguments": queue.arguments},
        )
        qs = QueueStore(self, queue)
        queue.store = qs
        d = defer.ensureDeferred(qs.create())
        d.addCallbacks(qs.ready.callback, qs.ready.errback)
        d.addErrback(lambda f: self.log.failure("AMQP queue shard creation failed", f))

    def queueDeleted(self, queue: Queue) -> None:
        """Forget a durable queue."""
        self._delete(f"q\x00{queue.vhost.name}\x00{queue.name}")

    def _bindingKey(self, vhost: VirtualHost, src: Exchange, dest: Any, key: str, args: Any) -> str:
        kind = "q" if isinstance(dest, Queue) else "x"
        return "b\x00" + "\x00".join(
            [
                vhost.name,
                src.name,
                kind,
                dest.name,
                key,
                json.dumps(args, default=_jsonable, sort_keys=True),
            ]
        )

    def bindingAdded(
        self, vhost: VirtualHost, src: Exchange, dest: Any, key: str, args: Any
    ) -> None:
        """Remember a binding when both ends are durable."""
        if src.durable and dest.durable and src.name:
            self._put(self._bindingKey(vhost, src, dest, key, args or {}), {})

    def bindingRemoved(
        self, vhost: VirtualHost, src: Exchange, dest: Any, key: str, args: Any
    ) -> None:
        """Forget a binding."""
        if src.durable and dest.durable and src.name:
            self._delete(self._bindingKey(vhost, src, dest, key, args or {}))

    async def recover(self) -> None:
        """Rebuild durable exchanges, queues (with their messages) and bindings."""
        store = self.store
        if store is None:
            return
        await store.createShard(
            META,
            {"compacted": True, "retention_ms": 0, "retention_bytes": 0, "max_records": 10_000_000},
        )
        entries = []
        for key in await store.keys(META):
            record = await store.lookup(META, key)
            if record is not None and record["value"] is not None:
                entries.append(
                    (
                        key.decode("utf-8", "surrogateescape").split("\x00"),
                        json.loads(record["value"]),
                    )
                )
        order = {"x": 0, "q": 1, "b": 2}
        entries.sort(key=lambda e: order.get(e[0][0], 3))
        queues = exchanges = messages = 0
        for parts, value in entries:
            kind = parts[0]
            vhost = self.server.vhost(parts[1])
            if kind == "x":
                name = parts[2]
                if name not in vhost.exchanges:
                    vhost.exchanges[name] = Exchange(
                        name,
                        value["type"],
                        True,
                        value["auto_delete"],
                        value["internal"],
                        value["arguments"],
                    )
                    exchanges += 1
            elif kind == "q":
                name = parts[2]
                queue = Queue(vhost, name, True, None, value["auto_delete"], value["arguments"])
                vhost.queues[name] = queue
                qs = QueueStore(self, queue)
                queue.store = qs
                await qs.create()
                qs.ready.callback(None)
                messages += await qs.recover()
                queues += 1
            elif kind == "b":
                _, vname, src, destKind, dest, key, args = parts
                srcEx = vhost.exchanges.get(src)
                target = (vhost.queues if destKind == "q" else vhost.exchanges).get(dest)
                if srcEx is None or target is None:
                    continue
                argsDict = json.loads(args)
                if srcEx.bind(target, key, argsDict):
                    from robustmq.protocols.amqp._model import _freeze

                    link = (srcEx, key, _freeze(argsDict))
                    if isinstance(target, Queue):
                        target.bindings.add(link)
                    else:
                        target.incoming.add(link)
        if queues or exchanges:
            self.log.info(
                "AMQP recovered {exchanges} exchanges, {queues} durable queues, {messages} messages",
                exchanges=exchanges,
                queues=queues,
                messages=messages,
            )


def _runThen(result: Any, run: Any) -> Any:
    """Call C{run(result)} and pass C{result} on (a Deferred callback)."""
    run(result)
    return result
