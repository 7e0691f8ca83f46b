"""
Kafka topics mapped to MQTT topic filters (``[[mappings]]``, docs/topic-space.md).

MQTT → Kafka: a L{MappedTopicWriter} is a delivery target in the broker's
router under the mapping's MQTT filter.  Every message the router hands it
(an MQTT publish, an AMQP publish to the MQTT topic exchange) is appended
to the Kafka topic as a record whose key is the MQTT topic name (so one
MQTT topic keeps its order in one partition, chosen as the Java client's
default partitioner would), whose headers are the MQTT 5 user properties
and whose timestamp is the publish time.  The publisher's acknowledgement
(MQTT PUBACK, AMQP confirm) waits for the append.

Kafka → MQTT: a L{_PartitionPump} per partition of a mapped topic reads it
like a read_committed consumer, from a cursor kept as the committed offset
of the internal group C{__robustmq_mqtt}: a record whose key is an MQTT
topic name matching the filter is published to the broker under that name;
other records stay in Kafka and are counted.  The pump goes at the pace of
the MQTT side: it stops reading while the subscribers it filled are
congested, and moves its cursor once the durable writes of what it
published are done (so a restart publishes a record at least once, never
zero times).  Kafka producers are never paused by it.  A message is never
handed back to the protocol it came from, so no mapping can loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.core.backpressure import PublisherGate
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.subscription import SubscriptionOptions
from robustmq.core.topics import InvalidTopic, topicMatches, validateTopicName
from robustmq.interfaces import ICongestible, IDeliveryTarget
from robustmq.protocols.kafka._recordcodec import (
    Record,
    decodeRecords,
    encodeBatch,
    partitionForKey,
)
from robustmq.protocols.kafka._records import BatchHeader, InvalidRecord, iterBatches

if TYPE_CHECKING:
    from robustmq.config import MappingSettings
    from robustmq.protocols.kafka._node import KafkaNode
    from robustmq.protocols.kafka._topics import Partition

__all__ = ["KafkaMappings", "MappedTopicWriter"]

#: Per-record overhead counted against the batch and pending bounds besides key and value.
_RECORD_OVERHEAD = 32
#: The internal consumer group whose committed offsets are the Kafka → MQTT cursors.
PUMP_GROUP = "__robustmq_mqtt"
#: Bytes a pump reads from its partition per step.
_PUMP_READ_BYTES = 256 * 1024


def _headersOf(message: Message) -> list[tuple[str, bytes | None]]:
    props = message.properties
    if not props:
        return []
    pairs = props.get("user_property")
    if not pairs:
        return []
    return [(str(k), str(v).encode("utf-8")) for k, v in pairs]


class _Batch:
    """Records for one partition gathered during a reactor turn, each with who waits for it."""

    __slots__ = ("records", "waiters", "sizes", "size")

    def __init__(self) -> None:
        self.records: list[Record] = []
        #: per record: the Deferred its publisher's acknowledgement waits on (None: QoS 0)
        self.waiters: list[defer.Deferred[None] | None] = []
        self.sizes: list[int] = []
        self.size = 0

    def add(self, record: Record, waiter: defer.Deferred[None] | None, size: int) -> None:
        self.records.append(record)
        self.waiters.append(waiter)
        self.sizes.append(size)
        self.size += size


@implementer(IDeliveryTarget, ICongestible)
class MappedTopicWriter:
    """Appends the MQTT messages of one mapping to its Kafka topic.

    Records are gathered per partition and appended once per reactor turn
    (or sooner, at C{[kafka] mapping_max_batch_bytes}).  Bytes delivered but
    not yet stored are bounded by C{[kafka] mapping_max_pending_bytes}: at
    the bound the writer is congested and publishers that can pause wait
    until it is below half; past twice the bound (publishers that cannot
    pause: wills, the broker's own messages) records are dropped, counted
    and logged.
    """

    log = Logger()
    clientId = None

    def __init__(self, mapping: MappingSettings, node: KafkaNode) -> None:
        self.mapping = mapping
        self.topic = mapping.kafka
        self.node = node
        settings = node.settings
        self.maxBatchBytes = settings.mapping_max_batch_bytes
        self.maxPendingBytes = settings.mapping_max_pending_bytes
        self._batches: dict[int, _Batch] = {}
        self._flushCall: Any = None
        #: bytes delivered and not yet stored (appended or failed)
        self.pendingBytes = 0
        self.congested = False
        self.waiters: set[Any] = set()
        #: records appended, dropped at the bound, failed appends
        self.appended = 0
        self.dropped = 0
        self.failed = 0
        self._ready: defer.Deferred[bool] | None = None
        self._partitions = 0

    def __repr__(self) -> str:
        return f"<MappedTopicWriter {self.mapping.mqtt!r} -> kafka:{self.topic}>"

    # IDeliveryTarget

    def deliver(self, message: Message, qos: int, options: Any, outcome: Outcome) -> None:
        """Append C{message} to the mapped topic; the acknowledgement waits for it (QoS 1/2)."""
        if message.source == "kafka":
            return  # never back into the protocol it came from
        key = message.topic.encode("utf-8")
        record = Record(key, message.payload, _headersOf(message), int(message.timestamp * 1000))
        size = len(key) + len(message.payload) + _RECORD_OVERHEAD
        if self.pendingBytes + size > 2 * self.maxPendingBytes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                self.log.warn(
                    "mapping {filter} -> {topic}: {n} records dropped: more than twice "
                    "[kafka] mapping_max_pending_bytes are waiting to be stored",
                    filter=self.mapping.mqtt,
                    topic=self.topic,
                    n=self.dropped,
                )
            return
        self.pendingBytes += size
        partition = partitionForKey(key, self._partitions) if self._partitions else -1
        batch = self._batches.get(partition)
        if batch is None:
            batch = self._batches[partition] = _Batch()
        done: defer.Deferred[None] | None = None
        if qos:
            done = defer.Deferred()
            outcome.wait(done)
        batch.add(record, done, size)
        if self.pendingBytes >= self.maxPendingBytes:
            self.congested = True
            outcome.congest(self)
        if batch.size >= self.maxBatchBytes:
            self._flushNow()
        elif self._flushCall is None:
            self._flushCall = self.node.reactor.callLater(0, self._flushNow)

    # ICongestible

    def addWaiter(self, publisher: Any) -> None:
        self.waiters.add(publisher)

    def removeWaiter(self, publisher: Any) -> None:
        self.waiters.discard(publisher)

    def _released(self, size: int) -> None:
        self.pendingBytes -= size
        if self.congested and self.pendingBytes <= self.maxPendingBytes // 2:
            self.congested = False
            waiters, self.waiters = self.waiters, set()
            for publisher in waiters:
                publisher.congestionCleared(self)

    # Writing

    def _flushNow(self) -> None:
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        batches, self._batches = self._batches, {}
        if batches:
            defer.ensureDeferred(self._write(batches))

    async def _topicReady(self) -> bool:
        """Create the topic on first use (default partition count); learn its partitions."""
        await self.node.broker.whenReady()
        await self.node.ready()
        topics = self.node.topics
        if self.topic not in topics.topics:
            if self._ready is None:
                self._ready = defer.ensureDeferred(self._create())
            try:
                if not await self._ready:
                    return False
            finally:
                self._ready = None
        self._partitions = topics.topics[self.topic].partitions
        return True

    async def _create(self) -> bool:
        topics = self.node.topics
        settings = self.node.settings
        await topics.createTopic(self.topic, settings.default_partitions, {})
        return self.topic in topics.topics

    async def _write(self, batches: dict[int, _Batch]) -> None:
        try:
            await self._append(batches)
        except Exception:
            # Whatever went wrong, nobody may wait forever for these records.
            self.log.failure("mapping {topic}: appending failed", topic=self.topic)
            failure = Failure()
            for batch in batches.values():
                if batch.waiters or batch.size:
                    self._settle(batch, failure)

    async def _append(self, batches: dict[int, _Batch]) -> None:
        try:
            ok = await self._topicReady()
        except Exception:
            ok = False
            self.log.failure("mapping {topic}: the topic could not be created", topic=self.topic)
        if not ok:
            missing = Failure(RuntimeError(f"Kafka topic {self.topic} could not be created"))
            for batch in batches.values():
                self._settle(batch, missing)
            return
        placed = batches.pop(-1, None)
        if placed is not None:
            # Delivered before the partition count was known: place each record now.
            for i, record in enumerate(placed.records):
                p = partitionForKey(record.key or b"", self._partitions)
                target = batches.get(p)
                if target is None:
                    target = batches[p] = _Batch()
                target.add(record, placed.waiters[i], placed.sizes[i])
        topics = self.node.topics
        appends = []
        for partition, batch in sorted(batches.items()):
            part = await topics.partition(self.topic, partition)
            if part is None:
                self._settle(batch, Failure(RuntimeError(f"{self.topic}/{partition} is gone")))
                continue
            data = encodeBatch(batch.records)
            _, d = topics.append(part, data, BatchHeader(data, 0))
            self.node.broker.stats.kafkaReceived += len(batch.records)
            appends.append((batch, d))
        for batch, d in appends:
            try:
                await d
            except Exception:
                self.failed += len(batch.records)
                self.log.failure("mapping {topic}: append failed", topic=self.topic)
                self._settle(batch, Failure())
            else:
                self.appended += len(batch.records)
                self._settle(batch, None)

    def _settle(self, batch: _Batch, failure: Failure | None) -> None:
        waiters, batch.waiters = batch.waiters, []
        size, batch.size = batch.size, 0
        for done in waiters:
            if done is None or done.called:
                continue
            if failure is None:
                done.callback(None)
            else:
                done.errback(failure)
        self._released(size)


class _PartitionPump:
    """Publishes one partition of a mapped topic to MQTT, in offset order, at MQTT's pace."""

    log = Logger()

    def __init__(self, mappings: KafkaMappings, mapping: MappingSettings, index: int) -> None:
        self.mappings = mappings
        self.mapping = mapping
        self.topic = mapping.kafka
        self.index = index
        self.running = True
        self._resume: defer.Deferred[None] | None = None
        self.gate = PublisherGate(self._pause, self._unpause)
        self._paused = False
        #: the batch being published when the pump last paused: (base offset, records)
        self._decoded: tuple[int, list[Record]] | None = None

    def _pause(self) -> None:
        self._paused = True

    def _unpause(self) -> None:
        self._paused = False
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.callback(None)

    def stop(self) -> None:
        self.running = False
        self.gate.release()
        self._unpause()

    async def run(self, startAt: int) -> None:
        """Read and publish until stopped (or the topic goes away)."""
        node = self.mappings.node
        topics = node.topics
        part = await topics.partition(self.topic, self.index)
        if part is None:
            return
        committed = await topics.store.fetchOffset(PUMP_GROUP, part.shard)
        cursor = committed[0] if committed is not None else startAt
        while self.running:
            start, stored = await topics.store.offsets(part.shard)
            cursor = max(cursor, start)  # records deleted under the cursor
            # What is stored and not in an open transaction (read_committed).
            upTo = min(part.lastStable(), stored)
            batches = (
                await topics.read(part, cursor, _PUMP_READ_BYTES, upTo) if cursor < upTo else []
            )
            if not batches:
                woken: defer.Deferred[None] = defer.Deferred()
                part.waiters.append(woken)  # fired by the next stored append or marker
                await woken
                if topics.partitions.get(part.shard) is not part or not self.running:
                    return  # the topic was deleted, or the node stops
                continue
            outcome = Outcome()
            for data in batches:
                cursor = self._publishBatch(part, data, cursor, outcome)
                if outcome.congested:
                    break  # the rest waits until the subscribers drain
            if outcome.writes:
                await outcome.allWritten()
            await topics.store.commitOffset(PUMP_GROUP, part.shard, cursor)
            if outcome.congested:
                self.gate.waitFor(outcome.congested)
            if self._paused:
                self._resume = defer.Deferred()
                await self._resume

    def _publishBatch(self, part: Partition, data: bytes, cursor: int, outcome: Outcome) -> int:
        """Publish the records of one stored batch at or after C{cursor}; the new cursor."""
        mappings = self.mappings
        for h in iterBatches(data, check=False):
            base = int.from_bytes(data[h.start : h.start + 8], "big", signed=True)
            end = base + h.lastOffsetDelta + 1
            if end <= cursor:
                continue
            if h.control or (h.transactional and _aborted(part, h.producerId, base)):
                cursor = max(cursor, end)
                continue
            decoded = self._decoded
            try:
                if decoded is not None and decoded[0] == base:
                    records = decoded[1]  # resuming in the middle of it: decoded already
                else:
                    records = decodeRecords(data, h)
            except InvalidRecord as e:
                mappings.kafkaOnly += h.count
                self.log.warn(
                    "records {first}..{last} of {topic}/{index} not published to MQTT: {why}",
                    first=base,
                    last=end - 1,
                    topic=self.topic,
                    index=self.index,
                    why=str(e),
                )
                cursor = max(cursor, end)
                continue
            for record in records:
                offset = base + record.offsetDelta
                if offset >= cursor:
                    mappings.publish(self.mapping, record, outcome)
                    cursor = offset + 1
                    if outcome.congested:
                        # A subscriber's queue is full: go on after it drains.
                        self._decoded = (base, records) if cursor < end else None
                        return cursor
            self._decoded = None
            cursor = max(cursor, end)
        return cursor


def _aborted(part: Partition, producerId: int, offset: int) -> bool:
    """Whether the transactional batch of C{producerId} at C{offset} was aborted."""
    return any(pid == producerId and first <= offset <= last for pid, first, last in part.aborted)


class KafkaMappings:
    """The node's C{[[mappings]]}: writers in the router, pumps publishing records to MQTT."""

    log = Logger()

    def __init__(self, node: KafkaNode, mappings: Iterable[MappingSettings]) -> None:
        self.node = node
        self.writers: dict[str, MappedTopicWriter] = {}
        #: Kafka topic -> the mapping that publishes its records to MQTT
        self.toMqtt: dict[str, MappingSettings] = {}
        #: Kafka topic -> the MQTT filter whose messages it receives
        self.fromMqtt: dict[str, str] = {}
        #: (topic, partition) -> the pump publishing it to MQTT
        self.pumps: dict[tuple[str, int], _PartitionPump] = {}
        #: records of mapped topics not published to MQTT (key not a matching topic name, ...)
        self.kafkaOnly = 0
        #: records of mapped topics published to MQTT
        self.published = 0
        for mapping in mappings:
            if mapping.direction in ("both", "mqtt_to_kafka"):
                self.writers[mapping.kafka] = MappedTopicWriter(mapping, node)
                self.fromMqtt[mapping.kafka] = mapping.mqtt
            if mapping.direction in ("both", "kafka_to_mqtt"):
                self.toMqtt[mapping.kafka] = mapping

    def start(self) -> None:
        """Put every MQTT → Kafka writer in the broker's router; start the pumps of the
        partitions that exist."""
        broker = self.node.broker
        outcome = Outcome()
        for writer in self.writers.values():
            broker.subscribeTarget(writer.mapping.mqtt, writer, SubscriptionOptions(qos=2), outcome)
            self.log.info(
                "MQTT topics {filter} are appended to Kafka topic {topic}",
                filter=writer.mapping.mqtt,
                topic=writer.topic,
            )
        outcome.background()
        for mapping in self.toMqtt.values():
            self.log.info(
                "records of Kafka topic {topic} keyed by a topic in {filter} are published to MQTT",
                filter=mapping.mqtt,
                topic=mapping.kafka,
            )
        if self.toMqtt:
            d = defer.ensureDeferred(self._startPumps())
            d.addErrback(lambda f: self.log.failure("starting the Kafka → MQTT pumps failed", f))

    async def _startPumps(self) -> None:
        topics = self.node.topics
        await self.node.broker.whenReady()
        await self.node.ready()
        for name in self.toMqtt:
            topic = topics.topics.get(name)
            for index in range(topic.partitions if topic is not None else 0):
                part = await topics.partition(name, index)
                if part is not None:
                    self.ensurePump(name, index, part.nextOffset)

    def ensurePump(self, topic: str, index: int, startAt: int) -> None:
        """Publish partition C{index} of mapped C{topic} to MQTT from its committed cursor,
        or from C{startAt} the first time (records before it stay Kafka-only)."""
        key = (topic, index)
        if key in self.pumps or topic not in self.toMqtt:
            return
        pump = self.pumps[key] = _PartitionPump(self, self.toMqtt[topic], index)

        def ended(result: Any) -> None:
            if self.pumps.get(key) is pump:
                del self.pumps[key]
            if isinstance(result, Failure):
                self.log.failure(
                    "Kafka → MQTT pump of {topic}/{index} failed", result, topic=topic, index=index
                )

        defer.ensureDeferred(pump.run(startAt)).addBoth(ended)

    def stop(self) -> None:
        """Take the writers out of the router and stop the pumps (node shutdown)."""
        broker = self.node.broker
        for writer in self.writers.values():
            broker.unsubscribeTarget(writer.mapping.mqtt, writer)
            writer._flushNow()
        for pump in self.pumps.values():
            pump.stop()

    def mqttFilterOf(self, topic: str) -> str | None:
        """The MQTT filter whose messages Kafka topic C{topic} receives, if it is mapped so."""
        return self.fromMqtt.get(topic)

    def targetTopics(self, topic: str, records: Iterable[Record]) -> list[str]:
        """The MQTT topic names that C{records} of Kafka C{topic} would be published under."""
        mapping = self.toMqtt.get(topic)
        if mapping is None:
            return []
        names = []
        for record in records:
            name = self._mqttTopic(mapping, record)
            if name is not None:
                names.append(name)
        return names

    @staticmethod
    def _mqttTopic(mapping: MappingSettings, record: Record) -> str | None:
        if record.key is None:
            return None
        try:
            name = record.key.decode("utf-8")
            validateTopicName(name)
        except (UnicodeDecodeError, InvalidTopic):
            return None
        return name if topicMatches(mapping.mqtt, name) else None

    def decode(self, topic: str, data: bytes | memoryview, h: BatchHeader) -> list[Record] | None:
        """The records of a batch produced to C{topic} that would go to MQTT (for the
        produce-time authorisation check), or None when it is not mapped that way."""
        if topic not in self.toMqtt or h.control:
            return None
        try:
            return decodeRecords(data, h)
        except InvalidRecord:
            return None  # stays Kafka-only; the pump counts and logs it

    def publish(self, mapping: MappingSettings, record: Record, outcome: Outcome) -> None:
        """Publish C{record} to MQTT if its key names a matching topic (at QoS 1: queued for
        persistent sessions, at most once for QoS 0 subscribers); else count it."""
        name = self._mqttTopic(mapping, record)
        if name is None:
            self.kafkaOnly += 1
            return
        props = None
        if record.headers:
            props = {
                "user_property": [
                    (k, (v or b"").decode("utf-8", "replace")) for k, v in record.headers
                ]
            }
        message = Message(
            name, record.value or b"", 1, False, record.timestamp / 1000, props, None, "kafka"
        )
        self.published += 1
        self.node.broker.publish(message, outcome)
