"""
The node-wide Kafka state shared by every Kafka listener of one broker:
topics, the group coordinator and the transaction coordinator.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from robustmq.protocols.kafka import _describe
from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._buffers import RequestMemory
from robustmq.protocols.kafka._configs import ConfigStore
from robustmq.protocols.kafka._consumergroups import ConsumerGroupCoordinator
from robustmq.protocols.kafka._fetchsessions import FetchSessionCache
from robustmq.protocols.kafka._groups import GroupCoordinator
from robustmq.protocols.kafka._mappings import KafkaMappings
from robustmq.protocols.kafka._sharegroups import ShareGroupCoordinator
from robustmq.protocols.kafka._topics import (
    GROUPS_SHARD,
    TXN_SHARD,
    Partition,
    TopicManager,
    splitShard,
)

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

__all__ = ["KafkaNode", "TransactionCoordinator"]


class _Txn:
    __slots__ = ("txnId", "pid", "epoch", "partitions", "groups", "offsets", "timeoutMs", "started")

    def __init__(self, txnId: str, pid: int, timeoutMs: int) -> None:
        self.txnId = txnId
        self.pid = pid
        self.epoch = 0
        self.timeoutMs = timeoutMs
        #: reactor time when the open transaction added its first partition or group
        self.started: float | None = None
        self.partitions: dict[str, Partition] = {}
        self.groups: set[str] = set()
        #: group -> [(shard, offset, metadata)] to commit with the transaction
        self.offsets: dict[str, list[tuple[str, int, bytes]]] = {}

    def dump(self) -> bytes:
        """The state kept in C{kafka-meta/transactions} (open partitions with their first offsets)."""
        return json.dumps(
            {
                "pid": self.pid,
                "epoch": self.epoch,
                "timeout": self.timeoutMs,
                "partitions": {s: p.ongoing.get(self.pid, -1) for s, p in self.partitions.items()},
                "groups": sorted(self.groups),
                "started": self.started,
                "offsets": {
                    g: [[s, o, base64.b64encode(m).decode()] for s, o, m in offs]
                    for g, offs in self.offsets.items()
                },
            }
        ).encode()


class TransactionCoordinator:
    """Transactional ids, producer epochs and open transactions (KIP-98).

    With a durable store each transactional id's state (producer id and
    epoch, the partitions of its open transaction with the offset where it
    began in each, its groups and pending offsets) is upserted into the
    compacted shard C{kafka-meta/transactions} whenever it changes, and
    restored by L{restore} after a restart, so an open transaction can still
    be committed or aborted and read_committed consumers stay held back.
    """

    log = Logger()

    def __init__(self, node: KafkaNode) -> None:
        self.node = node
        self.txns: dict[str, _Txn] = {}
        self.lastGroups: set[str] = set()
        self._restored = False
        node.topics.txnStarted = self._partitionStarted

    async def restore(self) -> None:
        """Take over the state L{TopicManager} read from the store (once)."""
        if self._restored:
            return
        self._restored = True
        topics = self.node.topics
        for txnId, state in topics.loadedTxns.items():
            txn = _Txn(txnId, int(state["pid"]), int(state["timeout"]))
            txn.epoch = int(state["epoch"])
            for shard, first in state["partitions"].items():
                where = splitShard(shard)
                part = await topics.partition(*where) if where is not None else None
                if part is None:
                    continue
                txn.partitions[shard] = part
                if first >= 0:
                    part.ongoing[txn.pid] = int(first)
            txn.groups = set(state["groups"])
            if txn.partitions or txn.groups:
                # the clock of the previous run is gone: the timeout restarts now
                txn.started = self.node.reactor.seconds()
            txn.offsets = {
                g: [(s, int(o), base64.b64decode(m)) for s, o, m in offs]
                for g, offs in state["offsets"].items()
            }
            self.txns[txnId] = txn
        topics.loadedTxns = {}

    def save(self, txn: _Txn) -> defer.Deferred[Any] | None:
        """Persist C{txn} (durable stores only); returns the write's Deferred."""
        topics = self.node.topics
        if not topics.persist:
            return None
        return topics.store.upsert(TXN_SHARD, txn.txnId.encode(), txn.dump())

    def _partitionStarted(
        self, part: Partition, pid: int, first: int
    ) -> defer.Deferred[Any] | None:
        for txn in self.txns.values():
            if txn.pid == pid and part.shard in txn.partitions:
                return self.save(txn)
        return None

    async def initProducerId(self, txnId: str | None, timeoutMs: int) -> tuple[int, int, int]:
        """C{(error, producerId, epoch)} for InitProducerId."""
        topics = self.node.topics
        s = self.node.settings
        if txnId is None:
            return E.NONE, await topics.allocateProducerId(), 0
        if not 0 < timeoutMs <= s.transaction_max_timeout_ms:
            return E.INVALID_TRANSACTION_TIMEOUT, -1, -1
        txn = self.txns.get(txnId)
        if txn is None:
            if len(self.txns) >= s.max_transactions:
                return E.COORDINATOR_NOT_AVAILABLE, -1, -1
            txn = _Txn(txnId, await topics.allocateProducerId(), timeoutMs)
            self.txns[txnId] = txn
            await _wait(self.save(txn))
            return E.NONE, txn.pid, 0
        # A new session of the same transactional id fences the old one and
        # aborts whatever it left open.
        await self._finish(txn, commit=False)
        txn.epoch += 1
        if txn.epoch > 32767:
            txn.pid = await topics.allocateProducerId()
            txn.epoch = 0
        txn.timeoutMs = timeoutMs
        await _wait(self.save(txn))
        return E.NONE, txn.pid, txn.epoch

    def _check(self, txnId: str | None, pid: int, epoch: int) -> tuple[int, _Txn | None]:
        txn = self.txns.get(txnId) if txnId is not None else None
        if txn is None or txn.pid != pid:
            return E.INVALID_PRODUCER_ID_MAPPING, None
        if epoch != txn.epoch:
            return E.PRODUCER_FENCED if epoch < txn.epoch else E.INVALID_PRODUCER_EPOCH, None
        return E.NONE, txn

    def _begin(self, txn: _Txn) -> None:
        if txn.started is None:
            txn.started = self.node.reactor.seconds()

    def expire(self) -> defer.Deferred[None]:
        """Abort every transaction open longer than its timeout (Kafka's
        C{transaction.timeout.ms}); its epoch is bumped so the abandoned
        producer is fenced (its next request gets PRODUCER_FENCED)."""
        return defer.ensureDeferred(self._expire())

    async def _expire(self) -> None:
        now = self.node.reactor.seconds()
        for txn in list(self.txns.values()):
            if txn.started is None or now - txn.started < txn.timeoutMs / 1000:
                continue
            self.log.info(
                "transaction of {txnId} open for more than {ms} ms: aborting it",
                txnId=txn.txnId,
                ms=txn.timeoutMs,
            )
            txn.epoch += 1  # fence the producer that abandoned it (KIP-98)
            await self._finish(txn, commit=False)

    async def addPartition(self, txnId: str, pid: int, epoch: int, part: Partition) -> int:
        code, txn = self._check(txnId, pid, epoch)
        if txn is not None:
            self._begin(txn)
        if txn is not None and part.shard not in txn.partitions:
            txn.partitions[part.shard] = part
            await _wait(self.save(txn))
        return code

    def partitionInTxn(self, txnId: str | None, pid: int, epoch: int, shard: str) -> bool:
        """May this transactional batch be written to C{shard}?"""
        code, txn = self._check(txnId, pid, epoch)
        return txn is not None and shard in txn.partitions

    async def addGroup(self, txnId: str, pid: int, epoch: int, group: str) -> int:
        code, txn = self._check(txnId, pid, epoch)
        if txn is not None:
            self._begin(txn)
        if txn is not None and group not in txn.groups:
            txn.groups.add(group)
            await _wait(self.save(txn))
        return code

    async def offsetsAdded(self, txnId: str) -> None:
        """TxnOffsetCommit added pending offsets to C{txnId}'s transaction: persist them."""
        txn = self.txns.get(txnId)
        if txn is not None:
            await _wait(self.save(txn))

    def pendingOffsets(
        self, txnId: str, pid: int, epoch: int, group: str
    ) -> tuple[int, list[tuple[str, int, bytes]] | None]:
        code, txn = self._check(txnId, pid, epoch)
        if txn is None:
            return code, None
        if group not in txn.groups:
            return E.INVALID_TXN_STATE, None
        return E.NONE, txn.offsets.setdefault(group, [])

    async def endTxn(self, txnId: str, pid: int, epoch: int, commit: bool) -> int:
        code, txn = self._check(txnId, pid, epoch)
        if txn is None:
            return code
        await self._finish(txn, commit)
        return E.NONE

    async def _finish(self, txn: _Txn, commit: bool) -> None:
        topics = self.node.topics
        for part in txn.partitions.values():
            if topics.partitions.get(part.shard) is part:
                await topics.writeMarker(part, txn.pid, txn.epoch, commit)
        self.lastGroups = set()
        if commit:
            for group, offsets in txn.offsets.items():
                for shard, offset, meta in offsets:
                    await topics.store.commitOffset(group, shard, offset, meta)
                self.lastGroups.add(group)
        txn.partitions = {}
        txn.groups = set()
        txn.offsets = {}
        txn.started = None
        await _wait(self.save(txn))


