"""Topic names, topic filters and the subscription trie.

Matching walks one trie level per topic level, so its cost depends on the
topic's depth and the wildcards present, not on how many unrelated
subscriptions exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from robustmq.topicrules import InvalidTopic, validateTopicFilter, validateTopicName

__all__ = [
    "InvalidTopic",
    "TopicStore",
    "TopicTrie",
    "topicMatches",
    "validateTopicFilter",
    "validateTopicName",
]

K = TypeVar("K")
V = TypeVar("V")


def topicMatches(topicFilter: str, topic: str) -> bool:
    """Does C{topicFilter} match the topic name C{topic}? (One-off check, no trie.)"""
    if topic.startswith("$") and topicFilter[:1] in ("+", "#"):
        return False
    f = topicFilter.split("/")
    t = topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


class _Node:
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.values: dict[Any, Any] = {}


class TopicTrie(Generic[K, V]):
    """Topic filters → {key: value}, matched against topic names.

    Used for subscriptions (key: a session or another delivery target,
    value: its options).  By default it speaks MQTT: levels separated by
    C{/}, C{+} one level, C{#} this level and every one below, and
    first-level wildcards do not match C{$}-topics (MQTT-4.7.2-1).  AMQP
    topic exchanges use the same trie with C{separator="."}, C{single="*"}
    and C{dollarRule=False}.

    A multi-level wildcard may also stand I{inside} a filter (C{a/#/c}, an
    AMQP binding key C{a.#.c}): it then matches zero or more levels before
    the rest of the filter.  MQTT clients cannot subscribe such filters
    (L{validateTopicFilter}); AMQP bindings on the MQTT topic exchange can,
    and costs grow only with such filters present.
    """

    def __init__(
        self,
        separator: str = "/",
        single: str = "+",
        multi: str = "#",
        dollarRule: bool = True,
    ) -> None:
        self._root = _Node()
        self._count = 0
        self.separator = separator
        self._single = single
        self._multi = multi
        self._dollarRule = dollarRule

    def __len__(self) -> int:
        return self._count

    def add(self, topicFilter: str, key: K, value: V) -> bool:
        """Set C{key}'s value under C{topicFilter}; True if the key was new there."""
        node = self._root
        for level in topicFilter.split(self.separator):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        isNew = key not in node.values
        node.values[key] = value
        if isNew:
            self._count += 1
        return isNew

    def remove(self, topicFilter: str, key: K) -> bool:
        """Remove C{key} from C{topicFilter}; prunes empty branches. True if it was there."""
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topicFilter.split(self.separator):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if key not in node.values:
            return False
        del node.values[key]
        self._count -= 1
        while path and not node.values and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def match(self, topic: str) -> Iterator[tuple[K, V]]:
        """Yield every (key, value) whose filter matches C{topic}.

        A key appears once per matching filter (callers merge), and may
        appear more than once for a filter with an inner multi-level
        wildcard.
        """
        levels = topic.split(self.separator)
        dollar = self._dollarRule and topic.startswith("$")
        single = self._single
        multi = self._multi
        n = len(levels)
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            # MQTT-4.7.2-1: wildcards at the first level do not match $-topics.
            wild = not (dollar and i == 0)
            if wild:
                hashNode = children.get(multi)
                if hashNode is not None:
                    yield from hashNode.values.items()
                    if hashNode.children:
                        # An inner '#': it takes levels i..j-1, the rest matches from j.
                        for j in range(i, n + 1):
                            stack.append((hashNode, j))
            if i == n:
                yield from node.values.items()
                continue
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
            if wild:
                plus = children.get(single)
                if plus is not None:
                    stack.append((plus, i + 1))

    def filters(self) -> Iterator[tuple[str, K, V]]:
        """Yield (filter, key, value) for every entry (for listings)."""
        stack: list[tuple[_Node, list[str]]] = [(self._root, [])]
        while stack:
            node, path = stack.pop()
            for key, value in node.values.items():
                yield self.separator.join(path), key, value
            for level, child in node.children.items():
                stack.append((child, [*path, level]))


class TopicStore(Generic[V]):
    """Topic names → value, searchable by topic filter (the retained-message index)."""

    def __init__(self) -> None:
        self._root = _Node()
        self._items: dict[str, V] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, topic: str) -> bool:
        return topic in self._items

    def get(self, topic: str) -> V | None:
        """The value stored under exactly C{topic}."""
        return self._items.get(topic)

    def set(self, topic: str, value: V) -> None:
        """Store C{value} under C{topic}."""
        if topic not in self._items:
            node = self._root
            for level in topic.split("/"):
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
            node.values[topic] = True
        self._items[topic] = value

    def delete(self, topic: str) -> bool:
        """Remove C{topic}; True if it was present."""
        if self._items.pop(topic, None) is None:
            return False
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.values.pop(topic, None)
        while path and not node.values and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def items(self) -> Iterator[tuple[str, V]]:
        """Every (topic, value)."""
        return iter(list(self._items.items()))

    def match(self, topicFilter: str) -> Iterator[tuple[str, V]]:
        """Yield (topic, value) for stored topics that C{topicFilter} matches."""
        levels = topicFilter.split("/")
        n = len(levels)
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                for topic in node.values:
                    yield topic, self._items[topic]
                continue
            level = levels[i]
            if level == "#":
                # '#' matches this level (the parent) and everything below.
                if i > 0:
                    sub = [node]
                else:
                    sub = [c for name, c in node.children.items() if not name.startswith("$")]
                while sub:
                    cur = sub.pop()
                    for topic in cur.values:
                        yield topic, self._items[topic]
                    sub.extend(cur.children.values())
            elif level == "+":
                for name, child in node.children.items():
                    if i == 0 and name.startswith("$"):
                        continue
                    stack.append((child, i + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, i + 1))
