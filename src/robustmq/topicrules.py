"""The MQTT rules for topic names and filters, shared by the core and the config checks.

The MQTT topic space is the broker's common one (docs/topic-space.md): these
rules decide what a topic name and a subscription filter may be, whichever
protocol names them.
"""

from __future__ import annotations

__all__ = ["InvalidTopic", "validateTopicFilter", "validateTopicName"]


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
