"""
The node-wide Kafka state shared by every Kafka listener of one broker:
topics, the group coordinator and the transaction coordinator.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.protocols.kafka import _errors as E
from robustmq.protocols.kafka._groups import GroupCoordinator
from robustmq.protocols.kafka._topics import Partition, TopicManager

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

__all__ = ["KafkaNode", "TransactionCoordinator", "nodeFor"]


class _Txn:
    __slots__ = ("txnId", "pid", "epoch", "partitions", "groups", "offsets", "timeoutMs")

    def __init__(self, txnId: str, pid: int, timeoutMs: int) -> None:
        self.txnId = txnId
        self.pid = pid
        self.epoch = 0
        self.timeoutMs = timeoutMs
        self.partitions: dict[str, Partition] = {}
        self.groups: set[str] = set()
        #: group -> [(shard, offset, metadata)] to commit with the transaction
        self.offsets: dict[str, list[tuple[str, int, bytes]]] = {}


class TransactionCoordinator:
    """Transactional ids, producer epochs and open transactions (KIP-98), in memory."""

    log = Logger()

    def __init__(self, node: KafkaNode) -> None:
        self.node = node
        self.txns: dict[str, _Txn] = {}
        self.lastGroups: set[str] = set()

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
            return E.NONE, txn.pid, 0
        # A new session of the same transactional id fences the old one and
        # aborts whatever it left open.
        await self._finish(txn, commit=False)
        txn.epoch += 1
        if txn.epoch > 32767:
            txn.pid = await topics.allocateProducerId()
            txn.epoch = 0
        txn.timeoutMs = timeoutMs
        return E.NONE, txn.pid, txn.epoch

    def _check(self, txnId: str | None, pid: int, epoch: int) -> tuple[int, _Txn | None]:
        txn = self.txns.get(txnId) if txnId is not None else None
        if txn is None or txn.pid != pid:
            return E.INVALID_PRODUCER_ID_MAPPING, None
        if epoch != txn.epoch:
            return E.PRODUCER_FENCED if epoch < txn.epoch else E.INVALID_PRODUCER_EPOCH, None
        return E.NONE, txn

    def addPartition(self, txnId: str, pid: int, epoch: int, part: Partition) -> int:
        code, txn = self._check(txnId, pid, epoch)
        if txn is not None:
            txn.partitions[part.shard] = part
        return code

    def partitionInTxn(self, txnId: str | None, pid: int, epoch: int, shard: str) -> bool:
        """May this transactional batch be written to C{shard}?"""
        code, txn = self._check(txnId, pid, epoch)
        return txn is not None and shard in txn.partitions

    def addGroup(self, txnId: str, pid: int, epoch: int, group: str) -> int:
        code, txn = self._check(txnId, pid, epoch)
        if txn is not None:
            txn.groups.add(group)
        return code

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


class KafkaNode:
    """Everything the Kafka listeners of one broker share."""

    log = Logger()

    def __init__(self, broker: Broker, reactor: Any) -> None:
        self.broker = broker
        self.settings = broker.settings.kafka
        self.reactor = reactor
        self.auth = broker.auth
        if broker.store is None:
            raise RuntimeError("the Kafka protocol needs a shard store ([storage])")
        self.topics = TopicManager(broker.store, self.settings)
        self.groups = GroupCoordinator(self.settings, reactor)
        self.txns = TransactionCoordinator(self)
        self.saslRequired = self.settings.sasl_required

    @property
    def knownGroups(self) -> set[str]:
        """Groups with committed offsets, including those from before a restart."""
        return self.topics.knownGroups

    def topicDefaults(self) -> dict[str, str]:
        """Topic configs as DescribeConfigs reports them when not set on the topic."""
        st = self.broker.settings.storage
        return {
            "retention.ms": str(st.retention_ms or -1),
            "retention.bytes": str(st.retention_bytes or -1),
            "cleanup.policy": "delete",
            "max.message.bytes": str(self.settings.max_request_size),
            "message.timestamp.type": "CreateTime",
            "compression.type": "producer",
        }

    def brokerConfigs(self) -> dict[str, str]:
        """Broker configs reported by DescribeConfigs (read-only)."""
        s = self.settings
        return {
            "broker.id": str(s.broker_id),
            "auto.create.topics.enable": str(s.auto_create_topics).lower(),
            "num.partitions": str(s.default_partitions),
            "socket.request.max.bytes": str(s.max_request_size),
            "group.min.session.timeout.ms": str(s.group_min_session_timeout_ms),
            "group.max.session.timeout.ms": str(s.group_max_session_timeout_ms),
            "group.initial.rebalance.delay.ms": str(s.group_initial_rebalance_delay_ms),
            "transaction.max.timeout.ms": str(s.transaction_max_timeout_ms),
        }


_NODES: weakref.WeakKeyDictionary[Any, KafkaNode] = weakref.WeakKeyDictionary()


def nodeFor(broker: Broker, reactor: Any) -> KafkaNode:
    """The one L{KafkaNode} of C{broker} (created on first use)."""
    node = _NODES.get(broker)
    if node is None:
        node = _NODES[broker] = KafkaNode(broker, reactor)
    return node
