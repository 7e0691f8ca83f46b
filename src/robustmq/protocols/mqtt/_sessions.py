"""The MQTT session registry: one session per client id, with takeover, expiry and wills."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from robustmq.config import MQTTSettings
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.persistence import logWriteFailure, pendingWillFromJson, pendingWillToJson
from robustmq.core.stats import Stats
from robustmq.protocols.mqtt._session import NEVER_EXPIRES, Session

if TYPE_CHECKING:
    from robustmq.protocols.mqtt._node import MQTTNode


class SessionRegistry:
    """Finds, creates, takes over, expires and discards sessions.

    A session outlives its connection for its expiry interval (0: it ends
    with the connection; 0xFFFFFFFF: never), then ends.  A will with a delay
    is published when the delay passes or the session ends, whichever comes
    first, unless a connection resumes the session before that.
    Sessions live in memory; the durable-storage work backs this registry
    with a shard store without changing its callers.
    """

    log = Logger()

    def __init__(self, node: MQTTNode, settings: MQTTSettings, stats: Stats) -> None:
        self._node = node
        self._settings = settings
        self._stats = stats
        self._sessions: dict[str, Session] = {}
        #: True while sessions are rebuilt from storage (nothing is written back)
        self.restoring = False

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, clientId: str) -> Session | None:
        """The session of C{clientId}, if any."""
        return self._sessions.get(clientId)

    def open(
        self, clientId: str, cleanStart: bool, connection: Any, expiryInterval: int
    ) -> tuple[Session, bool]:
        """
        Find or create the session for a connecting client.

        An existing connection with the same client id is told to close
        (MQTT-3.1.4-2).  With C{cleanStart} the old session ends
        (MQTT-3.1.2-6 / MQTT-3.1.2-4); otherwise it is resumed.  The caller
        attaches the connection with L{Session.attach} once CONNACK is written.

        @return: the session and whether a previous session was resumed.
        """
        existing = self._sessions.get(clientId)
        if existing is not None:
            ended = cleanStart
            old = existing.connection
            if old is not None and old is not connection:
                self.log.info("client {clientId} taken over by a new connection", clientId=clientId)
                self.takeOverConnection(existing)
                if existing.expiryInterval == 0:
                    # The old connection's session ended with it (Session Expiry 0, or
                    # clean session 1): Clean Start processing finds no session
                    # (MQTT-3.1.4-3/-4), so Session Present is 0, as in mosquitto.
                    ended = True
            if ended:
                # A new connection deletes a will still waiting for its delay
                # (MQTT-3.1.2-8), also when it discards the session.
                existing.pendingWill = existing.willDueAt = None
                self.discard(existing)
                existing = None
        if existing is not None:
            existing.clean = cleanStart
            changed = existing.expiryInterval != expiryInterval
            existing.expiryInterval = expiryInterval
            if existing.pendingWill is not None:
                # Resumed before its will delay ended: the will is deleted (MQTT-3.1.2-8).
                existing.pendingWill = existing.willDueAt = None
                changed = True
            if changed:
                self._save(existing)
            return existing, True
        session = Session(
            clientId, cleanStart, self._settings, self._stats, self._node.now(), self._node
        )
        session.expiryInterval = expiryInterval
        self._sessions[clientId] = session
        self._stats.sessions += 1
        self._save(session)
        return session, False

    def takeOverConnection(self, session: Session, keepWill: bool = True) -> None:
        """Close C{session}'s connection as taken over (MQTT 5: DISCONNECT 0x8E).

        The session is detached first, so that the closing connection leaves
        it as it is (its shared-group messages stay in it); without
        C{keepWill} the connection's will is dropped.
        """
        connection = session.connection
        if connection is None:
            return
        session.detach(self._node.now())
        if not keepWill:
            connection.will = None
        connection.takeOver()

    def _save(self, session: Session) -> None:
        persistence = self._node.persistence
        if persistence is not None and session.expiryInterval and not self.restoring:
            d = persistence.saveSession(session)
            d.addErrback(
                lambda f: logWriteFailure(
                    self.log, f, "saving session {c} failed", c=session.clientId
                )
            )

    def close(
        self, session: Session, connection: Any, will: Message | None = None, willDelay: int = 0
    ) -> None:
        """C{connection} ended; keep, schedule the end of, or end its session; handle the will.

        @param will: the will to publish (None after a normal DISCONNECT).
        @param willDelay: MQTT 5 Will Delay Interval in seconds.
        """
        node = self._node
        if session.connection is not connection:
            # Taken over: a new connection for the client id deletes a will that would
            # wait for a delay (MQTT-3.1.2-8); one without a delay is due now.
            if will is not None and willDelay <= 0:
                node.publishWill(will)
            return
        session.detach(node.now())
        node.redeliverShared(session)
        expiry = session.expiryInterval
        if expiry == 0:
            self.discard(session)
            if will is not None:
                node.publishWill(will)
            return
        if will is not None and willDelay <= 0:
            node.publishWill(will)
            will = None
        session.pendingWill = will
        session.willDueAt = node.now() + willDelay if will is not None else None
        self._save(session)
        self._arm(session, willDelay if will is not None else None)

    def _arm(self, session: Session, willDelay: float | None) -> None:
        """Schedule the next offline event: the will (if sooner) or the session's end."""
        expiry = session.expiryInterval
        sinceOffline = self._node.now() - (session.disconnectedAt or self._node.now())
        remaining = None if expiry == NEVER_EXPIRES else max(0.0, expiry - sinceOffline)
        if willDelay is not None and (remaining is None or willDelay < remaining):
            session.setTimer(self._node.callLater(willDelay, self._willDue, session))
        elif remaining is not None:
            session.setTimer(self._node.callLater(remaining, self._expire, session))
        else:
            session.cancelTimer()

    def deferWill(self, session: Session, will: Message, delay: float) -> None:
        """Give offline C{session} a will due in C{delay} seconds (unless it resumes first)."""
        session.pendingWill = will
        session.willDueAt = self._node.now() + delay
        self._save(session)
        self._arm(session, delay)

    def _willLeft(self, session: Session, now: float) -> float | None:
        """Seconds until a pending will is due (None: no will pending)."""
        if session.pendingWill is None:
            return None
        return max(0.0, (session.willDueAt or now) - now)

    def _willDue(self, session: Session) -> None:
        will, session.pendingWill = session.pendingWill, None
        session.willDueAt = None
        session.setTimer(None)
        if will is not None:
            self._node.publishWill(will)
        if self._sessions.get(session.clientId) is session and session.connection is None:
            self._save(session)  # without the will: a restart must not publish it again
            self._arm(session, None)

    def _expire(self, session: Session) -> None:
        if self._sessions.get(session.clientId) is session and session.connection is None:
            self.log.info("session of {clientId} expired", clientId=session.clientId)
            self.discard(session)

    def discard(self, session: Session, outcome: Outcome | None = None) -> None:
        """End C{session}: drop its subscriptions and queue; publish a pending will.

        The writes of dropping its subscriptions go to C{outcome} when given
        (a caller that waits for them), else run in the background.
        """
        session.cancelTimer()
        changes = Outcome() if outcome is None else outcome
        for topicFilter in list(session.subscriptions):
            self._node.unsubscribe(session, topicFilter, changes)
        if outcome is None:
            changes.background()
        self._node.redeliverShared(session)
        persistence = self._node.persistence
        if persistence is not None and (session.storedSeqs or session.expiryInterval):
            d = persistence.deleteSession(session)
            d.addErrback(
                lambda f: logWriteFailure(
                    self.log, f, "deleting session {c} failed", c=session.clientId
                )
            )
        session.clearQueue()
        session.inflight.clear()
        if self._sessions.get(session.clientId) is session:
            del self._sessions[session.clientId]
            self._stats.sessions -= 1
        will, session.pendingWill = session.pendingWill, None
        if will is not None:
            self._node.publishWill(will)
        cluster = self._node.broker.cluster
        if cluster is not None:
            cluster.sessionEnded(session.clientId)

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Rebuild offline persistent sessions from storage after a restart.

        A session whose expiry passed while the node was down ends at once
        (its held messages are deleted); the others get timers for what is
        left of their expiry.
        """
        node = self._node
        now = node.now()
        self.restoring = True
        try:
            for record in records:
                self._rebuild(record, now, Outcome())
        finally:
            self.restoring = False
        for session in list(self._sessions.values()):
            if session.connection is None:
                self._arm(session, self._willLeft(session, now))
        return len(records)

    def adopt(self, record: dict[str, Any], outcome: Outcome) -> Session:
        """Take over a session that lived on another node (cluster hand-over or adoption).

        C{record} has the shape L{restore} reads (see L{export}).  Unlike a
        restore, the session is written to this node's storage; the writes
        go to C{outcome}.  An existing local session of the same client id
        is discarded first.
        """
        existing = self._sessions.get(record["clientId"])
        if existing is not None:
            self.discard(existing)
        node = self._node
        session = self._rebuild(record, node.now(), outcome)
        persistence = node.persistence
        if persistence is not None and session.expiryInterval:
            outcome.wait(persistence.saveSession(session))
            for pid, (message, qos, state, sub, seq) in session.inflight.items():
                outcome.wait(persistence.saveDelivery(session, seq, message, qos, sub, pid, state))
            for message, qos, sub, seq in session.queue:
                outcome.wait(persistence.saveDelivery(session, seq, message, qos, sub, 0, 0))
            for pid in session.awaitingRel:
                outcome.wait(persistence.saveIncoming(session, pid))
        if session.connection is None:
            self._arm(session, self._willLeft(session, node.now()))
        return session

    def export(self, session: Session) -> dict[str, Any]:
        """C{session} in the record shape of L{restore}/L{adopt} (held messages in order)."""
        messages: list[tuple[int, Message, dict[str, Any], Any]] = []
        for pid, (message, qos, state, sub, seq) in session.inflight.items():
            messages.append((seq, message, {"pid": pid, "dq": qos, "st": state}, sub))
        for message, qos, sub, seq in session.queue:
            messages.append((seq, message, {"pid": 0, "dq": qos, "st": 0}, sub))
        messages.sort(key=lambda m: m[0])
        return {
            "clientId": session.clientId,
            "expiry": session.expiryInterval,
            "offline": session.disconnectedAt,
            "seq": session.nextSeq,
            "subs": {f: o.toDict() for f, o in session.subscriptions.items()},
            "messages": messages,
            "incoming": list(session.awaitingRel),
            "will": pendingWillToJson(session),
        }

    def _rebuild(self, record: dict[str, Any], now: float, outcome: Outcome) -> Session:
        from collections import deque

        from robustmq.core.subscription import SubscriptionOptions

        node = self._node
        session = Session(record["clientId"], False, self._settings, self._stats, now, node)
        session.expiryInterval = record["expiry"]
        session.disconnectedAt = record["offline"] or now
        pending = pendingWillFromJson(record.get("will"))
        if pending is not None:
            session.pendingWill, session.willDueAt = pending
        self._sessions[session.clientId] = session
        self._stats.sessions += 1
        for topicFilter, o in record["subs"].items():
            options = SubscriptionOptions(
                qos=o["qos"],
                noLocal=o["no_local"],
                keepRetain=o["retain_as_published"],
                retainHandling=o["retain_handling"],
                identifiers=tuple(o["identifiers"]),
            )
            try:
                node.subscribe(session, topicFilter, options, outcome)
            except Exception as e:  # an exclusive filter taken twice, say
                self.log.warn(
                    "not restoring subscription {f} of {c}: {e}",
                    f=topicFilter,
                    c=session.clientId,
                    e=str(e),
                )
        queue: deque[tuple[Message, int, Any, int]] = deque()
        nextSeq = record.get("seq", 1)
        for seq, message, header, sub in record["messages"]:
            session.storedSeqs.add(seq)
            nextSeq = max(nextSeq, seq + 1)
            if header["pid"]:
                session.inflight[header["pid"]] = [message, header["dq"], header["st"], sub, seq]
            else:
                queue.append((message, header["dq"], sub, seq))
                session.queuedBytes += len(message.payload)
        if queue:
            session.queue = queue
        session.nextSeq = nextSeq
        if record["incoming"]:
            session.awaitingRel = set(record["incoming"])
        return session

    def stop(self) -> None:
        """Cancel every offline timer (shutdown)."""
        for session in self._sessions.values():
            session.cancelTimer()
