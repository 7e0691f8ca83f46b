"""Topic names, topic filters and the subscription trie.

Matching walks one trie level per topic level, so its cost depends on the
topic's depth and the wildcards present, not on how many unrelated
subscriptions exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class InvalidTopic(ValueError):
    """A topic name or filter that breaks the MQTT rules."""


def validateTopicName(topic: str, maxLevels: int = 0) -> None:
    """Check a topic name used for publishing (MQTT-4.7.3-1, MQTT-3.3.2-2)."""
    if not topic:
        raise InvalidTopic("empty topic name")
    if "+" in topic or "#" in topic:
        raise InvalidTopic("wildcard in a topic name")
    if "\x00" in topic:
        raise InvalidTopic("null character in a topic name")
    if maxLevels and topic.count("/") >= maxLevels:
        raise InvalidTopic(f"more than {maxLevels} topic levels")


def validateTopicFilter(topicFilter: str, maxLevels: int = 0) -> None:
    """Check a subscription filter (MQTT-4.7.1-2, MQTT-4.7.1-3)."""
    if not topicFilter:
        raise InvalidTopic("empty topic filter")
    if "\x00" in topicFilter:
        raise InvalidTopic("null character in a topic filter")
    levels = topicFilter.split("/")
    if maxLevels and len(levels) > maxLevels:
        raise InvalidTopic(f"more than {maxLevels} topic levels")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise InvalidTopic("'#' must be a whole last level")
        if "+" in level and level != "+":
            raise InvalidTopic("'+' must occupy a whole level")


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

    Used for subscriptions (key: a session, value: its options).
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topicFilter: str, key: K, value: V) -> bool:
        """Set C{key}'s value under C{topicFilter}; True if the key was new there."""
        node = self._root
        for level in topicFilter.split("/"):
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
        for level in topicFilter.split("/"):
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
        """Yield every (key, value) whose filter matches C{topic} (with repeats per filter)."""
        levels = topic.split("/")
        dollar = topic.startswith("$")
        n = len(levels)
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            # MQTT-4.7.2-1: wildcards at the first level do not match $-topics.
            wild = not (dollar and i == 0)
            if wild:
                hashNode = children.get("#")
                if hashNode is not None:
                    yield from hashNode.values.items()
            if i == n:
                yield from node.values.items()
                continue
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
            if wild:
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, i + 1))

    def filters(self) -> Iterator[tuple[str, K, V]]:
        """Yield (filter, key, value) for every entry (for listings)."""
        stack: list[tuple[_Node, list[str]]] = [(self._root, [])]
        while stack:
            node, path = stack.pop()
            for key, value in node.values.items():
                yield "/".join(path), key, value
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
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, i + 1))
