"""WebSocket listeners (ws and wss) through autobahn, carrying any stream protocol.

The protocol above (MQTT) sees an ordinary stream transport,
L{WebSocketStreamTransport}: what it writes goes out as one binary message,
and the payload of every binary frame the client sends is handed to its
C{dataReceived} as it arrives, frame by frame and without assembling whole
messages, so a packet may be split across frames and a frame may hold several
packets.  autobahn's own wrapping factory is not used because it lacks what
we need here: producer registration for back-pressure, the real
C{connectionLost} reason, and a bound on the opening handshake.

Back-pressure: the protocol above registers itself as the streaming producer
of the underlying TCP (or TLS) transport, so when a slow client lets that
transport's buffer fill the protocol is paused exactly as over plain TCP, and
its C{pauseProducing} stops reading the socket.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.config import ListenerSettings

#: WebSocket subprotocols accepted, in preference order (a client may also offer none).
SUBPROTOCOLS = ("mqtt", "mqttv3.1")

#: Close code for a text frame (MQTT-6.0.0-1: only binary frames carry MQTT).
_UNSUPPORTED_DATA = 1003


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketStreamTransport:
    """What the protocol above a WebSocket sees as its transport."""

    def __init__(self, ws: StreamWebSocketProtocol) -> None:
        self._ws = ws

    @property
    def _raw(self) -> Any:
        return self._ws.transport

    def write(self, data: bytes) -> None:
        ws = self._ws
        if ws.state == ws.STATE_OPEN:
            ws.sendMessage(data, isBinary=True)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Send a WebSocket close after what was written; the client's reply ends TCP."""
        ws = self._ws
        if ws.state == ws.STATE_OPEN:
            ws.sendClose(1000)
        elif ws.state != ws.STATE_CLOSED and self._raw is not None:
            self._raw.loseConnection()

    def abortConnection(self) -> None:
        if self._raw is not None:
            self._raw.abortConnection()

    def getPeer(self) -> Any:
        return self._raw.getPeer()

    def getHost(self) -> Any:
        return self._raw.getHost()

    @property
    def certificateUsername(self) -> str | None:
        """The client certificate's username when WSS runs over mutual TLS."""
        return getattr(self._raw, "certificateUsername", None)

    # IConsumer: the producer goes straight to the socket transport.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._raw.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._raw is not None:
            self._raw.unregisterProducer()

    # IPushProducer: stop and resume reading the socket.
    def pauseProducing(self) -> None:
        if self._raw is not None:
            self._raw.pauseProducing()

    def resumeProducing(self) -> None:
        if self._raw is not None:
            self._raw.resumeProducing()

    def stopProducing(self) -> None:
        if self._raw is not None:
            self._raw.stopProducing()


class StreamWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying the byte stream of C{wrapped}."""

    log = Logger()
    factory: StreamWebSocketFactory

    def __init__(self, wrapped: IProtocol) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.subprotocol: str | None = None
        self._opened = False
        self._rejecting = False
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.state == self.STATE_CONNECTING:
            limit = self.factory.listener.ws_max_handshake_size
            if len(self.data) > limit and self.transport is not None:
                self.log.info(
                    "{listener}: opening handshake from {peer} larger than {limit} bytes: closing",
                    listener=self.factory.listener.label,
                    peer=self.peer,
                    limit=limit,
                )
                self.transport.abortConnection()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        listener = self.factory.listener
        if request.path != listener.ws_path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no endpoint at {request.path}")
        offered = request.protocols
        if not offered:
            return None
        for name in SUBPROTOCOLS:
            if name in offered:
                self.subprotocol = name
                return name
        raise ConnectionDeny(
            ConnectionDeny.BAD_REQUEST,
            f"none of the offered subprotocols {offered} is one of {list(SUBPROTOCOLS)}",
        )

    def onOpen(self) -> None:
        self._opened = True
        self.wrapped.makeConnection(WebSocketStreamTransport(self))

    def onMessageBegin(self, isBinary: bool) -> None:
        if not isBinary and not self._rejecting:
            self._rejecting = True
            self.log.info(
                "{listener}: text frame from {peer}: closing (MQTT-6.0.0-1)",
                listener=self.factory.listener.label,
                peer=self.peer,
            )
            # sendClose() only takes application codes; this is a protocol-level close.
            self.sendCloseFrame(_UNSUPPORTED_DATA, b"binary frames only", isReply=False)

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._opened and not self._rejecting and not self._lost:
            self.wrapped.dataReceived(bytes(payload))

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self._lost:
            self._lost = True
            # Also for a protocol that never got a transport: its factory counts it as open.
            self.wrapped.connectionLost(reason)


class StreamWebSocketFactory(WebSocketServerFactory):
    """Accepts WebSocket connections and builds the wrapped protocol for each.

    The wrapped factory is asked at TCP accept time, so its connection limit
    refuses a socket before any HTTP is read.
    """

    protocol = StreamWebSocketProtocol
    noisy = False

    def __init__(
        self,
        listener: ListenerSettings,
        wrapped: IProtocolFactory,
        secure: bool,
        openTimeout: float,
    ) -> None:
        scheme = "wss" if secure else "ws"
        super().__init__(url=f"{scheme}://localhost{listener.ws_path}", server="RobustMQ")
        self.listener = listener
        self.wrapped = wrapped
        self.setProtocolOptions(
            webStatus=False,
            openHandshakeTimeout=openTimeout,
            closeHandshakeTimeout=1,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            autoFragmentSize=0,
        )

    def doStart(self) -> None:
        self.wrapped.doStart()
        super().doStart()

    def doStop(self) -> None:
        super().doStop()
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> StreamWebSocketProtocol | None:
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        protocol = self.protocol(inner)
        protocol.factory = self
        return protocol


@implementer(IStreamServerEndpoint)
class WebSocketServerEndpoint:
    """Listens on C{inner} (TCP, or TLS for wss) with WebSocket framing around C{factory}."""

    def __init__(
        self,
        inner: IStreamServerEndpoint,
        listener: ListenerSettings,
        secure: bool,
        openTimeout: float = 10.0,
    ) -> None:
        self.inner = inner
        self.listener = listener
        self.secure = secure
        self.openTimeout = openTimeout

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        wsFactory = StreamWebSocketFactory(self.listener, factory, self.secure, self.openTimeout)
        return self.inner.listen(wsFactory)


__all__ = [
    "SUBPROTOCOLS",
    "StreamWebSocketFactory",
    "StreamWebSocketProtocol",
    "WebSocketServerEndpoint",
    "WebSocketStreamTransport",
]
