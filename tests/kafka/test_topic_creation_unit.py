"""A partition asked for while its topic's shards are still being created waits for them
(found by bench/topicspace.py: a mapped topic's second append raced its creation and died
with KeyError, so the MQTT publishers waiting for it were never acknowledged)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from robustmq.config import settingsFromMapping
from robustmq.protocols.kafka._topics import TopicManager
from robustmq.storage.memory import MemoryShardStore


class _SlowCreates:
    """A memory store whose createShard waits until the test releases it."""

    def __init__(self, store: MemoryShardStore) -> None:
        self.store = store
        self.held: list[tuple[defer.Deferred[Any], str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def createShard(self, shard: str, config: Any = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((d, shard, config))
        return d

    def release(self) -> None:
        while self.held:
            d, shard, config = self.held.pop(0)
            self.store.createShard(shard, config).chainDeferred(d)


class TopicCreationTests(TestCase):
    def test_partitionWaitsForTheTopicsShards(self) -> None:
        settings = settingsFromMapping({"kafka": {"default_partitions": 3}})
        memory = MemoryShardStore(settings.storage, clock=Clock())
        memory.open()
        store = _SlowCreates(memory)
        topics = TopicManager(store, settings.kafka, settings.storage)  # type: ignore[arg-type]
        created = defer.ensureDeferred(topics.createTopic("t", 3, {}))
        wanted = defer.ensureDeferred(topics.partition("t", 2))
        self.assertNoResult(wanted)  # the topic is known, its shards not yet
        second = defer.ensureDeferred(topics.createTopic("t", 3, {}))
        self.assertEqual(self.successResultOf(second)[0], 36)  # TOPIC_ALREADY_EXISTS
        for _ in range(3):
            store.release()
        self.assertEqual(self.successResultOf(created)[0], 0)
        part = self.successResultOf(wanted)
        self.assertEqual(part.shard, "kafka/t/2")
