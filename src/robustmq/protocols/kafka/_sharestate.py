"""
Share-group state that outlives the process (KIP-932's share-group state).

Kafka's share coordinator keeps, for each share partition (one group's view of
one topic partition), the share-partition start offset (SPSO) and the state
of the records in flight above it -- runs of offsets with their delivery state
and delivery count -- in its share-group state topic.  Here the same state
lives in the compacted shard C{kafka-meta/share-groups} of the node's store,
when the store outlives the process (segment, s3):

- C{g NUL <group>} -> C{{}}: the share group exists (an empty share group is
  kept until DeleteGroups, as Kafka keeps it);
- C{p NUL <group> NUL <topic> NUL <partition>} -> JSON C{{"id": topic id,
  "start": SPSO, "next": end of the in-flight window, "runs": [[first, last,
  state, delivery count], ...]}}, one run per stretch of offsets in the same
  state with the same delivery count.

The share-group coordinator writes a share partition when it is created, when
records are acquired and when they are acknowledged, and waits for the write
before it answers, so after a restart an acknowledged record is not delivered
again and an acquired one is available again with its delivery count.  A
record's state is the one L{robustmq.protocols.kafka._sharegroups} uses
(available, acquired, acknowledged, archived); an acquired record read back is
released as a lock that ran out would release it.

Bound: one key per share group and one per share partition; a share
partition's value holds at most one run per record between the SPSO and the
end of its in-flight window, which the coordinator keeps within
C{share_partition_max_record_locks} records (plus the rest of the last batch
it acquired).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

if TYPE_CHECKING:
    from robustmq.interfaces import IShardStore

__all__ = ["SHARE_SHARD", "ShareStateStore", "StoredPartition", "dumpPartition"]

#: compacted: share groups and their share partitions' state (durable stores only)
SHARE_SHARD = "kafka-meta/share-groups"


def _groupKey(groupId: str) -> bytes:
    return b"g\0" + groupId.encode()


def _partitionKey(groupId: str, topic: str, index: int) -> bytes:
    return "\0".join(("p", groupId, topic, str(index))).encode()


def dumpPartition(start: int, next_: int, records: dict[int, Any], topicId: uuid.UUID) -> bytes:
    """The stored form of one share partition: SPSO, window end and runs of
    C{(state, delivery count)} over the records in C{records} (offset -> an object
    with C{state} and C{count})."""
    runs: list[list[int]] = []
    for o in sorted(records):
        r = records[o]
        last = runs[-1] if runs else None
        if last is not None and last[1] == o - 1 and last[2] == r.state and last[3] == r.count:
            last[1] = o
        else:
            runs.append([o, o, r.state, r.count])
    value = {"id": str(topicId), "start": start, "next": next_, "runs": runs}
    return json.dumps(value, separators=(",", ":")).encode()


class StoredPartition:
    """One share partition as read back from the store."""

    __slots__ = ("groupId", "topic", "index", "topicId", "start", "next", "runs")

    def __init__(self, key: bytes, value: bytes) -> None:
        kind, groupId, topic, index = key.decode().split("\0")
        raw = json.loads(value)
        if kind != "p":
            raise ValueError(f"not a share partition key: {key!r}")
        self.groupId = groupId
        self.topic = topic
        self.index = int(index)
        self.topicId = uuid.UUID(raw["id"])
        self.start = int(raw["start"])
        self.next = int(raw["next"])
        #: (first, last, state, delivery count)
        self.runs = [(int(a), int(b), int(s), int(c)) for a, b, s, c in raw["runs"]]
        if self.start < 0 or self.next < self.start:
            raise ValueError(f"bad window {self.start}..{self.next}")


class ShareStateStore:
    """Reads and writes share-group state in L{SHARE_SHARD} (a no-op without a durable store)."""

    log = Logger()

    def __init__(self, store: IShardStore, durable: bool) -> None:
        self.store = store
        #: written only when the store outlives the process, like producer state
        self.enabled = durable

    async def load(self) -> tuple[list[str], list[StoredPartition]]:
        """Every share group and share partition of the previous run."""
        if not self.enabled:
            return [], []
        store = self.store
        if SHARE_SHARD not in await store.listShards():
            await store.createShard(SHARE_SHARD, {"compacted": True})
            return [], []
        groups: list[str] = []
        partitions: list[StoredPartition] = []
        for key in await store.keys(SHARE_SHARD):
            rec = await store.lookup(SHARE_SHARD, key)
            if rec is None:
                continue
            if key.startswith(b"g\0"):
                groups.append(key[2:].decode("utf-8", "replace"))
                continue
            try:
                partitions.append(StoredPartition(key, rec["value"]))
            except (ValueError, KeyError, TypeError) as e:
                self.log.warn(
                    "share-group state {key!r} unreadable ({error}): dropped",
                    key=key,
                    error=str(e),
                )
                self._ignore(store.deleteKey(SHARE_SHARD, key))
        return groups, partitions

    def saveGroup(self, groupId: str) -> defer.Deferred[Any] | None:
        """Remember that the share group exists."""
        if not self.enabled:
            return None
        return self.store.upsert(SHARE_SHARD, _groupKey(groupId), b"{}")

    def savePartition(
        self, groupId: str, topic: str, index: int, value: bytes
    ) -> defer.Deferred[Any] | None:
        """Write one share partition's state (from L{dumpPartition})."""
        if not self.enabled:
            return None
        return self.store.upsert(SHARE_SHARD, _partitionKey(groupId, topic, index), value)

    def forgetPartition(self, groupId: str, topic: str, index: int) -> defer.Deferred[Any] | None:
        """Delete one share partition's state."""
        if not self.enabled:
            return None
        return self.store.deleteKey(SHARE_SHARD, _partitionKey(groupId, topic, index))

    def forgetGroup(self, groupId: str) -> defer.Deferred[Any] | None:
        """Delete the share group's own key (its partitions are forgotten one by one)."""
        if not self.enabled:
            return None
        return self.store.deleteKey(SHARE_SHARD, _groupKey(groupId))

    def background(self, d: defer.Deferred[Any] | None, what: str) -> None:
        """Let a write run without waiting for it; a failure is logged."""
        if d is not None:
            d.addErrback(lambda f: self.log.failure("share-group state: {what}", f, what=what))

    def _ignore(self, d: defer.Deferred[Any]) -> None:
        self.background(d, "dropping an unreadable key")
