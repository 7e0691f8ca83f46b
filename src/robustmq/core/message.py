"""The broker's protocol-neutral message."""

from __future__ import annotations

import time
from typing import Any


class Message:
    """One published application message as the router carries it.

    The neutral form every protocol converts to and from (docs/topic-space.md):
    a topic name in the MQTT topic space, the payload, a QoS (0-2), the
    retain flag, the publish time, and properties in MQTT 5 form
    (C{content_type}, C{correlation_data}, C{response_topic},
    C{message_expiry_interval}, C{user_property} pairs, ...).

    C{encodings} is a small cache that protocols use to encode a message once
    and write the same bytes to every subscriber (keyed by a protocol-chosen
    key); the core never looks inside it.
    """

    __slots__ = (
        "topic",
        "payload",
        "qos",
        "retain",
        "timestamp",
        "properties",
        "origin",
        "encodings",
        "expiresAt",
        "source",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        timestamp: float | None = None,
        properties: dict[str, Any] | None = None,
        origin: str | None = None,
        source: str | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.timestamp = time.time() if timestamp is None else timestamp
        self.properties = properties
        #: client id of the publisher, when there is one
        self.origin = origin
        #: the protocol that published it ("mqtt", "amqp", "kafka"; None: the broker itself);
        #: a message is never handed back into the protocol it came from (topic-space mappings)
        self.source = source
        self.encodings: dict[Any, bytes] | None = None
        #: absolute time after which it is not delivered (MQTT 5 Message Expiry Interval)
        self.expiresAt: float | None = None
        if properties:
            interval = properties.get("message_expiry_interval")
            if interval is not None:
                self.expiresAt = self.timestamp + interval

    def copy(self, **changes: Any) -> Message:
        """A copy with some fields changed (the encoding cache is not carried over)."""
        m = Message(
            self.topic,
            self.payload,
            self.qos,
            self.retain,
            self.timestamp,
            self.properties,
            self.origin,
            self.source,
        )
        m.expiresAt = self.expiresAt
        for k, v in changes.items():
            setattr(m, k, v)
        return m

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, "
            f"qos={self.qos}, retain={self.retain})"
        )
