"""Retained messages: the last retained message per topic, found by filter."""

from __future__ import annotations

from collections.abc import Iterator

from twisted.logger import Logger

from robustmq.core.message import Message
from robustmq.core.topics import TopicStore


class RetainedMessages:
    """The retained-message set.

    Bounds: at most C{maxMessages} topics keep a retained message; a retained
    publish to a new topic beyond that is routed normally but not retained
    (logged once per minute).  Payloads larger than C{maxPayload} are not
    retained either.  An empty payload clears the topic (MQTT-3.3.1-10).
    """

    log = Logger()

    def __init__(self, maxMessages: int = 1_000_000, maxPayload: int = 1 << 20) -> None:
        self._store: TopicStore[Message] = TopicStore()
        self._maxMessages = maxMessages
        self._maxPayload = maxPayload
        self.refused = 0

    def __len__(self) -> int:
        return len(self._store)

    def update(self, message: Message) -> bool:
        """Store or clear the retained message for C{message.topic}; True if the set changed."""
        topic = message.topic
        if not message.payload:
            return self._store.delete(topic)
        if len(message.payload) > self._maxPayload or (
            topic not in self._store and len(self._store) >= self._maxMessages
        ):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                self.log.warn(
                    "retained message on {topic} not kept: limit reached ({refused} refused so far)",
                    topic=topic,
                    refused=self.refused,
                )
            return False
        self._store.set(topic, message)
        return True

    def get(self, topic: str) -> Message | None:
        """The retained message on exactly C{topic}."""
        return self._store.get(topic)

    def delete(self, topic: str) -> bool:
        """Remove the retained message on C{topic}."""
        return self._store.delete(topic)

    def match(self, topicFilter: str) -> list[Message]:
        """Retained messages whose topics C{topicFilter} matches."""
        return [m for _, m in self._store.match(topicFilter)]

    def __iter__(self) -> Iterator[Message]:
        return (m for _, m in self._store.items())
