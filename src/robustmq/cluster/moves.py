"""Sessions that moved between brokers a moment ago, and which broker delivers to them.

A hand-over moves a session from broker O to broker N at once, but the other
brokers learn from the placement center a little later that N now wants the
session's topics and O no longer does.  Meanwhile a publishing broker may
forward a message to O only, to N only, or to both.  So that every message
still reaches the session once:

- a forwarded message carries its I{targets}: the brokers that route it to
  their ordinary subscribers (the publishing broker and those it forwards to);
- a moved session has a I{trail}: the brokers that held it within the last
  C{window} seconds, oldest first, each until it drops out of the trail;
- for a message, the first broker of the trail among its targets answers for
  the session: if it holds the session it delivers; if the session left, it
  sends the message on to where the session went (a I{redirect}, to that
  session only).  Every other broker of the trail leaves the session alone;
- the old broker keeps its routes for the session's filters for half the
  window (L{ClusterNode}), so the route table never passes through a state
  with neither broker in it.

Within the window this holds whatever each broker's route table said.  Past
it the session is an ordinary one again: a publishing broker whose route
table lags the placement center by more than half the window may then miss
the session or reach it twice.  Both tables are bounded (C{limit} sessions
each); at the bound the oldest entry is forgotten early.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from robustmq.core.subscription import parseFilter
from robustmq.core.topics import TopicTrie

#: (broker, local time it drops out of the trail), oldest first
Trail = tuple[tuple[str, float], ...]


def routeKeys(filters: Iterable[str]) -> tuple[list[str], list[str]]:
    """The route keys of a session's subscriptions: (ordinary filters, C{$share/g/f} keys)."""
    normal: list[str] = []
    shared: list[str] = []
    for topicFilter in filters:
        group, real, _ = parseFilter(topicFilter)
        if group is None:
            normal.append(real)
        else:
            shared.append(f"$share/{group}/{real}")
    return list(dict.fromkeys(normal)), list(dict.fromkeys(shared))


def firstOf(trail: Trail, targets: Collection[str], now: float) -> str | None:
    """The first broker of C{trail}, still in it at C{now}, that is among C{targets}."""
    for node, until in trail:
        if until > now and node in targets:
            return node
    return None


@dataclass(slots=True)
class Departure:
    """A session that left this broker: where to, and what it was subscribed to."""

    clientId: str
    node: str
    trail: Trail
    filters: list[str]
    shared: list[str]
    until: float


class AllBut:
    """Every subscriber but one (to deliver a message to one session only)."""

    __slots__ = ("subscriber",)

    def __init__(self, subscriber: Any) -> None:
        self.subscriber = subscriber

    def __contains__(self, subscriber: Any) -> bool:
        return subscriber is not self.subscriber


class _AnsweredElsewhere:
    """The local subscribers that another broker of their trail answers for (for one message)."""

    __slots__ = ("moves", "targets", "now")

    def __init__(self, moves: Moves, targets: Collection[str], now: float) -> None:
        self.moves = moves
        self.targets = targets
        self.now = now

    def __contains__(self, subscriber: Any) -> bool:
        trail = self.moves.arrived.get(getattr(subscriber, "clientId", None))  # type: ignore[arg-type]
        if trail is None:
            return False
        first = firstOf(trail, self.targets, self.now)
        return first is not None and first != self.moves.nodeId


