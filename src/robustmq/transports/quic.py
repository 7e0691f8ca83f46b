"""QUIC listeners: aioquic's sans-IO connections driven from a Twisted DatagramProtocol.

One UDP socket serves every QUIC connection of a listener.
L{QuicServerProtocol} routes each datagram to its connection by destination
connection id, creates a connection for a new client's Initial packet, and
sends whatever aioquic asks to send to the address aioquic names (so a client
that changes address, connection migration, keeps its session).

The client's first bidirectional stream carries the session: on its first
bytes the listener's protocol factory builds a protocol whose transport is
the L{QuicStreamConnection}, and from then on that protocol reads and writes
the stream as if it were a TCP connection.  ALPN must be the protocol name
(C{mqtt}); aioquic ends a handshake that offers none of ours.

Bounds and back-pressure:

  - connections (including half-open handshakes) per listener:
    C{max_connections}; more Initial packets are ignored;
  - while the protocol above has stopped reading (C{pauseProducing}), stream
    bytes are held up to C{quic_receive_buffer}; beyond it the connection's
    datagrams are dropped unprocessed and the client retransmits them later;
  - bytes written but not yet acknowledged by the client: above
    C{quic_send_buffer} the protocol's producer is paused, and resumed below
    half of it (as Twisted's TCP transport does with its write buffer);
  - idle connections close after C{quic_idle_timeout} seconds (aioquic).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.config import ListenerSettings
from robustmq.transports.tls import loadCertificateChain, reloadedOrNone

#: Application error code sent when the listener refuses or the protocol aborts.
APPLICATION_ERROR = 0x1

#: Seconds L{QuicListeningPort.stopListening} waits for connections to finish closing.
_STOP_GRACE = 3.0

#: Seconds a closing stream may take to have its last bytes acknowledged.
_FLUSH_GRACE = 5.0


class QuicServerSettings:
    """The aioquic configuration of one listener; L{reload} re-reads the certificate."""

    log = Logger()

    def __init__(self, listener: ListenerSettings, key: str) -> None:
        self.listener = listener
        self.key = key
        self.configuration = self._build()

    def _build(self) -> QuicConfiguration:
        """A fresh configuration from the files on disk; ConfigError naming the key if they are bad."""
        listener, key = self.listener, self.key
        chain, privateKey = loadCertificateChain(
            listener.certfile, listener.keyfile, f"{key}.certfile", f"{key}.keyfile"
        )
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=list(listener.alpn or (listener.protocol,)),
            idle_timeout=listener.quic_idle_timeout,
        )
        configuration.certificate = chain[0]
        configuration.certificate_chain = chain[1:]
        configuration.private_key = privateKey
        return configuration

    def reload(self) -> None:
        """Use the certificate files as they are now for new connections."""
        configuration = reloadedOrNone(self._build, self.listener, self.log, "QUIC")
        if configuration is not None:
            self.configuration = configuration


def _address(addr: Any) -> IPv4Address | IPv6Address:
    host, port = addr[0], addr[1]
    if ipaddress.ip_address(host.split("%")[0]).version == 6:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


@implementer(ITransport, IConsumer, IPushProducer)
class QuicStreamConnection:
    """One QUIC connection; its first client bidirectional stream is a protocol's transport.

    @ivar peerAddress: where the client is now (follows migration).
    """

    log = Logger()

    def __init__(self, server: QuicServerProtocol, quic: QuicConnection, addr: Any) -> None:
        self.server = server
        self.quic = quic
        self.peerAddress = addr
        self.streamId: int | None = None
        self.protocol: IProtocol | None = None
        self.producer: Any = None
        self.disconnecting = False
        self._producerPaused = False
        self._reading = True
        self._held: list[bytes] = []
        self._heldBytes = 0
        self._streamEnded = False
        self._timer: Any = None
        self._timerAt: float | None = None
        self._flushDeadline: float | None = None
        self._lost = False
        self.terminated = False

    # Driving aioquic

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self._heldBytes >= self.server.listener.quic_receive_buffer:
            # The protocol above is not reading and its buffer is full: let the
            # client retransmit later instead of holding more.
            self.server.droppedDatagrams += 1
            return
        self.quic.receive_datagram(data, addr, now=self.server.reactor.seconds())
        self._afterIO()

    def _onTimer(self) -> None:
        self._timer = None
        self._timerAt = None
        self.quic.handle_timer(now=self.server.reactor.seconds())
        self._afterIO()

    def _afterIO(self) -> None:
        """Handle aioquic's events, send its datagrams, re-arm its timer."""
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            self._handleEvent(event)
            event = quic.next_event()
        self.transmit()

    def transmit(self) -> None:
        """Send what aioquic has to send and re-arm the timer it asks for."""
        reactor = self.server.reactor
        now = reactor.seconds()
        if self._flushDeadline is not None and (self._flushed() or now >= self._flushDeadline):
            self._flushDeadline = None
            self.quic.close(error_code=QuicErrorCode.NO_ERROR)
        for data, addr in self.quic.datagrams_to_send(now=now):
            self.peerAddress = addr
            self.server.send(data, addr)
        self._checkSendBuffer()
        timerAt = self.quic.get_timer()
        if self._flushDeadline is not None:
            timerAt = self._flushDeadline if timerAt is None else min(timerAt, self._flushDeadline)
        if self._timer is not None and self._timerAt != timerAt:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timerAt is not None and not self.terminated:
            self._timer = reactor.callLater(max(0.0, timerAt - now), self._onTimer)
        self._timerAt = timerAt

    def _handleEvent(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._streamData(event)
        elif isinstance(event, events.ConnectionIdIssued):
            self.server.connections[event.connection_id] = self
        elif isinstance(event, events.ConnectionIdRetired):
            if self.server.connections.get(event.connection_id) is self:
                del self.server.connections[event.connection_id]
        elif isinstance(event, events.StreamReset) and event.stream_id == self.streamId:
            self._streamEnded = True
            self._deliverLost(ConnectionLost(f"QUIC stream reset (error {event.error_code})"))
            self.quic.close(error_code=QuicErrorCode.NO_ERROR)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.server.forget(self)
            if event.error_code == QuicErrorCode.NO_ERROR:
                why: Exception = ConnectionDone(event.reason_phrase or "QUIC connection closed")
            else:
                why = ConnectionLost(
                    f"QUIC connection closed: error {event.error_code} {event.reason_phrase}"
                )
            self._deliverLost(why)

    def _streamData(self, event: events.StreamDataReceived) -> None:
        if self.streamId is None:
            # The client's first bidirectional stream (ids 0, 4, 8... are client bidi).
            if event.stream_id % 4 != 0 or self.disconnecting:
                return
            self.streamId = event.stream_id
            protocol = self.server.factory.buildProtocol(_address(self.peerAddress))
            if protocol is None:
                self.quic.close(error_code=APPLICATION_ERROR, reason_phrase="connection refused")
                return
            self.protocol = protocol
            protocol.makeConnection(self)
        if event.stream_id != self.streamId:
            return
        if event.data:
            self._held.append(event.data)
            self._heldBytes += len(event.data)
        if event.end_stream:
            self._streamEnded = True
        self._deliver()

    def _deliver(self) -> None:
        """Give held stream bytes to the protocol while it is reading."""
        while self._held and self._reading and not self._lost and not self.disconnecting:
            data = self._held.pop(0)
            self._heldBytes -= len(data)
            assert self.protocol is not None
            self.protocol.dataReceived(data)
        if self._streamEnded and not self._held and not self._lost and not self.disconnecting:
            # The client finished its side: the session is over.
            self._deliverLost(ConnectionDone("QUIC stream finished by the client"))
            self.loseConnection()

    def _deliverLost(self, reason: Exception) -> None:
        if self._lost:
            return
        self._lost = True
        self._held.clear()
        self._heldBytes = 0
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(reason))

    # Write side

    def _unacknowledged(self) -> int:
        stream = getattr(self.quic, "_streams", {}).get(self.streamId)
        if stream is None:
            return 0
        return len(getattr(stream.sender, "_buffer", b""))

    def _flushed(self) -> bool:
        stream = getattr(self.quic, "_streams", {}).get(self.streamId)
        return stream is None or bool(stream.sender.is_finished)

    def _checkSendBuffer(self) -> None:
        producer = self.producer
        if producer is None:
            return
        pending = self._unacknowledged()
        limit = self.server.listener.quic_send_buffer
        if not self._producerPaused and pending > limit:
            self._producerPaused = True
            producer.pauseProducing()
        elif self._producerPaused and pending <= limit // 2:
            self._producerPaused = False
            producer.resumeProducing()

    # ITransport

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.terminated or self.streamId is None or not data:
            return
        self.quic.send_stream_data(self.streamId, data)
        self.server.scheduleTransmit(self)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Finish the stream after what was written, then close once it is acknowledged."""
        if self.disconnecting or self.terminated:
            return
        self.disconnecting = True
        if self.streamId is not None:
            try:
                self.quic.send_stream_data(self.streamId, b"", end_stream=True)
            except Exception:
                pass  # the stream's send side is already finished or reset
        self._flushDeadline = self.server.reactor.seconds() + _FLUSH_GRACE
        self.transmit()
        # Like TCP: connectionLost comes later, never from inside loseConnection.
        self.server.reactor.callLater(0, self._deliverLost, ConnectionDone("closed by the server"))

    def abortConnection(self) -> None:
        if self.terminated:
            return
        self.disconnecting = True
        self._flushDeadline = None
        self.quic.close(error_code=APPLICATION_ERROR, reason_phrase="aborted")
        self.transmit()
        self.server.reactor.callLater(0, self._deliverLost, ConnectionAborted())

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _address(self.peerAddress)

    def getHost(self) -> Any:
        return self.server.transport.getHost()

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self._producerPaused = False

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer: whether the protocol above reads

    def pauseProducing(self) -> None:
        self._reading = False

    def resumeProducing(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._deliver()

    def stopProducing(self) -> None:
        self.abortConnection()


class QuicServerProtocol(DatagramProtocol):
    """The UDP side of a QUIC listener: routes datagrams to connections.

    @ivar connections: connection id -> connection (several ids per connection).
    @ivar droppedDatagrams: datagrams dropped because a connection's receive
        buffer was full.
    """

    log = Logger()
    noisy = False

    def __init__(
        self, reactor: Any, listener: ListenerSettings, settings: QuicServerSettings, factory: Any
    ) -> None:
        self.reactor = reactor
        self.listener = listener
        self.settings = settings
        self.factory = factory
        self.connections: dict[bytes, QuicStreamConnection] = {}
        self.live: set[QuicStreamConnection] = set()
        self.accepting = True
        self.droppedDatagrams = 0
        self.ignoredDatagrams = 0
        self._pending: list[QuicStreamConnection] = []
        self._flushCall: Any = None
        self._idle: list[defer.Deferred[None]] = []

    def send(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.write(data, addr)

    def scheduleTransmit(self, connection: QuicStreamConnection) -> None:
        """Coalesce writes: send what a connection has queued once per reactor turn."""
        self._pending.append(connection)
        if self._flushCall is None:
            self._flushCall = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        pending, self._pending = self._pending, []
        for connection in dict.fromkeys(pending):
            if not connection.terminated:
                connection.transmit()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.settings.configuration.connection_id_length
            )
        except ValueError:
            self.ignoredDatagrams += 1
            return
        configuration = self.settings.configuration
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in configuration.supported_versions
        ):
            self.send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=configuration.supported_versions,
                ),
                addr,
            )
            return
        connection = self.connections.get(header.destination_cid)
        if connection is None:
            if (
                not self.accepting
                or header.packet_type != QuicPacketType.INITIAL
                or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
            ):
                self.ignoredDatagrams += 1
                return
            if len(self.live) >= self.listener.max_connections:
                self.ignoredDatagrams += 1
                if self.ignoredDatagrams % 100 == 1:
                    self.log.warn(
                        "{listener}: QUIC connection from {addr} ignored: connection limit reached",
                        listener=self.listener.label,
                        addr=addr[0],
                    )
                return
            quic = QuicConnection(
                configuration=configuration,
                original_destination_connection_id=header.destination_cid,
            )
            connection = QuicStreamConnection(self, quic, addr)
            self.connections[header.destination_cid] = connection
            self.connections[quic.host_cid] = connection
            self.live.add(connection)
        connection.datagramReceived(data, addr)

    def forget(self, connection: QuicStreamConnection) -> None:
        """A connection has terminated: drop its ids."""
        self.live.discard(connection)
        for cid in [c for c, conn in self.connections.items() if conn is connection]:
            del self.connections[cid]
        if not self.live and self._idle:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def whenIdle(self) -> defer.Deferred[None]:
        """Fires when no connection is left (at once if none is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if not self.live:
            d.callback(None)
        else:
            self._idle.append(d)
        return d


@implementer(IListeningPort)
class QuicListeningPort:
    """A QUIC listener's UDP port, stopped once its connections have closed."""

    def __init__(self, server: QuicServerProtocol, udpPort: Any) -> None:
        self.server = server
        self.udpPort = udpPort

    def startListening(self) -> None:
        pass

    def getHost(self) -> Any:
        return self.udpPort.getHost()

    def stopListening(self) -> defer.Deferred[None]:
        """Refuse new connections; close the socket when the open ones are gone.

        The broker closes its clients after the listeners stop, and QUIC needs
        the socket to say goodbye, so the socket stays until then (at most a
        few seconds).
        """
        server = self.server
        server.accepting = False
        idle = server.whenIdle()
        idle.addTimeout(_STOP_GRACE, server.reactor)
        idle.addErrback(lambda _: None)
        idle.addCallback(lambda _: self.udpPort.stopListening())
        return idle


class QuicServerEndpoint:
    """Listens for QUIC on a listener's UDP address (endpoint-like: C{listen(factory)})."""

    def __init__(
        self,
        reactor: Any,
        listener: ListenerSettings,
        settings: QuicServerSettings,
        fileno: int | None = None,
    ):
        """@param fileno: a bound UDP socket to adopt instead of binding one (a
        worker process of a node, docs/workers.md)."""
        self.reactor = reactor
        self.listener = listener
        self.settings = settings
        self.fileno = fileno

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        server = QuicServerProtocol(self.reactor, self.listener, self.settings, factory)
        try:
            factory.doStart()
            if self.fileno is not None:
                family = socket.AF_INET6 if ":" in self.listener.bind else socket.AF_INET
                udpPort = self.reactor.adoptDatagramPort(self.fileno, family, server)
                os.close(self.fileno)  # adopting duplicated it
            else:
                udpPort = self.reactor.listenUDP(
                    self.listener.port, server, interface=self.listener.bind
                )
        except Exception:
            return defer.fail()
        return defer.succeed(QuicListeningPort(server, udpPort))


__all__ = [
    "QuicListeningPort",
    "QuicServerEndpoint",
    "QuicServerProtocol",
    "QuicServerSettings",
    "QuicStreamConnection",
]
