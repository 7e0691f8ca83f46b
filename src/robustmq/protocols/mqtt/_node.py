"""The node's MQTT service: sessions, shared and exclusive subscriptions, wills, delays.

What every MQTT listener of a node shares, and what MQTT means beyond the
neutral core: a client id's session (packet ids, in-flight window, PUBREL
state, offline queue, will), C{$share/} and C{$exclusive/} subscriptions,
C{$delayed/} publishes and the C{[[mqtt.rewrite]]} rules.  The broker core
routes; this service turns MQTT subscriptions into router entries and
keeps the sessions behind them.

The broker cluster reaches it through L{robustmq.interfaces.ISessionDirectory}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.shared import SharedGroup
from robustmq.core.subscription import SubscriptionOptions, parseFilter
from robustmq.interfaces import ISessionDirectory
from robustmq.protocols.mqtt._delayed import DelayedMessages
from robustmq.protocols.mqtt._rewrite import TopicRewriter
from robustmq.protocols.mqtt._session import Session
from robustmq.protocols.mqtt._sessions import SessionRegistry

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

__all__ = ["ExclusiveTaken", "MQTTNode"]


class ExclusiveTaken(Exception):
    """An exclusive subscription already has a subscriber."""


@implementer(ISessionDirectory)
class MQTTNode(Service):
    """MQTT sessions and subscriptions of one node (the C{mqtt} node service).

    Started after the broker: once the broker has opened its store and
    recovered retained messages, it restores persistent sessions, then
    fires L{whenReady}; MQTT connections are not read before that.
    """

    log = Logger()
    name = "mqtt"  # type: ignore[assignment]

    def __init__(self, broker: Broker, reactor: Any) -> None:
        self.broker = broker
        self.reactor = reactor
        self.settings = broker.settings.mqtt
        self.congestionTimeout = self.settings.congestion_timeout
        #: durable state (sessions, held messages; see core/persistence.py), or None
        self.persistence = broker.persistence
        self.sessions = SessionRegistry(self, self.settings, broker.stats)
        #: shared-subscription groups by (group name, filter)
        self.groups: dict[tuple[str, str], SharedGroup] = {}
        #: exclusive subscriptions: filter → owning session
        self.exclusive: dict[str, Session] = {}
        self.delayed = DelayedMessages(broker, self.settings.max_delayed_messages)
        self.rewriter = TopicRewriter(self.settings.rewrite)
        self.ready = False
        self._waiting: list[defer.Deferred[None]] = []

    # What sessions need from their hub (robustmq.protocols.mqtt._session.CongestionHub)

    def now(self) -> float:
        """The reactor's clock."""
        return self.reactor.seconds()  # type: ignore[no-any-return]

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        """Schedule C{f} on the node's reactor."""
        return self.reactor.callLater(delay, f, *args)

    # Service

    def startService(self) -> None:
        super().startService()
        d = self.broker.whenReady().addCallback(lambda _: defer.ensureDeferred(self._restore()))
        d.addErrback(lambda f: self.log.failure("restoring MQTT sessions failed", f))

    async def _restore(self) -> None:
        persistence = self.persistence
        if persistence is not None:
            records = await persistence.loadSessions()
            restored = self.sessions.restore(records)
            self.log.info(
                "recovered {sessions} persistent sessions ({messages} held messages) from storage",
                sessions=restored,
                messages=sum(len(r["messages"]) for r in records),
            )
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once persistent sessions are restored (after the broker's recovery)."""
        if self.ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> None:
        """Cancel offline-session timers and delayed publishes (the broker closes clients)."""
        super().stopService()
        self.delayed.stop()
        self.sessions.stop()

    # Publishing for MQTT

    def publishWill(self, will: Message) -> None:
        """Publish a will message (it has no connection to pause, nobody to acknowledge)."""
        will.timestamp = self.now()
        if will.properties and will.properties.get("message_expiry_interval") is not None:
            will.expiresAt = will.timestamp + will.properties["message_expiry_interval"]
        self.log.info(
            "publishing will of {clientId} on {topic}", clientId=will.origin, topic=will.topic
        )
        self.broker.publish(will).background()

    # Subscriptions

    def subscribe(
        self,
        session: Session,
        topicFilter: str,
        options: SubscriptionOptions,
        outcome: Outcome,
    ) -> list[Message]:
        """Subscribe C{session}; returns the retained messages to send for it.

        C{$share/<group>/<filter>} and C{$queue/<filter>} join a shared group
        (no retained messages, MQTT 5.0 section 4.8.2); C{$exclusive/<filter>}
        may have one subscriber at a time.  The durable writes of the change
        (a persistent session's record, the cluster route) go to C{outcome}.

        @raise ValueError: a malformed shared or exclusive filter.
        @raise ExclusiveTaken: another session holds the exclusive subscription.
        """
        broker = self.broker
        cluster = broker.cluster
        group, real, exclusive = parseFilter(topicFilter)
        existed = topicFilter in session.subscriptions
        if exclusive:
            owner = self.exclusive.get(real)
            if owner is not None and owner is not session:
                raise ExclusiveTaken(real)
            self.exclusive[real] = session
        if group is not None:
            key = (group, real)
            shared = self.groups.get(key)
            if shared is None:
                shared = self.groups[key] = SharedGroup(
                    group, real, self.settings.shared_subscription_strategy
                )
                broker.router.subscribe(real, shared, SubscriptionOptions(qos=2))
                if cluster is not None:
                    cluster.routeAdded(f"$share/{group}/{real}", outcome)
            shared.add(session, options)
        else:
            broker.subscribeTarget(real, session, options, outcome)
        session.subscriptions[topicFilter] = options
        self._saveSession(session, outcome)
        if group is not None or options.retainHandling == 2:
            return []
        if options.retainHandling == 1 and existed:
            return []
        return broker.retained.match(real)

    def unsubscribe(self, session: Session, topicFilter: str, outcome: Outcome) -> bool:
        """Remove a subscription; True if it existed.  Durable writes go to C{outcome}."""
        if session.subscriptions.pop(topicFilter, None) is None:
            return False
        self._saveSession(session, outcome)
        group, real, exclusive = parseFilter(topicFilter)
        if exclusive and self.exclusive.get(real) is session:
            del self.exclusive[real]
        broker = self.broker
        if group is not None:
            shared = self.groups.get((group, real))
            if shared is not None:
                shared.remove(session)
                if not shared.members:
                    del self.groups[(group, real)]
                    broker.router.unsubscribe(real, shared)
                    if broker.cluster is not None:
                        broker.cluster.routeRemoved(f"$share/{group}/{real}")
            return True
        return broker.unsubscribeTarget(real, session)

    def _saveSession(self, session: Session, outcome: Outcome) -> None:
        if self.persistence is not None and session.expiryInterval and not self.sessions.restoring:
            outcome.wait(self.persistence.saveSession(session))

    def redeliverShared(self, session: Session) -> None:
        """A shared-group member left: its undelivered group messages go to the others."""
        outcome = Outcome()
        for group, messages in session.takeGroupMessages():
            group.redeliver(messages, session, outcome)
        outcome.background()

    # ISessionDirectory: what the broker cluster asks of this node's sessions

    def group(self, name: str, topicFilter: str) -> SharedGroup | None:
        """The local shared group C{$share/<name>/<topicFilter>}, if any member is here."""
        return self.groups.get((name, topicFilter))
