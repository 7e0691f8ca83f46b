"""Shared subscriptions: each message goes to one member of a group."""

from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import implementer

from robustmq.core.subscription import SubscriptionOptions
from robustmq.interfaces import IDeliveryTarget

if TYPE_CHECKING:
    from robustmq.core.message import Message
    from robustmq.core.outcome import Outcome


class Session(Protocol):
    """What a group member is to the group: a delivery target that may be online."""

    connection: Any
    #: messages waiting to be written (falsy when none) and whether they block publishers
    queue: Any
    congested: bool

    def deliver(self, message: Message, qos: int, sub: Any, outcome: Outcome) -> None: ...


STRATEGIES = ("round_robin", "random", "sticky", "hash_clientid", "hash_topic")


@implementer(IDeliveryTarget)
class SharedGroup:
    """One C{$share/<name>/<filter>} group: the router delivers to it as to one subscriber.

    Members that can take a message at once (online, nothing queued) are
    preferred, then any online member; with none online, a persistent member's
    session queues the message.  Deliveries carry the group in their options
    so that a departing member's unacknowledged messages can be redelivered
    to the others (L{redeliver}).
    """

    __slots__ = ("name", "topicFilter", "strategy", "members", "_next", "_sticky", "clientId")

    def __init__(self, name: str, topicFilter: str, strategy: str = "round_robin") -> None:
        self.name = name
        self.topicFilter = topicFilter
        self.strategy = strategy
        self.members: dict[Session, SubscriptionOptions] = {}
        self._next = 0
        self._sticky: Session | None = None
        #: never equal to a publisher's client id (No Local does not apply to groups)
        self.clientId = None

    def __repr__(self) -> str:
        return f"<SharedGroup $share/{self.name}/{self.topicFilter} members={len(self.members)}>"

    def _choose(self, message: Message, exclude: Any = None) -> Session | None:
        members = [m for m in self.members if m is not exclude]
        if not members:
            return None
        online = [m for m in members if m.connection is not None]
        # Prefer members that can take a message now: a member whose queue is
        # backed up (its client reads slowly, or not at all) gets nothing more
        # while another can, so one stuck member does not take half the traffic.
        ready = [m for m in online if not m.queue and not m.congested]
        pool = ready or online or members
        strategy = self.strategy
        if strategy == "sticky":
            if self._sticky in pool:
                return self._sticky
            self._sticky = random.choice(pool)
            return self._sticky
        if strategy == "random":
            return random.choice(pool)
        if strategy == "hash_clientid":
            return pool[zlib.crc32((message.origin or "").encode()) % len(pool)]
        if strategy == "hash_topic":
            return pool[zlib.crc32(message.topic.encode()) % len(pool)]
        self._next += 1
        return pool[self._next % len(pool)]

    def deliver(
        self, message: Message, qos: int, sub: Any, outcome: Outcome, exclude: Any = None
    ) -> None:
        """Hand C{message} to one member at min(C{qos}, the member's granted QoS)."""
        member = self._choose(message, exclude)
        if member is None:
            return
        opts = self.members[member]
        member.deliver(message, qos if qos < opts.qos else opts.qos, opts, outcome)

    def redeliver(
        self, messages: list[tuple[Message, int]], departed: Session, outcome: Outcome
    ) -> None:
        """Give a departed member's undelivered messages to the rest of the group."""
        for message, qos in messages:
            self.deliver(message, qos, None, outcome, departed)

    def add(self, session: Session, options: SubscriptionOptions) -> None:
        """Join (or update) a member."""
        options.group = self
        self.members[session] = options

    def remove(self, session: Session) -> None:
        """Leave the group."""
        self.members.pop(session, None)
        if self._sticky is session:
            self._sticky = None
