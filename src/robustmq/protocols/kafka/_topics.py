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

Every stored record carries its batch's C{maxTimestamp}, so the store's
timestamp lookup finds the first batch holding a record at or after a
time; L{TopicManager.offsetForTime} then reads that batch's records
(decompressing if needed) to answer with the record itself, as Kafka does.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.interfaces import CorruptRecordError, IShardAdminStore, ISpanShardStore
from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._configs import TOPIC, ConfigError, ConfigStore, topicKeys
from robustmq.protocols.kafka._recordcodec import UnsupportedCompression, decodeRecords
from robustmq.protocols.kafka._records import (
    ATTR_TIMESTAMP_TYPE,
    BatchHeader,
    controlBatch,
    rewriteBaseOffset,
)

if TYPE_CHECKING:
    from robustmq.config import KafkaSettings, StorageSettings
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

    __slots__ = (
        "shard",
        "nextOffset",
        "waiters",
        "ongoing",
        "aborted",
        "epoch",
        "maxTime",
        "resync",
    )

    def __init__(self, shard: str, nextOffset: int) -> None:
        self.shard = shard
        self.nextOffset = nextOffset
        #: a write failed: fires once C{nextOffset} is the store's again
        self.resync: defer.Deferred[None] | None = None
        self.waiters: list[defer.Deferred[None]] = []
        #: producer id -> first offset of its open transaction here
        self.ongoing: dict[int, int] = {}
        #: (producerId, firstOffset, lastOffset) of aborted transactions, oldest first
        self.aborted: list[tuple[int, int, int]] = []
        self.epoch = 0
        #: (largest record timestamp, base offset of the first batch holding it),
        #: None until first asked for (then read once from the log, kept up to date)
        self.maxTime: tuple[int, int] | None = None

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
    """A topic's id, partition count and configs."""

    __slots__ = ("name", "partitions", "configs", "topicId")

    def __init__(
        self, name: str, partitions: int, configs: dict[str, str], topicId: uuid.UUID
    ) -> None:
        self.name = name
        self.partitions = partitions
        self.configs = configs
        #: the topic id (KIP-516): new for every topic created, kept in its shards' config
        self.topicId = topicId


