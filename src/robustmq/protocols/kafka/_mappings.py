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

Kafka → MQTT: a record produced to a mapped topic whose key is an MQTT
topic name matching the filter is published to the broker under that name
once it is durable (L{KafkaMappings.produced}); other records stay in Kafka
and are counted.  A message is never handed back to the protocol it came
from, so no mapping can loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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
from robustmq.protocols.kafka._records import BatchHeader, InvalidRecord

if TYPE_CHECKING:
    from robustmq.config import MappingSettings
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = ["KafkaMappings", "MappedTopicWriter"]

#: Per-record overhead counted against the batch and pending bounds besides key and value.
_RECORD_OVERHEAD = 32


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


class KafkaMappings:
    """The node's C{[[mappings]]}: writers in the router, and publishing produced records."""

    log = Logger()

    def __init__(self, node: KafkaNode, mappings: Iterable[MappingSettings]) -> None:
        self.node = node
        self.writers: dict[str, MappedTopicWriter] = {}
        #: Kafka topic -> the mapping that publishes its records to MQTT
        self.toMqtt: dict[str, MappingSettings] = {}
        #: Kafka topic -> the MQTT filter whose messages it receives
        self.fromMqtt: dict[str, str] = {}
        #: records of mapped topics not published to MQTT (key not a matching topic name, ...)
        self.kafkaOnly = 0
        for mapping in mappings:
            if mapping.direction in ("both", "mqtt_to_kafka"):
                self.writers[mapping.kafka] = MappedTopicWriter(mapping, node)
                self.fromMqtt[mapping.kafka] = mapping.mqtt
            if mapping.direction in ("both", "kafka_to_mqtt"):
                self.toMqtt[mapping.kafka] = mapping

    def start(self) -> None:
        """Put every MQTT → Kafka writer in the broker's router."""
        broker = self.node.broker
        outcome = Outcome()
        for writer in self.writers.values():
            broker.subscribeTarget(writer.mapping.mqtt, writer, SubscriptionOptions(qos=2), outcome)
            self.log.info(
                "MQTT topics {filter} are appended to Kafka topic {topic}",
                filter=writer.mapping.mqtt,
                topic=writer.topic,
            )
        for mapping in self.toMqtt.values():
            self.log.info(
                "records of Kafka topic {topic} keyed by a topic in {filter} are published to MQTT",
                filter=mapping.mqtt,
                topic=mapping.kafka,
            )
        outcome.background()

    def stop(self) -> None:
        """Take the writers out of the router (node shutdown)."""
        broker = self.node.broker
        for writer in self.writers.values():
            broker.unsubscribeTarget(writer.mapping.mqtt, writer)
            writer._flushNow()

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
        """The records of a batch produced to C{topic} that may go to MQTT, or None.

        None when the topic is not mapped towards MQTT, and for transactional
        or control batches (kept Kafka-only: they would reach MQTT before the
        transaction's outcome is known) and batches that do not decode.
        """
        if topic not in self.toMqtt or h.control:
            return None
        if h.transactional:
            self.kafkaOnly += h.count
            return None
        try:
            return decodeRecords(data, h)
        except InvalidRecord as e:
            self.kafkaOnly += h.count
            self.log.warn(
                "records produced to mapped topic {topic} kept Kafka-only: {why}",
                topic=topic,
                why=str(e),
            )
            return None

    def produced(self, topic: str, records: list[Record]) -> None:
        """C{records} of mapped C{topic} are durable: publish the matching ones to MQTT.

        Published at QoS 1 (queued for persistent sessions, at most once for
        QoS 0 subscribers); nothing waits for the MQTT side, and Kafka
        producers are never paused by MQTT subscribers.
        """
        mapping = self.toMqtt.get(topic)
        if mapping is None:
            return
        broker = self.node.broker
        for record in records:
            name = self._mqttTopic(mapping, record)
            if name is None:
                self.kafkaOnly += 1
                continue
            props = None
            if record.headers:
                props = {
                    "user_property": [
                        (k, (v or b"").decode("utf-8", "replace")) for k, v in record.headers
                    ]
                }
            message = Message(
                name,
                record.value or b"",
                1,
                False,
                record.timestamp / 1000,
                props,
                None,
                "kafka",
            )
            broker.publish(message).background()
