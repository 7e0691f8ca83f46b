"""The subscription router: topic filter → subscribers, with a bounded match cache."""

from __future__ import annotations

from typing import Any, Protocol

from robustmq.core.topics import TopicTrie


class Subscriber(Protocol):
    """What the router delivers to (a session)."""

    def deliver(self, message: Any, qos: int) -> None: ...


class Router:
    """Matches published topics to subscribers.

    One subscriber that matches through several filters receives one copy at
    the highest granted QoS (MQTT-3.3.5-1).  Match results are cached per
    topic; the cache holds at most C{cacheSize} topics (when full it is
    cleared, not grown) and is dropped whenever subscriptions change.
    """

    def __init__(self, cacheSize: int = 10_000) -> None:
        self._trie: TopicTrie[Any, int] = TopicTrie()
        self._cache: dict[str, tuple[tuple[Any, int], ...]] = {}
        self._cacheSize = cacheSize

    def __len__(self) -> int:
        return len(self._trie)

    def subscribe(self, topicFilter: str, subscriber: Subscriber, qos: int) -> bool:
        """Add or replace a subscription; True if it is new."""
        self._cache.clear()
        return self._trie.add(topicFilter, subscriber, qos)

    def unsubscribe(self, topicFilter: str, subscriber: Subscriber) -> bool:
        """Remove a subscription; True if it existed."""
        self._cache.clear()
        return self._trie.remove(topicFilter, subscriber)

    def match(self, topic: str) -> tuple[tuple[Any, int], ...]:
        """The (subscriber, granted QoS) pairs for C{topic}, one per subscriber."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        best: dict[Any, int] = {}
        for subscriber, qos in self._trie.match(topic):
            if best.get(subscriber, -1) < qos:
                best[subscriber] = qos
        result = tuple(best.items())
        if self._cacheSize:
            if len(self._cache) >= self._cacheSize:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def subscriptions(self) -> list[tuple[str, Any, int]]:
        """Every (filter, subscriber, qos), for listings."""
        return list(self._trie.filters())
