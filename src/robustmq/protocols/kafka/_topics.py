"""
Kafka topics and partitions over L{IShardStore} shards.

Partition C{p} of topic C{t} is the shard C{kafka/<t>/<p>}.  Shard offsets
are Kafka offsets: a batch of C{n} records is stored as I{one} shard record
that occupies C{n} offsets (L{ISpanShardStore.appendSpan}), its value the
whole batch as received.  So offsets, the log start and end and committed
offsets all mean the same in Kafka and in the store, and a fetch that starts
inside a batch finds the batch it is in.

A store without L{ISpanShardStore} (a third-party adapter) gets C{n} shard
records instead: the batch, then C{n - 1} empty placeholders whose C{key} is
the 4-byte distance back to the batch's first record.  Reads understand
both layouts (so do partitions written before span records existed).

Every stored record carries its batch's C{maxTimestamp}; a timestamp
lookup therefore answers with the first offset of the first batch holding
a record at or after the time (Kafka answers with the record itself).
"""

from __future__ import annotations

import json
import struct
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.interfaces import ISpanShardStore
from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._records import BatchHeader, controlBatch, rewriteBaseOffset

if TYPE_CHECKING:
    from robustmq.config import KafkaSettings
    from robustmq.interfaces import IShardStore

__all__ = ["Partition", "TopicManager", "shardName"]

_DELTA = struct.Struct(">I")
PREFIX = "kafka/"
GROUPS_SHARD = "kafka-meta/groups"
PRODUCERS_SHARD = "kafka-meta/producers"
#: compacted: C{<shard> NUL <producer id>} -> idempotence state (durable stores only)
PRODUCER_STATE_SHARD = "kafka-meta/producer-state"
#: compacted: transactional id -> coordinator state (durable stores only)
TXN_SHARD = "kafka-meta/transactions"
#: compacted: C{<shard> NUL <producer id> NUL <first offset>} -> last offset of an aborted transaction
ABORTED_SHARD = "kafka-meta/aborted-transactions"


def _key(*parts: object) -> bytes:
    return "\0".join(str(p) for p in parts).encode()


def splitShard(shard: str) -> tuple[str, int] | None:
    """C{(topic, partition)} of a partition's shard name, or None."""
    topic, _, part = shard[len(PREFIX) :].rpartition("/")
    return (topic, int(part)) if shard.startswith(PREFIX) and part.isdigit() else None


def shardName(topic: str, partition: int) -> str:
    """The shard holding one partition."""
    return f"{PREFIX}{topic}/{partition}"


def validTopicName(name: str) -> bool:
    """Kafka's rule: 1-249 characters of C{[a-zA-Z0-9._-]}, not C{.} or C{..}."""
    if not name or len(name) > 249 or name in (".", ".."):
        return False
    return all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


class _ProducerState:
    __slots__ = ("epoch", "lastSeq", "recent")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.lastSeq = -1
        #: (firstSeq, lastSeq, baseOffset) of the last five batches (Kafka keeps five)
        self.recent: list[tuple[int, int, int]] = []

    def dump(self) -> bytes:
        return json.dumps([self.epoch, self.lastSeq, self.recent]).encode()

    @classmethod
    def load(cls, data: bytes) -> _ProducerState:
        epoch, lastSeq, recent = json.loads(data)
        st = cls(int(epoch))
        st.lastSeq = int(lastSeq)
        st.recent = [(int(a), int(b), int(c)) for a, b, c in recent]
        return st


class Partition:
    """One partition's offsets, waiting fetches and transaction state."""

    __slots__ = ("shard", "nextOffset", "waiters", "ongoing", "aborted", "epoch")

    def __init__(self, shard: str, nextOffset: int) -> None:
        self.shard = shard
        self.nextOffset = nextOffset
        self.waiters: list[defer.Deferred[None]] = []
        #: producer id -> first offset of its open transaction here
        self.ongoing: dict[int, int] = {}
        #: (producerId, firstOffset, lastOffset) of aborted transactions, oldest first
        self.aborted: list[tuple[int, int, int]] = []
        self.epoch = 0

    def lastStable(self) -> int:
        """The last stable offset: the first offset of the oldest open transaction."""
        if self.ongoing:
            return min(self.ongoing.values())
        return self.nextOffset

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