async def _wait(d: defer.Deferred[Any] | None) -> None:
    if d is not None:
        await d


class KafkaNode(Service):
    """Everything the Kafka listeners of one broker share: topics, groups, transactions.

    The node's Kafka service (L{IProtocolPlugin.buildNodeService}): started
    after the broker and stopped after the last Kafka listener, so closing
    one listener never stops the group coordinator the others use.
    """

    log = Logger()
    name = "kafka"  # type: ignore[assignment]

    def __init__(self, broker: Broker, reactor: Any) -> None:
        self.broker = broker
        self.settings = broker.settings.kafka
        self.reactor = reactor
        self.auth = broker.auth
        if broker.store is None:
            raise RuntimeError("the Kafka protocol needs a shard store ([storage])")
        self.topics = TopicManager(broker.store, self.settings, broker.settings.storage)
        self.groups = GroupCoordinator(self.settings, reactor)
        self.txns = TransactionCoordinator(self)
        self.fetchSessions = FetchSessionCache(self.settings.max_fetch_sessions)
        self.consumerGroups = ConsumerGroupCoordinator(self)
        self.shareGroups = ShareGroupCoordinator(self)
        self.topics.topicDeleted = self._topicDeleted
        self.topics.topicsChanged = self.consumerGroups.topicsChanged
        self.saslRequired = self.settings.sasl_required
        #: bytes held for unanswered requests over every Kafka connection of the node
        self.memory = RequestMemory(self.settings.max_buffered_request_bytes)
        self._txnCheck = LoopingCall(self._checkTransactions)
        self._txnCheck.clock = reactor
        #: Kafka topics mapped to MQTT topic filters ([[mappings]], docs/topic-space.md)
        self.mappings = KafkaMappings(self, broker.settings.mappings)

    def startService(self) -> None:
        """Put the MQTT → Kafka mappings in the broker's router; start looking for
        abandoned transactions (transaction.timeout.ms, KIP-98)."""
        super().startService()
        self.mappings.start()
        if not self._txnCheck.running:
            self._txnCheck.start(self.settings.transaction_check_interval_ms / 1000, now=False)

    def _checkTransactions(self) -> defer.Deferred[None] | None:
        if not self.topics._loaded:
            return None
        return self.txns.expire().addErrback(
            lambda f: self.log.failure("aborting timed-out transactions", f)
        )

    def _topicDeleted(self, name: str) -> None:
        self.fetchSessions.forgetTopic(name)
        self.consumerGroups.topicsChanged()
        self.shareGroups.topicDeleted(name)

    def stopService(self) -> None:
        """The node is stopping: cancel the transaction check and group timers."""
        super().stopService()
        if self._txnCheck.running:
            self._txnCheck.stop()
        self.groups.stop()
        self.consumerGroups.stop()
        self.shareGroups.stop()
        self.mappings.stop()

    async def ready(self) -> None:
        """Returns once topics and the previous run's producer and share-group state are
        loaded."""
        await self.topics.ready()
        await self.txns.restore()
        await self.shareGroups.restore()

    @property
    def configs(self) -> ConfigStore:
        """Dynamic configs (AlterConfigs) of topics, the broker and groups."""
        return self.topics.configs

    def groupConfigsChanged(self, group: str) -> None:
        """A group's configs changed (share and KIP-848 groups read them when needed)."""

    @property
    def knownGroups(self) -> set[str]:
        """Groups with committed offsets, including those from before a restart."""
        return self.topics.knownGroups

    # -- operators' views (admin API, ctl, metrics: robustmq.protocols.kafka._describe) --

    async def describeTopics(self) -> list[dict[str, Any]]:
        """Every topic with partitions, log start/end offsets, sizes and configs."""
        await self.topics.ready()
        return await _describe.describeTopics(self)

    async def describeTopic(self, name: str) -> dict[str, Any] | None:
        """One topic as L{describeTopics} shows it, or None."""
        await self.topics.ready()
        return await _describe.describeTopic(self, name)

    async def describeGroups(self) -> list[dict[str, Any]]:
        """Every consumer group: state, protocol, members, committed offsets and lag."""
        await self.topics.ready()
        return await _describe.describeGroups(self)

    async def describeGroup(self, groupId: str) -> dict[str, Any] | None:
        """One group as L{describeGroups} shows it, or None."""
        await self.topics.ready()
        return await _describe.describeGroup(self, groupId)

    def metricRows(self, limit: int) -> dict[str, Any]:
        """Partition offsets and sizes and group lag for /metrics (at most C{limit} each)."""
        return _describe.metricRows(self, limit)

    async def deleteTopic(self, name: str) -> bool:
        """Delete a topic and its partitions (as DeleteTopics does); False if unknown."""
        await self.topics.ready()
        return await self.topics.deleteTopic(name) == E.NONE

    async def deleteGroup(self, groupId: str) -> str | None:
        """Forget a group and its name (as DeleteGroups does).

        Returns None when deleted, else why not: C{"unknown"} or C{"not empty"}
        (a group with members is deleted by stopping its consumers first).
        """
        await self.ready()
        share = await self.shareGroups.delete(groupId)
        if share is not None:
            return None if share == E.NONE else "not empty"
        if groupId not in self.groups.groups and groupId not in self.knownGroups:
            return "unknown"
        if self.groups.delete(groupId) != E.NONE:
            return "not empty"
        if groupId in self.knownGroups:
            self.knownGroups.discard(groupId)
            await self.topics.store.deleteKey(GROUPS_SHARD, groupId.encode())
        self.log.info("group {group} deleted through the admin API", group=groupId)
        return None
