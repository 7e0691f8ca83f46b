"""Subscription options, and how several matching subscriptions combine."""

from __future__ import annotations

from typing import Any

SHARE_PREFIX = "$share/"
QUEUE_PREFIX = "$queue/"
EXCLUSIVE_PREFIX = "$exclusive/"


class SubscriptionOptions:
    """What one subscription asked for (MQTT 5.0 section 3.8.3.1; 3.x uses only C{qos}).

    @ivar keepRetain: deliver with the RETAIN flag as published (Retain As
        Published, or a retained message sent because of a new subscription).
    @ivar identifiers: Subscription Identifiers to attach to deliveries.
    @ivar group: the shared-subscription group a delivery came through, if any.
    @ivar local: the options to use when the publisher is the subscriber itself
        (None when No Local forbids that delivery).
    """

    __slots__ = (
        "qos",
        "noLocal",
        "keepRetain",
        "retainHandling",
        "identifiers",
        "group",
        "local",
    )

    def __init__(
        self,
        qos: int = 0,
        noLocal: bool = False,
        keepRetain: bool = False,
        retainHandling: int = 0,
        identifiers: tuple[int, ...] = (),
        group: Any = None,
    ) -> None:
        self.qos = qos
        self.noLocal = noLocal
        self.keepRetain = keepRetain
        self.retainHandling = retainHandling
        self.identifiers = identifiers
        self.group = group
        self.local: SubscriptionOptions | None = None if noLocal else self

    @classmethod
    def fromByte(cls, options: int, identifier: int | None = None) -> SubscriptionOptions:
        """From the SUBSCRIBE options byte (3.x: the byte is the QoS)."""
        return cls(
            qos=options & 3,
            noLocal=bool(options & 4),
            keepRetain=bool(options & 8),
            retainHandling=(options >> 4) & 3,
            identifiers=(identifier,) if identifier else (),
        )

    def toDict(self) -> dict[str, Any]:
        """JSON-able form (admin API, persistence)."""
        return {
            "qos": self.qos,
            "no_local": self.noLocal,
            "retain_as_published": self.keepRetain,
            "retain_handling": self.retainHandling,
            "identifiers": list(self.identifiers),
        }

    def withRetainKept(self) -> SubscriptionOptions:
        """A copy that keeps RETAIN set (for retained messages sent on subscribe)."""
        copy = SubscriptionOptions(
            self.qos, self.noLocal, True, self.retainHandling, self.identifiers, self.group
        )
        copy.local = copy
        return copy

    def __repr__(self) -> str:
        return (
            f"SubscriptionOptions(qos={self.qos}, noLocal={self.noLocal}, "
            f"keepRetain={self.keepRetain}, ids={self.identifiers})"
        )


def merge(subscriptions: list[SubscriptionOptions]) -> SubscriptionOptions:
    """One delivery for several matching subscriptions of one client (MQTT-3.3.4-2/-3).

    The highest QoS wins, RETAIN is kept if any asks for it, and every
    Subscription Identifier is carried.  No Local is honoured per subscription
    through the C{local} variant.
    """
    if len(subscriptions) == 1:
        return subscriptions[0]
    merged = _combine(subscriptions)
    locals_ = [s for s in subscriptions if not s.noLocal]
    merged.noLocal = len(locals_) != len(subscriptions)
    merged.local = _combine(locals_) if locals_ else None
    if merged.local is not None:
        merged.local.local = merged.local
    return merged


def _combine(subscriptions: list[SubscriptionOptions]) -> SubscriptionOptions:
    ids: list[int] = []
    for s in subscriptions:
        ids.extend(s.identifiers)
    combined = SubscriptionOptions(
        qos=max(s.qos for s in subscriptions),
        keepRetain=any(s.keepRetain for s in subscriptions),
        identifiers=tuple(ids),
    )
    return combined


def parseFilter(topicFilter: str) -> tuple[str | None, str, bool]:
    """Split C{$share/group/filter}, C{$queue/filter} and C{$exclusive/filter}.

    @return: (share group or None, the real filter, exclusive?)
    @raise ValueError: a malformed shared subscription.
    """
    if topicFilter.startswith(SHARE_PREFIX):
        rest = topicFilter[len(SHARE_PREFIX) :]
        group, sep, real = rest.partition("/")
        if not sep or not group or not real or "+" in group or "#" in group:
            raise ValueError("malformed shared subscription: expected $share/<group>/<filter>")
        return group, real, False
    if topicFilter.startswith(QUEUE_PREFIX):
        real = topicFilter[len(QUEUE_PREFIX) :]
        if not real:
            raise ValueError("malformed queue subscription: expected $queue/<filter>")
        return "$queue", real, False
    if topicFilter.startswith(EXCLUSIVE_PREFIX):
        real = topicFilter[len(EXCLUSIVE_PREFIX) :]
        if not real:
            raise ValueError("malformed exclusive subscription: expected $exclusive/<filter>")
        return None, real, True
    return None, topicFilter, False
