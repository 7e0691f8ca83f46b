"""Closing a connection so that the peer reads why: a bounded linger.

When a server sends its last word (an MQTT DISCONNECT or error CONNACK, an
AMQP Connection.Close, a Kafka error response) and closes the socket at
once while the client is still sending, the client's further bytes reach a
closed socket: the kernel answers with a reset, and a client that is busy
writing sees "connection reset" or "broken pipe" before it ever reads the
reason.  A lingering close avoids that:

  1. what was written is flushed and the sending side is shut down: a TCP
     half-close (C{loseWriteConnection}); over TLS, WebSocket and QUIC, the
     protocol's own close (TLS close_notify, a WebSocket Close frame, the
     stream's FIN), each of which keeps reading until the peer answers;
  2. whatever the peer still sends is read and thrown away (the protocol
     above ignores input once it is closing);
  3. the connection ends when the peer closes its side, or at the latest
     after the linger time, when it is aborted.

Lingering sockets are bounded: in time by the protocol's linger setting, in
number by C{[limits] max_lingering} for the whole node (beyond it a close is
immediate, as without a linger).  They are no longer clients: a protocol
ends the connection's session and its registration with the broker when
the linger starts, not when the socket finally closes.  Nothing waits for
them at shutdown.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

__all__ = ["Linger", "linger"]


class Linger:
    """One connection's lingering close: its deadline and its place in the node's count.

    The protocol calls L{ended} from its C{connectionLost}.
    """

    __slots__ = ("_call", "_registry")

    log = Logger()

    def __init__(self, call: Any, registry: set[Any]) -> None:
        self._call = call
        self._registry = registry
        registry.add(self)

    def ended(self) -> None:
        """The connection is gone: cancel the deadline and stop counting it."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._registry.discard(self)


def _expired(transport: Any, registry: set[Any], entry: list[Linger | None]) -> None:
    linger = entry[0]
    if linger is not None:
        linger._call = None
        registry.discard(linger)
    transport.abortConnection()


def linger(
    transport: Any, reactor: Any, seconds: float, registry: set[Any], limit: int
) -> Linger | None:
    """Shut down C{transport}'s sending side, keep reading, and end it within C{seconds}.

    @param registry: the node's lingering connections (C{broker.lingering}).
    @param limit: how many may linger at once (C{[limits] max_lingering}).
    @return: the L{Linger} (the protocol calls its C{ended} when the
        connection is lost), or None when the connection was closed at once
        instead (no linger configured, or the node is at its bound).
    """
    if seconds <= 0 or len(registry) >= limit or getattr(transport, "disconnecting", False):
        transport.loseConnection()
        return None
    # Our protocol is the transport's push producer: with a paused producer
    # Twisted would wait for it before shutting the sending side down.
    try:
        transport.unregisterProducer()
    except Exception:  # noqa: BLE001 - a transport without a producer to unregister
        pass
    halfCloseable = IHalfCloseableDescriptor.providedBy(transport) and not isinstance(
        transport, ProtocolWrapper
    )
    if halfCloseable:
        # Plain TCP: FIN after the buffered bytes, the receiving side stays open.
        transport.loseWriteConnection()
    else:
        # TLS (close_notify, then reads until the peer's), WebSocket (a Close
        # frame, then reads until the peer's), QUIC (the stream's FIN).
        transport.loseConnection()
    # Keep reading (the protocol may have paused the socket), so that the
    # peer's bytes are consumed instead of answered with a reset.
    try:
        transport.resumeProducing()
    except Exception:  # noqa: BLE001 - a transport already closing
        pass
    entry: list[Linger | None] = [None]
    call = reactor.callLater(seconds, _expired, transport, registry, entry)
    entry[0] = result = Linger(call, registry)
    return result
