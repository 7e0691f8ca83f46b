"""A client session: subscriptions, in-flight window and bounded queue.

The session outlives its connection when the client asked for a persistent
session.  It is protocol-neutral: it numbers deliveries with 16-bit packet
identifiers and talks to the live connection only through
L{robustmq.interfaces.ISessionConnection}.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger
from zope.interface import implementer

from robustmq.core.droplog import DropLog
from robustmq.core.persistence import logWriteFailure
from robustmq.interfaces import ICongestible, IDeliveryTarget

if TYPE_CHECKING:
    from robustmq.config import MQTTSettings
    from robustmq.core.message import Message
    from robustmq.core.outcome import Outcome
    from robustmq.core.stats import Stats
    from robustmq.core.subscription import SubscriptionOptions

# In-flight states of an outgoing QoS 1/2 delivery.
AWAITING_ACK = 0  # PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
AWAITING_COMP = 1  # PUBREL sent; waiting for PUBCOMP (QoS 2)

NEVER_EXPIRES = 0xFFFFFFFF


@implementer(IDeliveryTarget, ICongestible)
class Session:
    """State the broker keeps for one client id.

    Bounds (from C{[mqtt]} settings):
      - C{max_inflight}: unacknowledged QoS 1/2 deliveries; beyond it, messages wait in the queue.
      - C{max_queued_messages} / C{max_queued_bytes}: the queue of messages waiting for the
        window, for a paused (slow) connection, or for an offline persistent session.
      - C{max_awaiting_rel}: incoming QoS 2 messages waiting for PUBREL.

    At the queue bound an I{online} session becomes I{congested} when a QoS 1
    or 2 message reaches it: the publishers whose messages reach it are paused
    (they stop being read from their sockets) until the queue drains to half
    the bound, so nothing a publisher was acknowledged for is dropped.  A QoS
    0 message that finds the queue at its bound is dropped for this session
    (counted): QoS 0 never pauses a publisher.  Messages already read in the same network read
    may take the queue past the bound, up to twice the bound.  A session that
    stays congested for C{congestion_timeout} seconds (its client reads nothing)
    releases its publishers and from then on overflows like an offline one.
    An I{offline} session (or one past twice the bound) applies C{queue_overflow}:
    drop the new message (C{drop_new}) or the oldest queued one (C{drop_oldest});
    every drop is counted in C{messages_dropped} and in the session's L{drops},
    and logged: the first one at once, then a summary at most every ten
    seconds (L{robustmq.core.droplog}).
    QoS 0 messages for an offline session are queued only if C{queue_qos0_offline} is set.
    """

    __slots__ = (
        "clientId",
        "clean",
        "subscriptions",
        "connection",
        "queue",
        "queuedBytes",
        "inflight",
        "awaitingRel",
        "maxInflight",
        "_nextPacketId",
        "_settings",
        "_stats",
        "createdAt",
        "disconnectedAt",
        "congested",
        "overflowing",
        "waiters",
        "_congestionTimer",
        "_hub",
        "expiryInterval",
        "pendingWill",
        "willDueAt",
        "_timer",
        "nextSeq",
        "storedSeqs",
        "drops",
        "__weakref__",
    )

    log = Logger()

    def __init__(
        self,
        clientId: str,
        clean: bool,
        settings: MQTTSettings,
        stats: Stats,
        now: float = 0.0,
        hub: CongestionHub | None = None,
    ) -> None:
        self.clientId = clientId
        self.clean = clean
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        self.connection: Any = None
        # Empty tuples until first needed: most sessions never queue, and an
        # empty deque or set costs more than half a kilobyte per client.
        # Queue entries: (message, QoS, subscription options, sequence number).
        self.queue: deque[tuple[Message, int, Any, int]] | tuple[()] = ()
        self.queuedBytes = 0
        self.inflight: dict[int, list[Any]] = {}
        self.awaitingRel: set[int] | tuple[()] = ()
        self.maxInflight = settings.max_inflight
        self._nextPacketId = 1
        self._settings = settings
        self._stats = stats
        self.createdAt = now
        self.disconnectedAt: float | None = None
        #: publishers are paused because this online session's queue is full
        self.congested = False
        #: congestion timed out: overflow drops instead of pausing publishers
        self.overflowing = False
        #: publisher connections paused on this session (see L{CongestionHub})
        self.waiters: set[Any] | tuple[()] = ()
        self._congestionTimer: Any = None
        self._hub = hub
        #: seconds the session outlives its connection (0: ends with it; 0xFFFFFFFF: never)
        self.expiryInterval = 0 if clean else NEVER_EXPIRES
        #: a will waiting for its Will Delay Interval (MQTT 5), published unless resumed
        self.pendingWill: Message | None = None
        #: when C{pendingWill} is due (the broker's clock, seconds)
        self.willDueAt: float | None = None
        #: the session-expiry or will-delay timer while offline
        self._timer: Any = None
        #: sequence numbers of messages held in durable storage (persistent sessions)
        self.nextSeq = 1
        self.storedSeqs: set[int] = set()
        #: the session's queue-overflow drops (count and log), from its first drop
        self.drops: DropLog | None = None

    def __repr__(self) -> str:
        return (
            f"<Session {self.clientId!r} clean={self.clean} online={self.connection is not None}>"
        )

    # Outgoing messages

    def deliver(self, message: Message, qos: int, sub: Any, outcome: Outcome) -> None:
        """Send C{message} at C{qos} now if the connection and window allow, else queue it.

        C{sub} (the matching L{SubscriptionOptions}) travels with the message to
        the connection, which uses it for RETAIN and Subscription Identifiers.
        The durable write of a held message, and this session's congestion,
        are recorded in C{outcome} (L{robustmq.interfaces.IDeliveryTarget}).
        """
        conn = self.connection
        if conn is not None and not self.queue and conn.canDeliver():
            if message.expiresAt and self._expired(message):
                return
            if qos == 0:
                conn.deliver(message, 0, None, False, sub)
                return
            if len(self.inflight) < self.maxInflight:
                self._sendTracked(conn, message, qos, sub, 0, outcome)
                return
        elif conn is None and qos == 0 and not self._settings.queue_qos0_offline:
            self._stats.dropped("mqtt", "offline_qos0", 0)
            return
        self._enqueue(message, qos, sub, outcome)

    def _expired(self, message: Message) -> bool:
        hub = self._hub
        if hub is not None and hub.now() >= message.expiresAt:  # type: ignore[operator]
            self._stats.messagesExpired += 1
            return True
        return False

    def _store(self) -> Any:
        """The durable store to hold this session's messages in, or None."""
        hub = self._hub
        if self.expiryInterval and hub is not None:
            return hub.persistence
        return None

    def _sendTracked(
        self,
        conn: Any,
        message: Message,
        qos: int,
        sub: Any,
        seq: int = 0,
        outcome: Outcome | None = None,
    ) -> None:
        pid = self._allocatePacketId()
        store = self._store()
        if store is not None:
            if not seq:
                seq = self.nextSeq
                self.nextSeq += 1
                write = store.saveDelivery(self, seq, message, qos, sub, pid, AWAITING_ACK)
                if outcome is not None:
                    outcome.wait(write)
                else:
                    _logFailure(write)
            else:
                # Leaving the queue: record its packet id (no acknowledgement waits on this).
                _logFailure(store.saveDelivery(self, seq, message, qos, sub, pid, AWAITING_ACK))
        self.inflight[pid] = [message, qos, AWAITING_ACK, sub, seq]
        if conn.deliver(message, qos, pid, False, sub) is False:
            # Not sent (larger than the client accepts): complete it (MQTT-3.1.2-25).
            del self.inflight[pid]
            self._forget(seq)

    def _forget(self, seq: int) -> None:
        """A held message is done with: delete its durable copy."""
        if seq:
            store = self._store()
            if store is not None:
                _logFailure(store.deleteDelivery(self, seq))

    def _allocatePacketId(self) -> int:
        pid = self._nextPacketId
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 65535 else 1
        self._nextPacketId = pid + 1 if pid < 65535 else 1
        return pid

    def _enqueue(self, message: Message, qos: int, sub: Any, outcome: Outcome) -> None:
        s = self._settings
        size = len(message.payload)
        queue = self.queue
        if queue.__class__ is tuple:
            queue = self.queue = deque()
        limit = s.max_queued_messages
        byteLimit = s.max_queued_bytes
        online = self.connection is not None and not self.overflowing
        if online and not qos and (len(queue) >= limit or self.queuedBytes + size > byteLimit):
            # QoS 0 never pauses publishers: at the bound it is dropped for this
            # subscriber alone (counted), as mosquitto and EMQX do.
            self._stats.mqttDropped[0] += 1
            return
        if online:
            # Already-read messages may overshoot the bound, up to twice it.
            hardLimit, hardBytes = 2 * limit, 2 * byteLimit
        else:
            hardLimit, hardBytes = limit, byteLimit
        while len(queue) >= hardLimit or (queue and self.queuedBytes + size > hardBytes):
            if s.queue_overflow == "drop_oldest" and queue:
                old, oldQos, _, oldSeq = queue.popleft()
                self.queuedBytes -= len(old.payload)
                self._overflowed(oldQos)
                self._forget(oldSeq)
            else:
                self._overflowed(qos)
                return
        if size > hardBytes:
            self._overflowed(qos)
            return
        seq = 0
        if qos:
            store = self._store()
            if store is not None:
                seq = self.nextSeq
                self.nextSeq += 1
                outcome.wait(store.saveDelivery(self, seq, message, qos, sub, 0, AWAITING_ACK))
        queue.append((message, qos, sub, seq))  # type: ignore[union-attr]
        self.queuedBytes += size
        if online and qos and (len(queue) >= limit or self.queuedBytes >= byteLimit):
            if not self.congested:
                self._startCongestion()
            outcome.congest(self)

    @property
    def dropped(self) -> int:
        """Messages this session dropped at its queue bound (C{queue_overflow})."""
        return self.drops.total if self.drops is not None else 0

    def _overflowed(self, qos: int) -> None:
        """One message dropped by C{queue_overflow}: count it and log as L{DropLog} does."""
        self._stats.dropped("mqtt", "queue_overflow", qos)
        drops = self.drops
        if drops is None:
            hub = self._hub
            drops = self.drops = DropLog(
                self._logDrops,
                hub.callLater if hub is not None else None,
                hub.now if hub is not None else None,
            )
        drops.dropped()

    def _logDrops(self, first: bool, count: int, total: int) -> None:
        s = self._settings
        if first:
            self.log.warn(
                "{clientId}: queue full ({queued} messages, {queuedBytes} bytes; "
                "[mqtt] max_queued_messages = {limit}): dropping messages for this session "
                "(queue_overflow = {policy}); a summary follows while drops go on",
                clientId=self.clientId,
                queued=len(self.queue),
                queuedBytes=self.queuedBytes,
                limit=s.max_queued_messages,
                policy=s.queue_overflow,
            )
        else:
            self.log.warn(
                "{clientId}: {count} more messages dropped (queue_overflow = {policy}, "
                "{total} since the first)",
                clientId=self.clientId,
                count=count,
                policy=s.queue_overflow,
                total=total,
            )

    def _startCongestion(self) -> None:
        self.congested = True
        conn = self.connection
        if conn is not None:
            # A congested client must keep being read (its acks drain the queue),
            # even if it is itself a paused publisher.
            conn.sessionCongested()
        hub = self._hub
        if hub is not None and hub.congestionTimeout > 0:
            self._congestionTimer = hub.callLater(hub.congestionTimeout, self._congestionTimedOut)

    def timeOutCongestion(self) -> None:
        """A publisher waited C{congestion_timeout} for this session: stop holding publishers
        and overflow by policy until the queue drains, as when the session's own timer ends."""
        self._congestionTimedOut()

    def _congestionTimedOut(self) -> None:
        self._congestionTimer = None
        if self.congested:
            self.log.warn(
                "client {clientId} read nothing for {t}s while its queue was full: "
                "releasing publishers, dropping on overflow until it drains",
                clientId=self.clientId,
                t=self._hub.congestionTimeout if self._hub else 0,
            )
            self.overflowing = True
            self._endCongestion()

    def _endCongestion(self) -> None:
        self.congested = False
        timer = self._congestionTimer
        if timer is not None:
            self._congestionTimer = None
            if timer.active():
                timer.cancel()
        waiters = self.waiters
        if waiters:
            self.waiters = ()
            for publisher in waiters:
                publisher.congestionCleared(self)

    def _drained(self) -> None:
        """The queue shrank: end congestion or overflow once it is at half the bound."""
        s = self._settings
        if (
            len(self.queue) <= s.max_queued_messages // 2
            and self.queuedBytes <= s.max_queued_bytes // 2
        ):
            self.overflowing = False
            if self.congested:
                self._endCongestion()

    def pump(self) -> None:
        """Move queued messages to the connection while it and the window have room."""
        conn = self.connection
        queue = self.queue
        while queue and conn is not None and conn.canDeliver():
            message, qos, sub, seq = queue[0]
            if message.expiresAt and self._expired(message):
                queue.popleft()
                self.queuedBytes -= len(message.payload)
                self._forget(seq)
                continue
            if qos:
                if len(self.inflight) >= self.maxInflight:
                    break
                queue.popleft()
                self.queuedBytes -= len(message.payload)
                self._sendTracked(conn, message, qos, sub, seq)
            else:
                queue.popleft()
                self.queuedBytes -= len(message.payload)
                conn.deliver(message, 0, None, False, sub)
            conn = self.connection
        if self.congested or self.overflowing:
            self._drained()

    def outgoing(self, packetId: int) -> tuple[int, int] | None:
        """The QoS and state (L{AWAITING_ACK}, L{AWAITING_COMP}) of in-flight delivery
        C{packetId}, or None when no delivery has that id."""
        entry = self.inflight.get(packetId)
        return None if entry is None else (entry[1], entry[2])

    def acknowledge(self, packetId: int) -> bool:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived: the delivery is complete."""
        entry = self.inflight.get(packetId)
        if entry is None:
            return False
        if entry[1] == 1 or entry[2] == AWAITING_COMP:
            del self.inflight[packetId]
            self._forget(entry[4])
            if self.queue:
                self.pump()
            return True
        return False

    def abandon(self, packetId: int) -> None:
        """The client refused a delivery (5.0 PUBREC with an error code): forget it."""
        entry = self.inflight.pop(packetId, None)
        if entry is not None:
            self._forget(entry[4])
            if self.queue:
                self.pump()

    def received(self, packetId: int) -> bool:
        """PUBREC arrived for a QoS 2 delivery: it now waits for PUBCOMP."""
        entry = self.inflight.get(packetId)
        if entry is None or entry[1] != 2:
            return False
        entry[2] = AWAITING_COMP
        store = self._store()
        if store is not None and entry[4]:
            # MQTT-4.3.3: after a restart, resend PUBREL, not the PUBLISH.
            message, qos, _, sub, seq = entry
            _logFailure(store.saveDelivery(self, seq, message, qos, sub, packetId, AWAITING_COMP))
        return True

    # Incoming QoS 2

    def startIncomingQos2(self, packetId: int, outcome: Outcome) -> bool:
        """Record an incoming QoS 2 PUBLISH; False if it is a resend already routed.

        The durable record of the id (persistent sessions) goes to C{outcome}:
        the PUBREC waits for it.
        """
        awaiting = self.awaitingRel
        if packetId in awaiting:
            return False
        if awaiting.__class__ is tuple:
            awaiting = self.awaitingRel = set()
        awaiting.add(packetId)  # type: ignore[union-attr]
        store = self._store()
        if store is not None:
            outcome.wait(store.saveIncoming(self, packetId))
        return True

    def releaseIncomingQos2(self, packetId: int) -> bool:
        """PUBREL arrived; True if the id was awaiting it."""
        if packetId not in self.awaitingRel:
            return False
        self.awaitingRel.remove(packetId)  # type: ignore[union-attr]
        store = self._store()
        if store is not None:
            _logFailure(store.deleteIncoming(self, packetId))
        return True

    def addWaiter(self, publisher: Any) -> None:
        """C{publisher} paused reading because this session is congested."""
        if self.waiters.__class__ is tuple:
            self.waiters = set()
        self.waiters.add(publisher)  # type: ignore[union-attr]

    def removeWaiter(self, publisher: Any) -> None:
        """C{publisher} went away, or stopped waiting."""
        if publisher in self.waiters:
            self.waiters.remove(publisher)  # type: ignore[union-attr]

    def clearQueue(self) -> None:
        """Forget every queued message."""
        self.queue = ()
        self.queuedBytes = 0

    # Connection lifecycle

    def attach(self, connection: Any) -> None:
        """A connection took this session: resend what is in flight, then drain the queue."""
        self.connection = connection
        self.disconnectedAt = None
        self.cancelTimer()
        self.pendingWill = None
        self.willDueAt = None
        for pid, (message, qos, state, sub, seq) in list(self.inflight.items()):
            if self.connection is not connection:
                return
            if state == AWAITING_ACK:
                # MQTT-4.4.0-1: resend unacknowledged PUBLISHes with DUP set.
                if connection.deliver(message, qos, pid, True, sub) is False:
                    del self.inflight[pid]
                    self._forget(seq)
            else:
                connection.deliverRelease(pid)
        self.pump()

    def detach(self, now: float = 0.0) -> None:
        """The connection is gone; keep state for a persistent session."""
        self.connection = None
        self.disconnectedAt = now
        self.overflowing = False
        if self.congested:
            self._endCongestion()

    def cancelTimer(self) -> None:
        """Cancel a pending session-expiry or will-delay timer."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def setTimer(self, timer: Any) -> None:
        """Hold the offline timer (expiry or will delay), replacing any other."""
        self.cancelTimer()
        self._timer = timer

    def takeGroupMessages(self) -> list[tuple[Any, list[tuple[Message, int]]]]:
        """Remove and return undelivered messages that came through shared groups.

        Used when a member departs, so the group can give them to the others.
        """
        byGroup: dict[Any, list[tuple[Message, int]]] = {}
        for pid, (message, qos, state, sub, seq) in list(self.inflight.items()):
            if sub is not None and sub.group is not None and state == AWAITING_ACK:
                byGroup.setdefault(sub.group, []).append((message, qos))
                del self.inflight[pid]
                self._forget(seq)
        if self.queue:
            keep: deque[tuple[Message, int, Any, int]] = deque()
            for message, qos, sub, seq in self.queue:
                if sub is not None and sub.group is not None:
                    byGroup.setdefault(sub.group, []).append((message, qos))
                    self.queuedBytes -= len(message.payload)
                    self._forget(seq)
                else:
                    keep.append((message, qos, sub, seq))
            self.queue = keep
        return list(byGroup.items())


def _logFailure(d: Any) -> None:
    """Log a failed background write (nothing waits on it)."""
    d.addErrback(lambda f: logWriteFailure(Session.log, f, "durable session write failed"))


class CongestionHub(Protocol):
    """What a session needs from the broker: its clock, the congestion timeout, storage."""

    congestionTimeout: float
    persistence: Any

    def now(self) -> float: ...

    def callLater(self, delay: float, f: Any, *args: Any) -> Any: ...