def legacyTopicId(name: str) -> uuid.UUID:
    """The id of a topic created before ids were stored: derived from its name."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "robustmq:kafka-topic:" + name)


class TopicManager:
    """The node's Kafka topics, partitions and producer state, shared by every listener."""

    log = Logger()

    def __init__(
        self, store: IShardStore, settings: KafkaSettings, storage: StorageSettings | None = None
    ) -> None:
        self.store = store
        #: the node's storage settings (retention defaults of a reconfigured shard)
        self.settings_storage = storage
        #: one stored record per batch (else a placeholder per further record)
        self.spans = ISpanShardStore.providedBy(store)
        self.settings = settings
        self.topics: dict[str, Topic] = {}
        #: topic id -> topic name (Metadata v10+, Fetch v13+, KIP-848, KIP-932)
        self.byId: dict[uuid.UUID, str] = {}
        #: topics whose shards are being created -> Deferreds of partition() calls waiting
        self._creating: dict[str, list[defer.Deferred[None]]] = {}
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
        #: dynamic configs (AlterConfigs) of topics, the broker and groups
        self.configs = ConfigStore(store)
        #: called with a topic's name when it is deleted (fetch sessions, groups)
        self.topicDeleted: Any = None
        #: called when a topic is created or grows (KIP-848 groups reassign)
        self.topicsChanged: Any = None
        #: shard configs can be changed after creation (retention)
        self.adminStore = IShardAdminStore.providedBy(store)

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
        ids: dict[str, uuid.UUID] = {}
        for name, cfg in shards.items():
            if not name.startswith(PREFIX):
                continue
            topic, _, part = name[len(PREFIX) :].rpartition("/")
            if not part.isdigit():
                continue
            counts.setdefault(topic, set()).add(int(part))
            configs.setdefault(topic, dict(cfg.get("kafka_configs") or {}))
            if cfg.get("kafka_topic_id"):
                ids.setdefault(topic, uuid.UUID(cfg["kafka_topic_id"]))
        await self.configs.load(shards)
        for topic, parts in counts.items():
            n = 0
            while n in parts:
                n += 1
            own = configs[topic]
            if topic in self.configs.topics:
                own = dict(self.configs.topics[topic])  # altered since creation
            t = Topic(topic, n, own, ids.get(topic) or legacyTopicId(topic))
            self.topics[topic] = t
            self.byId[t.topicId] = topic
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
        """The shard config of a topic's partitions: its configs, retention from them
        or from the broker's dynamic C{log.retention.*} (else the store's default)."""
        cfg: dict[str, Any] = {"kafka_configs": dict(configs)}
        broker = self.configs.broker
        for topicKey, brokerKey, shardKey in (
            ("retention.ms", "log.retention.ms", "retention_ms"),
            ("retention.bytes", "log.retention.bytes", "retention_bytes"),
        ):
            value = configs.get(topicKey, broker.get(brokerKey))
            if value is not None:
                n = int(value)
                cfg[shardKey] = 0 if n < 0 else n
        return cfg

    def defaultPartitions(self) -> int:
        """Partitions of an auto-created topic (C{num.partitions}, dynamic or configured)."""
        return int(self.configs.broker.get("num.partitions", self.settings.default_partitions))

    def autoCreateEnabled(self) -> bool:
        """C{auto.create.topics.enable}, dynamic or configured."""
        value = self.configs.broker.get("auto.create.topics.enable")
        return self.settings.auto_create_topics if value is None else value == "true"

    async def setTopicConfigs(self, name: str, values: dict[str, str]) -> None:
        """Replace a topic's configs (AlterConfigs): persisted, retention applied to its shards."""
        topic = self.topics[name]
        topic.configs = dict(values)
        await self.configs.save(TOPIC, name, topic.configs)
        await self._reconfigure(topic)

    async def brokerDefaultsChanged(self) -> None:
        """The broker's dynamic C{log.retention.*} changed: topics without their own follow."""
        for topic in list(self.topics.values()):
            if "retention.ms" not in topic.configs or "retention.bytes" not in topic.configs:
                await self._reconfigure(topic)

    async def _reconfigure(self, topic: Topic) -> None:
        if not self.adminStore:
            return
        cfg = self._shardConfig(topic.configs)
        cfg["kafka_topic_id"] = str(topic.topicId)
        st = self.settings_storage
        cfg.setdefault("retention_ms", st.retention_ms if st is not None else 0)
        cfg.setdefault("retention_bytes", st.retention_bytes if st is not None else 0)
        for p in range(topic.partitions):
            await self.store.configureShard(shardName(topic.name, p), cfg)  # type: ignore[attr-defined]

    async def deleteRecordsBefore(self, part: Partition, offset: int) -> int:
        """DeleteRecords: records below C{offset} go; fires with the new log start offset."""
        start = await self.store.deleteBefore(part.shard, offset)
        if part.maxTime is not None and part.maxTime[1] < start:
            part.maxTime = None
        self.log.info("{shard}: records before {offset} deleted", shard=part.shard, offset=start)
        return int(start)

    async def partitionSize(self, part: Partition) -> int:
        """Bytes the partition occupies in the store (summed from its records if the store cannot say)."""
        if self.adminStore:
            return int(await self.store.shardSize(part.shard))  # type: ignore[attr-defined]
        total = 0
        offset, end = await self.store.offsets(part.shard)
        while offset < end:
            recs = await self.store.read(
                part.shard, offset, self.settings.fetch_max_records, 4 << 20
            )
            if not recs:
                break
            total += sum(len(r["value"] or b"") + len(r["key"] or b"") for r in recs)
            last = recs[-1]
            offset = last["offset"] + last.get("span", 1)
        return total

    async def createTopic(
        self, name: str, partitions: int, configs: dict[str, str], validateOnly: bool = False
    ) -> tuple[int, str | None]:
        """Create a topic; returns C{(errorCode, message)}."""
        if not validTopicName(name):
            return E.INVALID_TOPIC_EXCEPTION, f"invalid topic name {name!r}"
        if name in self.topics:
            return E.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
        if partitions == -1:
            partitions = self.defaultPartitions()
        if partitions < 1 or partitions > self.settings.max_partitions_per_topic:
            return (
                E.INVALID_PARTITIONS,
                f"partitions must be 1..{self.settings.max_partitions_per_topic}",
            )
        try:
            configs = {
                k: topicKeys[k].validate(v) if k in topicKeys else v for k, v in configs.items()
            }
            cfg = self._shardConfig(configs)
        except (ConfigError, ValueError) as e:
            return E.INVALID_CONFIG, str(e)
        if validateOnly:
            return E.NONE, None
        topicId = uuid.uuid4()
        cfg["kafka_topic_id"] = str(topicId)
        # Known at once (a second create gets TOPIC_ALREADY_EXISTS); partition() waits
        # until its shards exist.
        self.topics[name] = Topic(name, partitions, dict(configs), topicId)
        self.byId[topicId] = name
        self._creating[name] = []
        try:
            for p in range(partitions):
                await self.store.createShard(shardName(name, p), cfg)
        except Exception as e:
            self.log.failure("creating topic {topic}", topic=name)
            self.topics.pop(name, None)
            self.byId.pop(topicId, None)
            return E.UNKNOWN_SERVER_ERROR, str(e)
        finally:
            for waiter in self._creating.pop(name, ()):
                waiter.callback(None)
        self.log.info("topic {topic} created with {n} partitions", topic=name, n=partitions)
        if self.topicsChanged is not None:
            self.topicsChanged()
        return E.NONE, None

    async def autoCreate(self, name: str) -> bool:
        """Create C{name} with the defaults if auto-creation is on; True if it exists."""
        if name in self.topics:
            return True
        if not self.autoCreateEnabled():
            return False
        code, _ = await self.createTopic(name, self.defaultPartitions(), {})
        return code in (E.NONE, E.TOPIC_ALREADY_EXISTS)

    async def deleteTopic(self, name: str) -> int:
        """Delete a topic and its partitions; returns an error code."""
        topic = self.topics.pop(name, None)
        if topic is None:
            return E.UNKNOWN_TOPIC_OR_PARTITION
        self.byId.pop(topic.topicId, None)
        if self.topicDeleted is not None:
            self.topicDeleted(name)
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
        await self.configs.forget(TOPIC, name)
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
        cfg["kafka_topic_id"] = str(topic.topicId)
        for p in range(topic.partitions, count):
            await self.store.createShard(shardName(name, p), cfg)
        topic.partitions = count
        if self.topicsChanged is not None:
            self.topicsChanged()
        return E.NONE, None

    async def partition(self, topic: str, index: int) -> Partition | None:
        """The partition, or None if the topic or partition does not exist."""
        creating = self._creating.get(topic)
        if creating is not None:
            created: defer.Deferred[None] = defer.Deferred()
            creating.append(created)
            await created
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
        if part.resync is not None:
            await part.resync
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
        if part.maxTime is not None and not h.control and h.maxTimestamp > part.maxTime[0]:
            part.maxTime = (h.maxTimestamp, base)
        batch = {"timestamp": ts, "value": rewriteBaseOffset(data, base, part.epoch)}
        also: list[defer.Deferred[Any]] = []
        st = None
        previousSeq = -1
        if h.producerId >= 0 and not h.control:
            st = self._producerState(part.shard, h.producerId)
            if st is None or h.producerEpoch != st.epoch:
                st = _ProducerState(h.producerEpoch)
            previousSeq = st.lastSeq
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
        d.addCallbacks(
            self._appended,
            self._appendFailed,
            (part, base, n),
            errbackArgs=(part, base, st, previousSeq),
        )
        if also:
            d = defer.gatherResults([d, *also], consumeErrors=True)
        return base, d

    def _appendFailed(
        self, failure: Failure, part: Partition, base: int, st: Any, previousSeq: int
    ) -> Failure:
        """
        The store refused the batch at C{base} (and so everything after it):
        take the partition's next offset from the store again, and forget the
        producer sequences of the batches that were not stored, so that the
        producer's retry is stored rather than answered as a duplicate.
        """
        if st is not None:
            st.recent = [entry for entry in st.recent if entry[2] < base]
            if previousSeq < st.lastSeq:
                st.lastSeq = previousSeq
        if part.resync is None:
            part.resync = defer.ensureDeferred(self._resync(part))
        return failure

    async def _resync(self, part: Partition) -> None:
        try:
            _, part.nextOffset = await self.store.offsets(part.shard)
        finally:
            part.resync = None

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
        if not commit:
            # Listed before the marker is appended: a long-polling read_committed
            # Fetch woken by the append must already see the transaction as aborted.
            part.aborted.append((pid, first, part.nextOffset))
        base, d = self.append(part, data, h)
        if not commit:
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
            try:
                recs = await store.read(
                    part.shard,
                    offset,
                    self.settings.fetch_max_records,
                    min(budget - used, self.settings.fetch_read_bytes) + 4096,
                )
            except CorruptRecordError:
                if out:
                    return out  # what precedes the damage; the next fetch reports it
                raise
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

    # -- offsets by time (ListOffsets) ------------------------------------

    async def _batchAt(self, part: Partition, offset: int) -> tuple[int, int, bytes] | None:
        """C{(baseOffset, span, batch)} of the stored batch holding C{offset} or the next one."""
        recs = await self.store.read(part.shard, offset, 2, 1)
        for r in recs:
            v = r["value"]
            if v is None and r["key"] is not None:
                # a placeholder (no span support): its batch starts earlier
                head = r["offset"] - _DELTA.unpack(r["key"])[0]
                got = await self.store.read(part.shard, head, 1, 1)
                if got and got[0]["offset"] == head and got[0]["value"] is not None:
                    return head, _spanOf(got[0]["value"]), got[0]["value"]
                continue
            if v is not None:
                return r["offset"], r.get("span", 1), v
        return None

    async def offsetForTime(self, part: Partition, ts: int, upTo: int) -> tuple[int, int] | None:
        """C{(offset, timestamp)} of the first record at or after C{ts} below C{upTo}.

        KIP-79: the record itself, not the first offset of its batch.  The
        store's lookup (by each batch's C{maxTimestamp}) finds the first batch
        that holds such a record; its records are read to find the one.
        """
        start, _ = await self.store.offsets(part.shard)
        found = await self.store.offsetForTimestamp(part.shard, ts)
        offset = found
        for _ in range(10_000):
            if offset is None or offset >= upTo:
                return None
            got = await self._batchAt(part, offset)
            if got is None:
                return None
            base, span, batch = got
            if not BatchHeader(batch, 0).control:
                for delta, t in recordTimestamps(batch):
                    o = base + delta
                    if t >= ts and o >= max(start, offset):
                        return (o, t) if o < upTo else None
            offset = base + span
        return None

    async def maxTimestamp(self, part: Partition, upTo: int) -> tuple[int, int] | None:
        """C{(offset, timestamp)} of the record with the largest timestamp (KIP-734), or None.

        The first time a partition is asked, its whole log is read once to
        find the batch; appends keep it current after that.
        """
        start, _ = await self.store.offsets(part.shard)
        if part.maxTime is None or part.maxTime[1] < start:
            part.maxTime = await self._scanMaxTime(part, start)
        if part.maxTime is None:
            return None
        ts, base = part.maxTime
        got = await self._batchAt(part, base)
        if got is None:
            return None
        base, _, batch = got
        for delta, t in recordTimestamps(batch):
            o = base + delta
            if t == ts and o >= start:
                return (o, t) if o < upTo else None
        return None

    async def _scanMaxTime(self, part: Partition, start: int) -> tuple[int, int] | None:
        best: tuple[int, int] | None = None
        offset = start
        _, end = await self.store.offsets(part.shard)
        while offset < end:
            recs = await self.store.read(
                part.shard, offset, self.settings.fetch_max_records, 4 << 20
            )
            if not recs:
                break
            for r in recs:
                v = r["value"]
                if v is not None and len(v) >= 61:
                    h = BatchHeader(v, 0)
                    if not h.control and (best is None or h.maxTimestamp > best[0]):
                        best = (h.maxTimestamp, r["offset"])
            last = recs[-1]
            offset = last["offset"] + last.get("span", 1)
        return best


def _spanOf(batch: bytes) -> int:
    return BatchHeader(batch, 0).lastOffsetDelta + 1


def recordTimestamps(batch: bytes) -> list[tuple[int, int]]:
    """C{(offsetDelta, timestamp)} of every record of one stored batch, in order.

    Compressed batches are decompressed (L{_recordcodec}); with LogAppendTime
    the batch's C{maxTimestamp} is every record's timestamp (KIP-32).  When
    the codec's library is missing, the batch answers as one record at its
    C{maxTimestamp} (the batch-level answer), and that is logged.
    """
    h = BatchHeader(batch, 0)
    try:
        records = decodeRecords(batch, h)
    except UnsupportedCompression as e:
        TopicManager.log.warn("timestamp lookup at batch level: {error}", error=str(e))
        return [(0, h.maxTimestamp)]
    if h.attributes & ATTR_TIMESTAMP_TYPE:
        return [(r.offsetDelta, h.maxTimestamp) for r in records]
    return [(r.offsetDelta, r.timestamp) for r in records]