class Topic:
    """A topic's partition count and configs (as given at creation)."""

    __slots__ = ("name", "partitions", "configs")

    def __init__(self, name: str, partitions: int, configs: dict[str, str]) -> None:
        self.name = name
        self.partitions = partitions
        self.configs = configs


class TopicManager:
    """The node's Kafka topics, partitions and producer state, shared by every listener."""

    log = Logger()

    def __init__(self, store: IShardStore, settings: KafkaSettings) -> None:
        self.store = store
        #: one stored record per batch (else a placeholder per further record)
        self.spans = ISpanShardStore.providedBy(store)
        self.settings = settings
        self.topics: dict[str, Topic] = {}
        self.partitions: dict[str, Partition] = {}
        self._loaded = False
        self._readyWaiters: list[defer.Deferred[None]] = []
        self._producers: OrderedDict[tuple[str, int], _ProducerState] = OrderedDict()
        self.nextProducerId = 1000
        #: names of groups that committed offsets (kept in a compacted shard)
        self.knownGroups: set[str] = set()
        #: producer, transaction and aborted-transaction state is written to
        #: compacted shards only when the store outlives the process
        self.persist = bool(getattr(store, "durable", False))
        #: aborted transactions read at start-up, by shard, until the partition is first used
        self._abortedLoaded: dict[str, list[tuple[int, int, int]]] = {}
        #: transactional id -> coordinator state read at start-up (for L{TransactionCoordinator})
        self.loadedTxns: dict[str, dict[str, Any]] = {}
        #: called with (partition, producer id, first offset) when a transaction
        #: first writes to a partition; may return a Deferred to wait for
        self.txnStarted: Any = None

    # -- start-up --------------------------------------------------------

    async def ready(self) -> None:
        """Returns once the topics have been read from the store."""
        if self._loaded:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._readyWaiters.append(d)
        if len(self._readyWaiters) == 1:
            defer.ensureDeferred(self._load()).addBoth(self._readyDone)
        await d

    def _readyDone(self, result: Any) -> None:
        waiters, self._readyWaiters = self._readyWaiters, []
        if isinstance(result, Failure):
            for d in waiters:
                d.errback(result)
            return
        self._loaded = True
        for d in waiters:
            d.callback(None)

    async def _load(self) -> None:
        shards = await self.store.listShards()
        counts: dict[str, set[int]] = {}
        configs: dict[str, dict[str, str]] = {}
        for name, cfg in shards.items():
            if not name.startswith(PREFIX):
                continue
            topic, _, part = name[len(PREFIX) :].rpartition("/")
            if not part.isdigit():
                continue
            counts.setdefault(topic, set()).add(int(part))
            configs.setdefault(topic, dict(cfg.get("kafka_configs") or {}))
        for topic, parts in counts.items():
            n = 0
            while n in parts:
                n += 1
            self.topics[topic] = Topic(topic, n, configs[topic])
        if GROUPS_SHARD not in shards:
            await self.store.createShard(GROUPS_SHARD, {"compacted": True})
        self.knownGroups.update(
            k.decode("utf-8", "replace") for k in await self.store.keys(GROUPS_SHARD)
        )
        if PRODUCERS_SHARD not in shards:
            await self.store.createShard(PRODUCERS_SHARD, {"compacted": True})
        rec = await self.store.lookup(PRODUCERS_SHARD, b"next")
        if rec is not None:
            self.nextProducerId = int(rec["value"].decode())
        else:
            # A store without the counter (new, or a memory store after a restart):
            # start from the clock so ids of an earlier run are not reused.
            self.nextProducerId = int(time.time() * 1000) << 4
        if self.persist:
            await self._loadProducerState(shards)

    async def _loadProducerState(self, shards: dict[str, Any]) -> None:
        """Idempotence, transaction and aborted-transaction state of the previous run."""
        store = self.store
        for name in (PRODUCER_STATE_SHARD, TXN_SHARD, ABORTED_SHARD):
            if name not in shards:
                await store.createShard(name, {"compacted": True})
        for key in await store.keys(PRODUCER_STATE_SHARD):
            rec = await store.lookup(PRODUCER_STATE_SHARD, key)
            shard, _, pid = key.decode().rpartition("\0")
            if rec is not None and len(self._producers) < self.settings.max_producer_states:
                self._producers[(shard, int(pid))] = _ProducerState.load(rec["value"])
        for key in await store.keys(ABORTED_SHARD):
            rec = await store.lookup(ABORTED_SHARD, key)
            shard, pid, first = key.decode().rsplit("\0", 2)
            if rec is not None:
                entry = (int(pid), int(first), int(rec["value"]))
                self._abortedLoaded.setdefault(shard, []).append(entry)
        for key in await store.keys(TXN_SHARD):
            rec = await store.lookup(TXN_SHARD, key)
            if rec is not None:
                self.loadedTxns[key.decode()] = json.loads(rec["value"])
        if self._producers or self._abortedLoaded or self.loadedTxns:
            self.log.info(
                "restored {producers} idempotent producer states, {txns} transactional ids "
                "and the aborted transactions of {partitions} partitions",
                producers=len(self._producers),
                txns=len(self.loadedTxns),
                partitions=len(self._abortedLoaded),
            )

    def _forget(self, shard: str, key: bytes) -> None:
        if self.persist:
            self.store.deleteKey(shard, key).addErrback(
                lambda f: self.log.failure("forgetting {key} in {shard}", f, key=key, shard=shard)
            )

    # -- topics ----------------------------------------------------------

    def _shardConfig(self, configs: dict[str, str]) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kafka_configs": dict(configs)}
        if "retention.ms" in configs:
            ms = int(configs["retention.ms"])
            cfg["retention_ms"] = 0 if ms < 0 else ms
        if "retention.bytes" in configs:
            b = int(configs["retention.bytes"])
            cfg["retention_bytes"] = 0 if b < 0 else b
        return cfg

    async def createTopic(
        self, name: str, partitions: int, configs: dict[str, str], validateOnly: bool = False
    ) -> tuple[int, str | None]:
        """Create a topic; returns C{(errorCode, message)}."""
        if not validTopicName(name):
            return E.INVALID_TOPIC_EXCEPTION, f"invalid topic name {name!r}"
        if name in self.topics:
            return E.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
        if partitions == -1:
            partitions = self.settings.default_partitions
        if partitions < 1 or partitions > self.settings.max_partitions_per_topic:
            return (
                E.INVALID_PARTITIONS,
                f"partitions must be 1..{self.settings.max_partitions_per_topic}",
            )
        try:
            cfg = self._shardConfig(configs)
        except ValueError as e:
            return E.INVALID_CONFIG, str(e)
        if validateOnly:
            return E.NONE, None
        self.topics[name] = Topic(name, partitions, dict(configs))
        try:
            for p in range(partitions):
                await self.store.createShard(shardName(name, p), cfg)
        except Exception as e:
            self.log.failure("creating topic {topic}", topic=name)
            return E.UNKNOWN_SERVER_ERROR, str(e)
        self.log.info("topic {topic} created with {n} partitions", topic=name, n=partitions)
        return E.NONE, None

    async def autoCreate(self, name: str) -> bool:
        """Create C{name} with the defaults if auto-creation is on; True if it exists."""
        if name in self.topics:
            return True
        if not self.settings.auto_create_topics:
            return False
        code, _ = await self.createTopic(name, self.settings.default_partitions, {})
        return code in (E.NONE, E.TOPIC_ALREADY_EXISTS)

    async def deleteTopic(self, name: str) -> int:
        """Delete a topic and its partitions; returns an error code."""
        topic = self.topics.pop(name, None)
        if topic is None:
            return E.UNKNOWN_TOPIC_OR_PARTITION
        for p in range(topic.partitions):
            shard = shardName(name, p)
            part = self.partitions.pop(shard, None)
            aborted = self._abortedLoaded.pop(shard, [])
            if part is not None:
                part.wake()
                aborted = part.aborted
            for pid, first, _ in aborted:
                self._forget(ABORTED_SHARD, _key(shard, pid, first))
            for key in [k for k in self._producers if k[0] == shard]:
                del self._producers[key]
                self._forget(PRODUCER_STATE_SHARD, _key(*key))
            await self.store.deleteShard(shard)
        self.log.info("topic {topic} deleted", topic=name)
        return E.NONE

    async def createPartitions(
        self, name: str, count: int, validateOnly: bool
    ) -> tuple[int, str | None]:
        """Grow a topic to C{count} partitions."""
        topic = self.topics.get(name)
        if topic is None:
            return E.UNKNOWN_TOPIC_OR_PARTITION, None
        if count <= topic.partitions:
            return E.INVALID_PARTITIONS, f"topic has {topic.partitions} partitions already"
        if count > self.settings.max_partitions_per_topic:
            return E.INVALID_PARTITIONS, f"at most {self.settings.max_partitions_per_topic}"
        if validateOnly:
            return E.NONE, None
        cfg = self._shardConfig(topic.configs)
        for p in range(topic.partitions, count):
            await self.store.createShard(shardName(name, p), cfg)
        topic.partitions = count
        return E.NONE, None

    async def partition(self, topic: str, index: int) -> Partition | None:
        """The partition, or None if the topic or partition does not exist."""
        t = self.topics.get(topic)
        if t is None or not 0 <= index < t.partitions:
            return None
        shard = shardName(topic, index)
        part = self.partitions.get(shard)
        if part is None:
            _, nxt = await self.store.offsets(shard)
            part = self.partitions.get(shard)
            if part is None:
                part = Partition(shard, nxt)
                part.aborted = sorted(self._abortedLoaded.pop(shard, []), key=lambda a: a[1])
                self.partitions[shard] = part
        return part

    # -- producer ids ----------------------------------------------------

    async def allocateProducerId(self) -> int:
        """A producer id never handed out before by this store."""
        pid = self.nextProducerId
        self.nextProducerId += 1
        await self.store.upsert(PRODUCERS_SHARD, b"next", str(self.nextProducerId).encode())
        return pid

    def _producerState(self, shard: str, pid: int) -> _ProducerState | None:
        key = (shard, pid)
        st = self._producers.get(key)
        if st is not None:
            self._producers.move_to_end(key)
        return st

    def _rememberProducer(self, shard: str, pid: int, st: _ProducerState) -> None:
        self._producers[(shard, pid)] = st
        self._producers.move_to_end((shard, pid))
        while len(self._producers) > self.settings.max_producer_states:
            (oldShard, oldPid), _ = self._producers.popitem(last=False)
            self._forget(PRODUCER_STATE_SHARD, _key(oldShard, oldPid))

    # -- records ---------------------------------------------------------

    def checkSequence(self, part: Partition, h: BatchHeader) -> tuple[int, int | None]:
        """Idempotence (KIP-98): C{(error, duplicateBaseOffset)} for a batch."""
        if h.producerId < 0:
            return E.NONE, None
        st = self._producerState(part.shard, h.producerId)
        if st is None or h.producerEpoch > st.epoch:
            if st is not None and h.baseSequence != 0:
                return E.OUT_OF_ORDER_SEQUENCE_NUMBER, None
            return E.NONE, None
        if h.producerEpoch < st.epoch:
            return E.INVALID_PRODUCER_EPOCH, None
        last = h.baseSequence + h.lastOffsetDelta
        for first, lst, base in st.recent:
            if first == h.baseSequence and lst == last:
                return E.NONE, base
        expected = 0 if st.lastSeq == 0x7FFFFFFF else st.lastSeq + 1
        if h.baseSequence != expected:
            return E.OUT_OF_ORDER_SEQUENCE_NUMBER, None
        return E.NONE, None

    def append(
        self, part: Partition, data: bytes, h: BatchHeader
    ) -> tuple[int, defer.Deferred[Any]]:
        """Store one batch (offsets assigned now); returns its base offset and the durability Deferred."""
        n = h.lastOffsetDelta + 1
        base = part.nextOffset
        part.nextOffset += n
        ts = h.maxTimestamp if h.maxTimestamp >= 0 else int(time.time() * 1000)
        batch = {"timestamp": ts, "value": rewriteBaseOffset(data, base, part.epoch)}
        also: list[defer.Deferred[Any]] = []
        if h.producerId >= 0 and not h.control:
            st = self._producerState(part.shard, h.producerId)
            if st is None or h.producerEpoch != st.epoch:
                st = _ProducerState(h.producerEpoch)
            st.lastSeq = (h.baseSequence + h.lastOffsetDelta) & 0x7FFFFFFF
            st.recent.append((h.baseSequence, h.baseSequence + h.lastOffsetDelta, base))
            del st.recent[:-5]
            self._rememberProducer(part.shard, h.producerId, st)
            if self.persist:
                key = _key(part.shard, h.producerId)
                also.append(self.store.upsert(PRODUCER_STATE_SHARD, key, st.dump()))
            if h.transactional and h.producerId not in part.ongoing:
                part.ongoing[h.producerId] = base
                if self.txnStarted is not None:
                    started = self.txnStarted(part, h.producerId, base)
                    if started is not None:
                        also.append(started)
        if self.spans:
            d = self.store.appendSpan(part.shard, batch, n)  # type: ignore[attr-defined]
        else:
            records = [batch]
            records.extend({"timestamp": ts, "key": _DELTA.pack(i)} for i in range(1, n))
            d = self.store.append(part.shard, records).addCallback(lambda offsets: offsets[0])
        d.addCallback(self._appended, part, base, n)
        if also:
            d = defer.gatherResults([d, *also], consumeErrors=True)
        return base, d

    def _appended(self, first: int, part: Partition, base: int, n: int) -> None:
        if first != base:
            self.log.error(
                "shard {shard}: store assigned offset {got}, expected {base}; "
                "was it written by something else?",
                shard=part.shard,
                got=first,
                base=base,
            )
            part.nextOffset = first + n
        part.wake()

    async def writeMarker(self, part: Partition, pid: int, epoch: int, commit: bool) -> None:
        """End C{pid}'s transaction on C{part} with a control batch (KIP-98)."""
        first = part.ongoing.pop(pid, None)
        if first is None:
            return
        data = controlBatch(pid, epoch, commit, int(time.time() * 1000))
        from robustmq.protocols.kafka._records import iterBatches

        h = next(iterBatches(data))
        base, d = self.append(part, data, h)
        if not commit:
            part.aborted.append((pid, first, base))
            if self.persist:
                await self.store.upsert(ABORTED_SHARD, _key(part.shard, pid, first), b"%d" % base)
            excess = len(part.aborted) - self.settings.max_aborted_transactions
            if excess > 0:
                for old, oldFirst, _ in part.aborted[:excess]:
                    self._forget(ABORTED_SHARD, _key(part.shard, old, oldFirst))
                del part.aborted[:excess]
        await d

    async def read(self, part: Partition, offset: int, maxBytes: int, upTo: int) -> list[bytes]:
        """Stored batches from the one holding C{offset}, below C{upTo}, about C{maxBytes}.

        The first batch is returned even when it alone is larger (Kafka does the same).
        """
        store = self.store
        start, _ = await store.offsets(part.shard)
        offset = max(offset, start)
        if offset >= upTo:
            return []
        out: list[bytes] = []
        used = 0
        budget = max(1, maxBytes)
        first = True
        for _ in range(10_000):
            if used >= budget:
                break
            recs = await store.read(
                part.shard, offset, self.settings.fetch_max_records, budget - used + 4096
            )
            if not recs:
                break
            if first:
                first = False
                r = recs[0]
                if r["value"] is None and r["key"] is not None:
                    # a placeholder (no span support): start at its batch
                    head = r["offset"] - _DELTA.unpack(r["key"])[0]
                    if start <= head < r["offset"]:
                        offset = head
                        continue
            for r in recs:
                if r["offset"] >= upTo:
                    return out
                v = r["value"]
                if v is None:
                    continue
                if out and used + len(v) > budget:
                    return out
                out.append(v)
                used += len(v)
            last = recs[-1]
            offset = last["offset"] + last.get("span", 1)
            if offset >= upTo:
                break
        return out