class Moves:
    """This broker's recent hand-overs: sessions that arrived and sessions that left."""

    def __init__(self, nodeId: str, window: float, limit: int, reactor: Any) -> None:
        self.nodeId = nodeId
        self.window = window
        self.limit = limit
        self.reactor = reactor
        #: client id -> the trail before this broker, of sessions held here
        self.arrived: dict[str, Trail] = {}
        #: client id -> where it went, of sessions that left
        self.departed: dict[str, Departure] = {}
        self._filters: TopicTrie[str, None] = TopicTrie()
        #: shared route key -> client ids that left with a membership in that group
        self._shared: dict[str, set[str]] = {}

    def __bool__(self) -> bool:
        return bool(self.arrived or self.departed)

    def depart(
        self, clientId: str, node: str, subscriptions: Iterable[str]
    ) -> list[tuple[str, float]]:
        """C{clientId}'s session leaves for C{node}; returns its trail for the new broker
        (broker, seconds left in the trail)."""
        now = self.reactor.seconds()
        prior = tuple((n, until) for n, until in self.arrived.pop(clientId, ()) if until > now)
        trail = (*prior, (self.nodeId, now + self.window))
        self._forgetDeparture(clientId)
        while len(self.departed) >= self.limit:
            self._forgetDeparture(next(iter(self.departed)))
        filters, shared = routeKeys(subscriptions)
        departure = Departure(clientId, node, trail, filters, shared, now + self.window)
        self.departed[clientId] = departure
        for real in filters:
            self._filters.add(real, clientId, None)
        for key in shared:
            self._shared.setdefault(key, set()).add(clientId)
        self.reactor.callLater(self.window, self._expireDeparture, departure)
        return [(n, until - now) for n, until in trail]

    def arrive(self, clientId: str, trail: Iterable[tuple[str, float]]) -> None:
        """C{clientId}'s session arrived here with C{trail} (as L{depart} returned it)."""
        now = self.reactor.seconds()
        self._forgetDeparture(clientId)
        entries = tuple((str(n), now + float(left)) for n, left in trail if float(left) > 0)
        self.arrived.pop(clientId, None)
        if not entries:
            return
        while len(self.arrived) >= self.limit:
            del self.arrived[next(iter(self.arrived))]
        self.arrived[clientId] = entries
        self.reactor.callLater(
            max(until for _, until in entries) - now, self._expireArrival, clientId, entries
        )

    def answeredElsewhere(self, targets: Collection[str]) -> _AnsweredElsewhere | None:
        """For one message with C{targets}: the local sessions to leave alone (or None)."""
        if not self.arrived:
            return None
        return _AnsweredElsewhere(self, targets, self.reactor.seconds())

    def redirects(self, topic: str, targets: Collection[str]) -> dict[str, list[str]]:
        """Sessions that left and that this broker answers for, for a message on C{topic}:
        their new broker -> client ids."""
        if not self.departed:
            return {}
        now = self.reactor.seconds()
        found: dict[str, list[str]] = {}
        seen: set[str] = set()
        for clientId, _ in self._filters.match(topic):
            if clientId in seen:
                continue
            seen.add(clientId)
            departure = self.departed[clientId]
            if departure.until > now and firstOf(departure.trail, targets, now) == self.nodeId:
                found.setdefault(departure.node, []).append(clientId)
        return found

    def sharedRedirect(self, key: str) -> str | None:
        """The broker a member of shared group C{key} left for (the group is gone here)."""
        now = self.reactor.seconds()
        for clientId in self._shared.get(key, ()):
            departure = self.departed[clientId]
            if departure.until > now:
                return departure.node
        return None

    def nextHop(self, clientId: str) -> str | None:
        """Where C{clientId}'s session went, if it left here within the window."""
        departure = self.departed.get(clientId)
        if departure is None or departure.until <= self.reactor.seconds():
            return None
        return departure.node

    def _expireDeparture(self, departure: Departure) -> None:
        if self.departed.get(departure.clientId) is departure:
            self._forgetDeparture(departure.clientId)

    def _expireArrival(self, clientId: str, entries: Trail) -> None:
        if self.arrived.get(clientId) is entries:
            del self.arrived[clientId]

    def _forgetDeparture(self, clientId: str) -> None:
        departure = self.departed.pop(clientId, None)
        if departure is None:
            return
        for real in departure.filters:
            self._filters.remove(real, clientId)
        for key in departure.shared:
            members = self._shared.get(key)
            if members is not None:
                members.discard(clientId)
                if not members:
                    del self._shared[key]
