"""Connection limits shared by every protocol's server factory."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from robustmq.core.security import securityOf


class ConnectionLimitedFactory(ServerFactory):
    """Counts a listener's connections against its own and the node's limit.

    Subclasses set C{broker} and C{listener}, call L{_admit} first in
    C{buildProtocol} (returning None when it refuses), and L{_track} for the
    protocol they build; the protocol calls L{connectionEnded} when it ends.
    At a limit the connection is closed at once, with a warning logged for
    the first refusal and every 100th.
    """

    log = Logger()
    noisy = False
    broker: Any
    listener: Any

    def _initLimits(self) -> None:
        self.open: set[Any] = set()
        #: connections refused at a limit, and accepted (for the listener metrics)
        self.refused = 0
        self.accepted = 0

    def _refuse(self, addr: Any, why: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            self.log.warn(
                "{listener}: connection from {addr} refused: {why} ({refused} refused so far)",
                listener=self.listener.label,
                addr=getattr(addr, "host", addr),
                why=why,
                refused=self.refused,
            )

    def _admit(self, addr: Any) -> bool:
        """False (and counted, logged) when a connection limit is reached."""
        broker = self.broker
        if (
            len(self.open) >= self.listener.max_connections
            or broker.openSockets >= broker.settings.limits.max_connections
        ):
            self._refuse(addr, "connection limit reached")
            return False
        return True

    def _admitPeer(self, addr: Any) -> bool:
        """False (and counted, logged) for a socket over C{[limits] connection_rate}
        or from a banned address (Kafka and AMQP; MQTT checks bans at CONNECT)."""
        why = securityOf(self.broker).admitAddress(getattr(addr, "host", None))
        if why is not None:
            self._refuse(addr, why)
            return False
        return True

    def _track(self, protocol: Any) -> Any:
        """Count C{protocol} as open on this listener and the node."""
        protocol.factory = self
        self.open.add(protocol)
        self.accepted += 1
        self.broker.openSockets += 1
        return protocol

    def connectionEnded(self, protocol: Any) -> None:
        """Called by the protocol when its connection is lost."""
        if protocol in self.open:
            self.open.discard(protocol)
            self.broker.openSockets -= 1
