"""The cluster's subscription routes: which brokers want which topics.

A I{route key} is a topic filter that has subscribers on a node, or
C{$share/<group>/<filter>} for a shared-subscription group with members
there.  L{LocalRoutes} counts this node's keys and keeps the placement
center's route table in step (add when the first subscriber appears, remove
when the last goes).  L{RemoteRoutes} holds the other brokers' keys, as
pushed by the placement center, and answers "which nodes for this topic?".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from robustmq.core.subscription import parseFilter
from robustmq.core.topics import TopicTrie


class RemoteRoutes:
    """Route keys of the other brokers, matched against published topics.

    Match results are cached per topic (at most C{cacheSize} topics; the
    cache is cleared when full or when any route changes).
    """

    def __init__(self, selfId: str, cacheSize: int = 10_000) -> None:
        self.selfId = selfId
        self._normal: TopicTrie[str, None] = TopicTrie()
        self._shared: TopicTrie[tuple[str, str], None] = TopicTrie()
        self._nodes: dict[str, frozenset[str]] = {}
        self._cache: dict[str, tuple[frozenset[str], dict[str, set[str]]]] = {}
        self._cacheSize = cacheSize

    def __len__(self) -> int:
        return len(self._nodes)

    def set(self, key: str, nodeIds: Iterable[str]) -> None:
        """The nodes (other than this one) that want C{key} now."""
        nodes = frozenset(nodeIds) - {self.selfId}
        old = self._nodes.get(key, frozenset())
        if nodes == old:
            return
        self._cache.clear()
        try:
            group, real, _ = parseFilter(key)
        except ValueError:
            return
        for node in old - nodes:
            if group is None:
                self._normal.remove(real, node)
            else:
                self._shared.remove(real, (key, node))
        for node in nodes - old:
            if group is None:
                self._normal.add(real, node, None)
            else:
                self._shared.add(real, (key, node), None)
        if nodes:
            self._nodes[key] = nodes
        else:
            self._nodes.pop(key, None)

    def replace(self, entries: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Start over from a snapshot."""
        fresh = {key: frozenset(nodes) for key, nodes in entries}
        for key in list(self._nodes):
            if key not in fresh:
                self.set(key, ())
        for key, nodes in fresh.items():
            self.set(key, nodes)

    def dropNode(self, nodeId: str) -> None:
        """Forget every key of C{nodeId} (it died; the placement center removes them too)."""
        for key, nodes in list(self._nodes.items()):
            if nodeId in nodes:
                self.set(key, nodes - {nodeId})

    def match(self, topic: str) -> tuple[frozenset[str], dict[str, set[str]]]:
        """Nodes with ordinary subscribers for C{topic}, and shared keys → nodes with members."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        normal = frozenset(node for node, _ in self._normal.match(topic))
        shared: dict[str, set[str]] = {}
        for (key, node), _ in self._shared.match(topic):
            shared.setdefault(key, set()).add(node)
        result = (normal, shared)
        if self._cacheSize:
            if len(self._cache) >= self._cacheSize:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def items(self) -> list[tuple[str, frozenset[str]]]:
        """Every (key, nodes), for listings."""
        return sorted(self._nodes.items())


class LocalRoutes:
    """This node's route keys, counted, and mirrored into the placement center.

    One worker per key at a time brings the placement center's entry in step
    with the count (so a quick subscribe/unsubscribe/subscribe never leaves
    the wrong state behind).  A failed call is retried every second.
    """

    log = Logger()

    def __init__(self, placement: Any, reactor: Any, waitLimit: float) -> None:
        self.placement = placement
        self.reactor = reactor
        self.waitLimit = waitLimit
        self.counts: dict[str, int] = {}
        self.published: set[str] = set()
        self._busy: set[str] = set()
        self._waiters: dict[str, list[Deferred[None]]] = {}

    def added(self, key: str) -> Deferred[None] | None:
        """One more local subscriber (or group) for C{key}.

        Returns a Deferred fired once the placement center has the key (or
        after C{waitLimit} seconds; the key is still added later), or None
        if it has it already.
        """
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        if key in self.published and key not in self._busy:
            return None
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(key, []).append(d)
        timer = self.reactor.callLater(self.waitLimit, self._release, d)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        self._sync(key)
        return d

    def removed(self, key: str) -> None:
        """One local subscriber (or group) for C{key} fewer."""
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
            return
        self.counts.pop(key, None)
        self._sync(key)

    def resync(self) -> None:
        """After (re-)registering: the placement center may have dropped our keys; add them all."""
        self.published.clear()
        for key in list(self.counts):
            self._sync(key)

    @staticmethod
    def _release(d: Deferred[None]) -> None:
        if not d.called:
            d.callback(None)

    def _sync(self, key: str) -> None:
        if key in self._busy:
            return
        self._busy.add(key)
        ensureDeferred(self._work(key))

    async def _work(self, key: str) -> None:
        try:
            while True:
                want = key in self.counts
                if want == (key in self.published):
                    break
                if want:
                    await self.placement.call("addRoute", key)
                    self.published.add(key)
                else:
                    await self.placement.call("removeRoute", key)
                    self.published.discard(key)
        except Exception as e:
            self.log.warn("route {key}: placement call failed ({e}); retrying", key=key, e=str(e))
            self._busy.discard(key)
            self.reactor.callLater(1.0, self._sync, key)
            return
        self._busy.discard(key)
        for d in self._waiters.pop(key, []):
            self._release(d)
