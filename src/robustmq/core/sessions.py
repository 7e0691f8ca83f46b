"""The session registry: one session per client id, with takeover."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.logger import Logger

from robustmq.config import MQTTSettings
from robustmq.core.router import Router
from robustmq.core.session import CongestionHub, Session
from robustmq.core.stats import Stats


class SessionRegistry:
    """Finds, creates, takes over and discards sessions.

    Sessions live in memory for now; the durable-storage work backs this
    registry with a shard store without changing its callers.
    """

    log = Logger()

    def __init__(
        self,
        router: Router,
        settings: MQTTSettings,
        stats: Stats,
        clock: Callable[[], float],
        hub: CongestionHub | None = None,
    ) -> None:
        self._router = router
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._hub = hub
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, clientId: str) -> Session | None:
        """The session of C{clientId}, if any."""
        return self._sessions.get(clientId)

    def open(self, clientId: str, clean: bool, connection: Any) -> tuple[Session, bool]:
        """
        Find or create the session for a connecting client.

        An existing connection with the same client id is told to close
        (MQTT-3.1.4-2).  With C{clean} the old session is discarded
        (MQTT-3.1.2-6); otherwise it is resumed.  The caller attaches the
        connection with L{Session.attach} once CONNACK has been written.

        @return: the session and whether a previous session was resumed.
        """
        existing = self._sessions.get(clientId)
        if existing is not None:
            old = existing.connection
            if old is not None and old is not connection:
                existing.detach(self._clock())
                self.log.info("client {clientId} taken over by a new connection", clientId=clientId)
                old.takeOver()
            if clean or existing.clean:
                self.discard(existing)
                existing = None
        if existing is not None:
            existing.clean = clean
            return existing, True
        session = Session(clientId, clean, self._settings, self._stats, self._clock(), self._hub)
        self._sessions[clientId] = session
        return session, False

    def close(self, session: Session, connection: Any) -> None:
        """C{connection} ended: detach it; a clean session ends with it (MQTT-3.1.2-6)."""
        if session.connection is not connection:
            return
        session.detach(self._clock())
        if session.clean:
            self.discard(session)

    def discard(self, session: Session) -> None:
        """Forget C{session} and its subscriptions."""
        for topicFilter in list(session.subscriptions):
            self._router.unsubscribe(topicFilter, session)
        session.subscriptions.clear()
        session.clearQueue()
        session.inflight.clear()
        if self._sessions.get(session.clientId) is session:
            del self._sessions[session.clientId]
