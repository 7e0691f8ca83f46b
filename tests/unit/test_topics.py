"""Topic validation, the subscription trie and the retained-topic store."""

from __future__ import annotations

import pytest

from robustmq.core.topics import (
    InvalidTopic,
    TopicStore,
    TopicTrie,
    topicMatches,
    validateTopicFilter,
    validateTopicName,
)

MATCH_CASES = [
    ("a/b", "a/b", True),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),  # MQTT-4.7.1-2: '#' includes the parent level
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("+/+", "a/b", True),
    ("+", "/", False),
    ("+/+", "/", True),
    ("/+", "/a", True),
    ("a/+/c", "a//c", True),
    ("#", "$SYS/x", False),  # MQTT-4.7.2-1
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/+", "$SYS/x", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
]


@pytest.mark.parametrize("topicFilter, topic, expected", MATCH_CASES)
def test_trieMatchesLikeSpec(topicFilter, topic, expected):
    trie: TopicTrie[str, int] = TopicTrie()
    trie.add(topicFilter, "s", 1)
    assert bool(list(trie.match(topic))) is expected
    assert topicMatches(topicFilter, topic) is expected


@pytest.mark.parametrize("topicFilter, topic, expected", MATCH_CASES)
def test_storeMatchesLikeSpec(topicFilter, topic, expected):
    store: TopicStore[int] = TopicStore()
    store.set(topic, 1)
    assert bool(list(store.match(topicFilter))) is expected


def test_trieRemovePrunes():
    trie: TopicTrie[str, int] = TopicTrie()
    trie.add("a/b/c", "s1", 0)
    trie.add("a/b/c", "s2", 1)
    trie.add("a/#", "s1", 2)
    assert len(trie) == 3
    assert trie.remove("a/b/c", "s1")
    assert not trie.remove("a/b/c", "s1")
    assert sorted(trie.match("a/b/c")) == [("s1", 2), ("s2", 1)]
    trie.remove("a/b/c", "s2")
    trie.remove("a/#", "s1")
    assert len(trie) == 0
    assert trie._root.children == {}


def test_trieCostIgnoresUnrelatedSubscriptions():
    """Matching visits only the branches that the topic's levels select."""
    trie: TopicTrie[int, int] = TopicTrie()
    for i in range(20000):
        trie.add(f"dev/{i}/state", i, 0)
    trie.add("dev/42/#", -1, 1)
    assert sorted(trie.match("dev/42/state")) == [(-1, 1), (42, 0)]
    # The match walks at most depth x (exact, +, #) nodes regardless of the 20,000 siblings.
    visited = _countVisited(trie, "dev/42/state")
    assert visited < 10


def _countVisited(trie, topic):
    count = 0
    levels = topic.split("/")
    stack = [(trie._root, 0)]
    while stack:
        node, i = stack.pop()
        count += 1
        if i == len(levels):
            continue
        for key in (levels[i], "+"):
            child = node.children.get(key)
            if child is not None:
                stack.append((child, i + 1))
    return count


def test_storeDeleteAndFilters():
    store: TopicStore[str] = TopicStore()
    for t in ["a", "a/b", "a/b/c", "x/y", "$SYS/up"]:
        store.set(t, t)
    assert sorted(t for t, _ in store.match("a/#")) == ["a", "a/b", "a/b/c"]
    assert sorted(t for t, _ in store.match("#")) == ["a", "a/b", "a/b/c", "x/y"]
    assert store.delete("a/b")
    assert not store.delete("a/b")
    assert sorted(t for t, _ in store.match("a/#")) == ["a", "a/b/c"]
    assert len(store) == 4


@pytest.mark.parametrize("name", ["a/+", "#", "", "a\x00b"])
def test_invalidTopicNames(name):
    with pytest.raises(InvalidTopic):
        validateTopicName(name)


@pytest.mark.parametrize("f", ["a/#/b", "a#", "a/b+", "+a", "", "a\x00"])
def test_invalidFilters(f):
    with pytest.raises(InvalidTopic):
        validateTopicFilter(f)


def test_levelLimits():
    validateTopicFilter("a/b/c", maxLevels=3)
    with pytest.raises(InvalidTopic):
        validateTopicFilter("a/b/c/d", maxLevels=3)
    with pytest.raises(InvalidTopic):
        validateTopicName("a/b/c/d", maxLevels=3)


def _amqpMatches(pattern: str, key: str) -> bool:
    trie: TopicTrie[str, None] = TopicTrie(".", "*", "#", dollarRule=False)
    trie.add(pattern, "q", None)
    return any(k == "q" for k, _ in trie.match(key))


def test_amqpTopicExchangeSemantics():
    """The trie in AMQP form: '.' words, '*' one word, '#' zero or more words anywhere."""
    assert _amqpMatches("a.*.c", "a.b.c") and not _amqpMatches("a.*.c", "a.c")
    assert _amqpMatches("a.#", "a") and _amqpMatches("a.#", "a.b.c")
    assert _amqpMatches("#", "") and _amqpMatches("#", "$SYS.x")
    assert _amqpMatches("#.c", "a.b.c") and _amqpMatches("#.c", "c")
    assert _amqpMatches("a.#.c", "a.c") and _amqpMatches("a.#.c", "a.b.d.c")
    assert not _amqpMatches("a.#.c", "a.b.d") and not _amqpMatches("a.#.c", "b.c")
    assert _amqpMatches("#.b.#", "a.b.c") and _amqpMatches("#.b.#", "b")
    assert not _amqpMatches("a.+", "a.b")  # '+' is a plain word in AMQP


def test_innerMultiLevelWildcardInMqttTrie():
    """An inner '#' (an AMQP binding on the MQTT topic exchange) in the MQTT trie."""
    trie: TopicTrie[str, int] = TopicTrie()
    trie.add("a/#/c", "x", 1)
    trie.add("a/#", "y", 2)
    assert {k for k, _ in trie.match("a/b/c")} == {"x", "y"}
    assert {k for k, _ in trie.match("a/c")} == {"x", "y"}
    assert {k for k, _ in trie.match("a/b")} == {"y"}
    trie.add("#/c", "z", 3)
    assert "z" not in {k for k, _ in trie.match("$SYS/c")}  # MQTT-4.7.2-1 still holds
    assert trie.remove("a/#/c", "x") and {k for k, _ in trie.match("a/b/c")} == {"y", "z"}
