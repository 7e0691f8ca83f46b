"""Routing across brokers: local delivery, forwarding to the nodes whose routes match,
shared groups chosen in turn, messages redirected to sessions that moved."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from robustmq.cluster import wire
from robustmq.cluster.moves import AllBut
from robustmq.cluster.peers import FORWARD, FORWARD_FOR
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.shared import SharedGroup
from robustmq.core.subscription import parseFilter

#: Shared groups whose round-robin turn is remembered (beyond it all turns restart).
MAX_SHARED_TURNS = 100_000


class _Drain:
    """Waits, like a paused publisher, for the sessions a forwarded batch congested."""

    def __init__(self, sessions: list[Any]) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.blockedOn: set[Any] = set()
        for session in sessions:
            if session.congested and session not in self.blockedOn:
                session.addWaiter(self)
                self.blockedOn.add(session)
        if not self.blockedOn:
            self.done.callback(None)

    def congestionCleared(self, session: Any) -> None:
        """A session drained (or gave up waiting: congestion_timeout)."""
        self.blockedOn.discard(session)
        if not self.blockedOn and not self.done.called:
            self.done.callback(None)


class Routing:
    """The ClusterNode's routing (mixed into L{robustmq.cluster.node.ClusterNode})."""

    #: Whether C{$SYS/} topics are routed to the other brokers too: a node's worker
    #: processes are one node (docs/workers.md); brokers of a cluster are not.
    sysNodeWide = False

    # Routing

    def routeAdded(self, key: str, outcome: Outcome) -> None:
        """A subscription C{key} is new here: the SUBACK waits for the placement route."""
        outcome.wait(self.routes.added(key))

    def routeRemoved(self, key: str) -> None:
        self.routes.removed(key)

    def route(self, message: Message, outcome: Outcome) -> int:
        """Deliver C{message} here and forward it to every other node that wants it."""
        broker = self.broker
        topic = message.topic
        if topic.startswith("$SYS/") and not self.sysNodeWide:
            return broker.routeLocally(message, outcome)  # type: ignore[no-any-return]
        normal, sharedRemote = self.remote.match(topic)
        moves = self.moves
        if not (
            sharedRemote
            or self._ghosts
            or message.retain
            or moves.arrived
            or moves.departed
            or self.mqtt.groups
        ):
            # The common case: ordinary subscribers here and on the nodes in `normal`.
            count: int = broker.routeLocally(message, outcome, sharedGroups=False)
            if normal:
                names = self._targetsOf(normal)
                for nodeId in normal:
                    self._send(nodeId, message, wire.ROUTE, None, outcome, None, names)
            return count + len(normal)
        #: holder node -> the dead node whose sessions it must adopt before routing
        via: dict[str, str] = {}
        if self._ghosts:
            normal, sharedRemote, via = self._ghostTargets(topic, normal, sharedRemote)
            dead = via.get(self.nodeId)
            if dead is not None:
                # We are adopting subscribers of this topic: route once they are here.
                return self._routeAfterAdoption(dead, message, outcome)
        if moves.arrived or moves.departed:
            routing = normal | {self.nodeId}
            count = broker.routeLocally(message, outcome, False, moves.answeredElsewhere(routing))
            self._redirect(message, routing, outcome)
        else:
            count = broker.routeLocally(message, outcome, sharedGroups=False)
        local: dict[str, Any] = {}
        if self.mqtt.groups:
            for subscriber, _ in broker.router.match(topic):
                if subscriber.__class__ is SharedGroup:
                    local[f"$share/{subscriber.name}/{subscriber.topicFilter}"] = subscriber
        groups: dict[str, list[str]] = {}
        if sharedRemote or local:
            for key in set(sharedRemote) | set(local):
                holders = set(sharedRemote.get(key, ()))
                if key in local:
                    holders.add(self.nodeId)
                ordered = sorted(holders)
                turn = self._roundRobin.get(key, 0)
                if turn == 0 and len(self._roundRobin) >= MAX_SHARED_TURNS:
                    self._roundRobin.clear()  # bound: forget every group's turn
                self._roundRobin[key] = turn + 1
                chosen = ordered[turn % len(ordered)]
                if chosen == self.nodeId:
                    local[key].deliver(message, message.qos, None, outcome)
                else:
                    groups.setdefault(chosen, []).append(key)
                count += 1
        targets: Iterable[str] = normal
        if groups or message.retain:
            every = set(normal) | set(groups)
            if message.retain:
                every.update(n for n in self.aliveBrokers() if n != self.nodeId)
            targets = every
        names = self._targetsOf(normal) if normal else b""
        for nodeId in targets:
            if nodeId in normal:
                flags = wire.ROUTE | (wire.RETAIN if message.retain else 0)
                self._send(
                    nodeId, message, flags, groups.get(nodeId), outcome, via.get(nodeId), names
                )
            else:
                flags = wire.RETAIN if message.retain else 0
                self._send(nodeId, message, flags, groups.get(nodeId), outcome, via.get(nodeId))
        return count + len(normal)

    def _targetsOf(self, normal: frozenset[str]) -> bytes:
        """The brokers routing a message to their ordinary subscribers: this one and C{normal}."""
        names = self._targetNames.get(normal)
        if names is None:
            if len(self._targetNames) >= 1024:
                self._targetNames.clear()
            names = self._targetNames[normal] = wire.encodeTargets(normal | {self.nodeId})
        return names

    def _redirect(self, message: Message, routing: frozenset[str], outcome: Outcome) -> None:
        """Send C{message} on to the sessions that left here and that we answer for."""
        for nodeId, clientIds in self.moves.redirects(message.topic, routing).items():
            self.redirected += len(clientIds)
            self._send(nodeId, message, wire.SESSION, clientIds, outcome)

    def _afterArrivals(
        self,
        waiting: list[list[Callable[[], None]]],
        then: Callable[[Outcome], None],
        outcome: Outcome,
    ) -> None:
        """Run C{then} once the hand-overs to us behind C{waiting} have ended; what is
        being handled is acknowledged after that (and the writes C{then} causes)."""
        done: defer.Deferred[Any] = defer.Deferred()
        left = [len(waiting)]

        def one() -> None:
            left[0] -= 1
            if left[0]:
                return
            later = Outcome()
            then(later)
            # Nothing left to pause: the publisher's packet was handled long ago.
            later.allWritten().addBoth(done.callback)

        for callbacks in waiting:
            callbacks.append(one)
        outcome.wait(done)

    def _deliverMoved(self, clientId: str, message: Message, outcome: Outcome) -> None:
        """A message redirected to C{clientId}'s session only (it moved, see moves.py)."""
        broker = self.broker
        waiting = self._arriving.get(clientId)
        if waiting is not None:
            # Being handed over to us: deliver once it is here.
            self._afterArrivals(
                [waiting], lambda later: self._deliverMoved(clientId, message, later), outcome
            )
            return
        session = self.mqtt.sessions.get(clientId)
        if session is not None:
            broker.routeLocally(message, outcome, False, AllBut(session))
            return
        nodeId = self.moves.nextHop(clientId)
        if nodeId is not None and nodeId != self.nodeId:
            self.redirected += 1
            self._send(nodeId, message, wire.SESSION, [clientId], outcome)
            return
        self.dropped += 1
        self.log.info(
            "{clientId}: a message on {topic} sent on to its session found no session here",
            clientId=clientId,
            topic=message.topic,
        )

    def _deliverToGroup(
        self, key: str, message: Message, outcome: Outcome, wait: bool = True
    ) -> None:
        """A message for shared group C{key} (chosen here by the publishing broker).  With
        no member here: its last member moved away (send it on), or one is being handed
        over to us (wait for those hand-overs)."""
        name, real, _ = parseFilter(key)
        group = self.mqtt.groups.get((name, real))
        if group is not None:
            group.deliver(message, message.qos, None, outcome)
            return
        if not (self.moves or self._arriving):
            return  # its last member left: the route change is on its way to the publisher
        nodeId = self.moves.sharedRedirect(key)
        if nodeId is not None and nodeId != self.nodeId:
            self.redirected += 1
            self._send(nodeId, message, 0, [key], outcome)
            return
        if wait and self._arriving:
            # We do not know which arriving session brings the group: wait for them all.
            self._afterArrivals(
                list(self._arriving.values()),
                lambda later: self._deliverToGroup(key, message, later, wait=False),
                outcome,
            )
            return
        self.dropped += 1
        self.log.info("a message for shared group {key} found no member here", key=key)

    def _arrivalDone(self, clientId: str) -> None:
        """The hand-over of C{clientId}'s session to us ended: run what waited for it."""
        for deliver in self._arriving.pop(clientId, ()):
            deliver()

    def _ghostTargets(
        self, topic: str, normal: frozenset[str], shared: dict[str, set[str]]
    ) -> tuple[frozenset[str], dict[str, set[str]], dict[str, str]]:
        """Add the routes of dead nodes whose sessions are being adopted, pointed at the
        adopting nodes (until those announce that their own routes are in place)."""
        via: dict[str, str] = {}
        normalNodes = set(normal)
        sharedNodes = {key: set(nodes) for key, nodes in shared.items()}
        for dead, ghost in self._ghosts.items():
            ghostNormal, ghostShared = ghost.match(topic)
            if not ghostNormal and not ghostShared:
                continue
            holder = self.replicaOf.get(dead)
            if holder is None or not (holder == self.nodeId or self._alive(holder)):
                continue
            via[holder] = dead
            if ghostNormal:
                normalNodes.add(holder)
            for key in ghostShared:
                sharedNodes.setdefault(key, set()).add(holder)
        return frozenset(normalNodes), sharedNodes, via

    def _routeAfterAdoption(self, dead: str, message: Message, outcome: Outcome) -> int:
        """Route C{message} once the sessions of C{dead} are adopted here; the publisher's
        acknowledgement waits for that (and for the writes it causes)."""
        done: defer.Deferred[Any] = defer.Deferred()

        def routeNow(_: Any) -> None:
            later = Outcome()
            self.route(message, later)
            later.allWritten().addBoth(done.callback)

        self.adopt(dead).addCallback(routeNow)
        outcome.wait(done)
        return 1

    def _send(
        self,
        nodeId: str,
        message: Message,
        flags: int,
        groups: list[str] | None,
        outcome: Outcome,
        via: str | None = None,
        targets: bytes = b"",
    ) -> None:
        link = self.links.get(nodeId)
        if link is None:
            self.dropped += 1
            return
        entry = wire.encodeForward(message, flags, groups, targets)
        kind = FORWARD if via is None else FORWARD_FOR + via
        outcome.wait(link.send(kind, entry, message.qos))
        self.forwarded += 1
        if link.congested:
            outcome.congest(link)

    def receiveForward(self, origin: str, entries: list[wire.Forwarded]) -> defer.Deferred[Any]:
        """Messages another broker routed here (decoded: L{wire.decodeForwards}); the answer
        fires once their durable writes are done and the sessions they filled have drained.

        Back-pressure across the link: a batch that leaves local sessions
        congested holds its answer, and the origin's next batches wait
        (queued here, at most the sender's calls in flight) until those
        sessions drain — as a local publisher would stop being read.  The
        sender's PUBACKs wait for the answer, and its link fills up to
        C{forward_max_pending}, where its publishers pause.
        """
        answer: defer.Deferred[Any] = defer.Deferred()
        released: defer.Deferred[None] = defer.Deferred()
        previous = self._inbound.get(origin)
        self._inbound[origin] = released

        def run(_: Any = None) -> None:
            try:
                writes, drained = self._routeBatch(entries)
            except Exception:
                released.callback(None)
                answer.errback()
                return
            drained.addCallback(lambda _: released.callback(None))
            d = defer.gatherResults([*writes, drained], consumeErrors=True)
            d.addCallbacks(lambda _: answer.callback(None), answer.errback)

        def forget(_: Any) -> None:
            if self._inbound.get(origin) is released:
                del self._inbound[origin]

        released.addCallback(forget)
        if previous is None or previous.called:
            run()
        else:
            previous.addCallback(run)
        return answer

    def _routeBatch(
        self, entries: list[wire.Forwarded]
    ) -> tuple[list[defer.Deferred[Any]], defer.Deferred[None]]:
        """Route forwarded entries here: (their durable writes, fired when what they
        congested has drained)."""
        broker = self.broker
        moves = self.moves
        outcome = Outcome()
        self.received += len(entries)
        routeLocally = broker.routeLocally
        for message, flags, names, rawTargets in entries:
            if flags == wire.ROUTE and not names and not moves:
                # The common case: ordinary subscribers only, no session moving.
                routeLocally(message, outcome, sharedGroups=False)
                continue
            if flags & wire.SESSION:
                for clientId in names:
                    self._deliverMoved(clientId, message, outcome)
                continue
            if flags & wire.RETAIN:
                if broker.retained.update(message) and broker.persistence is not None:
                    outcome.wait(broker.persistence.saveRetained(message))
            if flags & wire.ROUTE:
                if moves:
                    routing = wire.decodeTargets(rawTargets)
                    broker.routeLocally(message, outcome, False, moves.answeredElsewhere(routing))
                    self._redirect(message, routing, outcome)
                else:
                    broker.routeLocally(message, outcome, sharedGroups=False)
            for key in names:
                self._deliverToGroup(key, message, outcome)
        writes = outcome.writes or []
        congested = [s for s in outcome.congested or () if s.congested]
        if not congested:
            return writes, defer.succeed(None)
        return writes, _Drain(congested).done

    async def receiveForwardFor(
        self, origin: str, dead: str, entries: list[wire.Forwarded]
    ) -> None:
        """Messages that were on their way to C{dead}: adopt its sessions first, then route."""
        await self.adopt(dead)
        await self.receiveForward(origin, entries)
