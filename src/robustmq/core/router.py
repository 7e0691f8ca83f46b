"""The subscription router: topic filter → subscribers, with a bounded match cache."""

from __future__ import annotations

from typing import Any, Protocol

from robustmq.core.subscription import SubscriptionOptions, merge
from robustmq.core.topics import TopicTrie


class Subscriber(Protocol):
    """What the router delivers to: a session, or a shared-subscription group."""

    @property
    def clientId(self) -> str | None: ...

    def deliver(self, message: Any, qos: int, sub: Any, outcome: Any) -> None: ...


class Router:
    """Matches published topics to subscribers.

    One subscriber that matches through several filters receives one copy at
    the highest granted QoS (MQTT-3.3.5-1), carrying every Subscription
    Identifier.  Match results are cached per topic; the cache holds at most
    C{cacheSize} topics (when full it is cleared, not grown) and is dropped
    whenever subscriptions change.
    """

    def __init__(self, cacheSize: int = 10_000) -> None:
        self._trie: TopicTrie[Any, SubscriptionOptions] = TopicTrie()
        self._cache: dict[str, tuple[tuple[Any, SubscriptionOptions], ...]] = {}
        self._cacheSize = cacheSize

    def __len__(self) -> int:
        return len(self._trie)

    def subscribe(
        self, topicFilter: str, subscriber: Subscriber, options: SubscriptionOptions
    ) -> bool:
        """Add or replace a subscription; True if it is new."""
        self._cache.clear()
        return self._trie.add(topicFilter, subscriber, options)

    def unsubscribe(self, topicFilter: str, subscriber: Subscriber) -> bool:
        """Remove a subscription; True if it existed."""
        self._cache.clear()
        return self._trie.remove(topicFilter, subscriber)

    def match(self, topic: str) -> tuple[tuple[Any, SubscriptionOptions], ...]:
        """The (subscriber, options) pairs for C{topic}, one per subscriber."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        found: dict[Any, list[SubscriptionOptions]] = {}
        for subscriber, options in self._trie.match(topic):
            found.setdefault(subscriber, []).append(options)
        result = tuple((subscriber, merge(opts)) for subscriber, opts in found.items())
        if self._cacheSize:
            if len(self._cache) >= self._cacheSize:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def subscriptions(self) -> list[tuple[str, Any, SubscriptionOptions]]:
        """Every (filter, subscriber, options), for listings."""
        return list(self._trie.filters())
