"""The broker: the protocol-neutral hub that protocols publish into."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from robustmq import __version__
from robustmq.config import Settings
from robustmq.core.auth import AllowAll, AuthChain
from robustmq.core.message import Message
from robustmq.core.retained import RetainedMessages
from robustmq.core.router import Router
from robustmq.core.session import Session
from robustmq.core.sessions import SessionRegistry
from robustmq.core.stats import Stats
from robustmq.interfaces import IShardStore


class Broker(Service):
    """Routes messages between sessions, keeps retained messages and counters.

    Protocols call L{publish}, L{subscribe} and L{unsubscribe}; connections
    register with L{connectionOpened}/L{connectionClosed} so that shutdown
    can close them and operators can list them.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        store: IShardStore | None = None,
        auth: AuthChain | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.store = store
        self.auth = auth or AuthChain([AllowAll()])
        self.version = __version__
        self.stats = Stats()
        self.router = Router(settings.mqtt.route_cache_size)
        self.retained = RetainedMessages(
            settings.mqtt.max_retained_messages, settings.mqtt.max_retained_payload
        )
        #: sessions found congested while routing the current message (see Session)
        self.congestion: list[Session] = []
        self.congestionTimeout = settings.mqtt.congestion_timeout
        self.sessions = SessionRegistry(
            self.router, settings.mqtt, self.stats, lambda: reactor.seconds(), self
        )
        self.connections: set[Any] = set()
        #: accepted sockets on every listener, counted against [limits] max_connections
        self.openSockets = 0

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        """Schedule C{f} on the broker's reactor (used by sessions)."""
        return self.reactor.callLater(delay, f, *args)  # type: ignore[attr-defined]

    # Publishing

    def publish(self, message: Message) -> int:
        """Retain (if flagged) and route C{message}; returns how many sessions it reached.

        Afterwards C{congestion} lists the sessions whose full queues the
        caller should wait for (a publishing connection pauses reading);
        callers with nothing to pause clear it.
        """
        self.stats.messagesReceived += 1
        if message.retain:
            self.retained.update(message)
            # MQTT-3.3.1-9: established subscriptions get it with RETAIN cleared.
            message = message.copy(retain=False)
        return self.route(message)

    def route(self, message: Message) -> int:
        """Deliver C{message} to every matching session at min(publish QoS, granted QoS)."""
        matches = self.router.match(message.topic)
        mqos = message.qos
        for session, granted in matches:
            session.deliver(message, mqos if mqos < granted else granted)
        return len(matches)

    def publishInternal(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish a broker-originated message (e.g. $SYS) at QoS 0, not counted as received."""
        message = Message(topic, payload, 0, retain, self.reactor.seconds())
        if retain:
            self.retained.update(message)
            message = message.copy(retain=False)
        self.route(message)
        # No connection to pause for a broker-originated message.
        self.congestion.clear()

    # Subscriptions

    def subscribe(self, session: Session, topicFilter: str, qos: int) -> list[Message]:
        """Subscribe C{session}; returns the retained messages the filter matches."""
        self.router.subscribe(topicFilter, session, qos)
        session.subscriptions[topicFilter] = qos
        return self.retained.match(topicFilter)

    def unsubscribe(self, session: Session, topicFilter: str) -> bool:
        """Remove a subscription; True if it existed."""
        session.subscriptions.pop(topicFilter, None)
        return self.router.unsubscribe(topicFilter, session)

    # Connections

    def connectionOpened(self, connection: Any) -> None:
        """A client completed its handshake."""
        self.connections.add(connection)
        self.stats.clientConnected()

    def connectionClosed(self, connection: Any) -> None:
        """A connection counted by L{connectionOpened} ended."""
        if connection in self.connections:
            self.connections.discard(connection)
            self.stats.clientDisconnected()

    # Service

    def startService(self) -> None:
        super().startService()
        self.log.info("broker {version} started", version=self.version)

    async def _stop(self) -> None:
        for connection in list(self.connections):
            connection.shutdown()
        if self.store is not None:
            await defer.maybeDeferred(self.store.close)

    def stopService(self) -> defer.Deferred[None]:
        """Close every client connection, then flush and close storage."""
        super().stopService()
        self.log.info("broker stopping: closing {n} connections", n=len(self.connections))
        return defer.ensureDeferred(self._stop())
