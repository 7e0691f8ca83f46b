"""The AMQP 0-9-1 server connection: negotiation, heartbeats, channels, close.

Frames come from the sans-IO L{FrameParser}; connection-class methods are
handled here (C{handle_connection_<method>}), everything else goes to the
addressed L{AMQPChannel}.  Errors follow RabbitMQ 4: soft errors close the
channel (Channel.Close with 403/404/405/406), hard errors the connection
(Connection.Close with 320/501-506/530/540/541), and after sending Close
only the matching Close-Ok is read.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from robustmq import __version__
from robustmq.core.auth import Credentials
from robustmq.core.backpressure import PublisherGate
from robustmq.core.security import AMQPAccess, securityOf
from robustmq.protocols._linger import Linger, linger
from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._channel import AMQPChannel
from robustmq.protocols.amqp._exceptions import AMQPError, ConnectionError
from robustmq.protocols.amqp._frames import (
    PROTOCOL_HEADER,
    FrameError,
    FrameParser,
    Heartbeat,
    MethodFrame,
    ProtocolHeader,
    encodeContent,
    encodeHeartbeat,
    encodeMethod,
)
from robustmq.protocols.amqp._types import DecodeError, decodeTable

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.protocols.amqp._server import AMQPServer

__all__ = ["AMQPServerProtocol", "SERVER_CAPABILITIES"]

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}

_LOOPBACK = ("127.", "::1", "::ffff:127.")

#: bytes a connection holds during a batch before handing them to its transport
WRITE_BATCH_BYTES = 65536


@implementer(IPushProducer)
class AMQPServerProtocol(Protocol):
    """One client connection."""

    log = Logger()

    def __init__(self, server: AMQPServer, listener: ListenerSettings, reactor: Any) -> None:
        self.server = server
        self.settings = server.settings
        self.listener = listener
        self.reactor = reactor
        self.parser = FrameParser(max(self.settings.frame_max, _spec.FRAME_MIN_SIZE))
        self.state = "header"
        self.channels: dict[int, AMQPChannel] = {}
        self.closingChannels: set[int] = set()
        self.exclusiveQueues: set[Any] = set()
        self.clientProperties: dict[str, Any] = {}
        self.clientCapabilities: dict[str, Any] = {}
        self.vhost: Any = None
        self.user: str | None = None
        #: this user's permissions in the open virtual host (RabbitMQ's model)
        self.access: AMQPAccess | None = None
        #: what the authenticators learned (superuser, ...)
        self._attributes: dict[str, Any] = {}
        self.frameMax = self.settings.frame_max
        self.channelMax = self.settings.channel_max
        self.heartbeat = 0
        self.paused = False
        self.blocked = False
        self.readPaused = False
        self.closed = False
        self._lastRead = 0.0
        self._lastWrite = 0.0
        self._heartbeatCall: Any = None
        self._timeoutCall: Any = None
        self._closeTimer: Any = None
        #: while closing: the bounded wait for Close-Ok, counted node-wide
        self._linger: Linger | None = None
        self.factory: Any = None
        self.peer = ""
        #: frames written during the current batch (see L{AMQPServer.batch}), not yet sent
        self._out: list[bytes] = []
        self._outBytes = 0
        #: authorization in the MQTT topic namespace (the topic exchange), once logged in
        self._topicAccess: Any = None
        #: pauses reading while MQTT sessions (or other targets) this publisher filled drain
        self.gate = PublisherGate(self._pauseForTargets, self._resumeAfterTargets)

    # -- transport ------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if hasattr(self.transport, "setTcpNoDelay"):
            # Deliveries and confirms are small writes: Nagle would hold them
            # back until the client's delayed ACK (tens of milliseconds).
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._timeoutCall = self.reactor.callLater(
            self.settings.handshake_timeout, self._handshakeTimeout
        )

    def _handshakeTimeout(self) -> None:
        self._timeoutCall = None
        if self.state != "open":
            self.log.info("AMQP {peer}: handshake timed out", peer=self.peer)
            self.transport.abortConnection()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        """The socket's write buffer is full: stop deliveries to this connection."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The socket drained: deliveries may continue."""
        self.paused = False
        with self.server.batch():
            for channel in list(self.channels.values()):
                channel.kick()

    def stopProducing(self) -> None:
        self.paused = True

    def write(self, data: bytes) -> None:
        """Write raw bytes and note the time (for heartbeats).

        Inside a batch (while the node handles a read, see L{AMQPServer.batch})
        the bytes are held and handed to the transport once when the batch
        ends, so a read that publishes a hundred messages costs each consumer
        connection one transport write, not a hundred.
        """
        if self.closed:
            return
        server = self.server
        server.broker.stats.amqpBytesSent += len(data)
        if server.batching:
            out = self._out
            if not out:
                server.dirty.append(self)
            out.append(data)
            self._outBytes += len(data)
            if self._outBytes >= WRITE_BATCH_BYTES:
                # Hand over now: the transport's buffer is what pauses us
                # (pauseProducing) when the client reads too slowly.
                self.flushWrites()
            return
        self._lastWrite = self.reactor.seconds()
        self.transport.write(data)  # type: ignore[union-attr]

    def flushWrites(self) -> None:
        """Hand the bytes held by the current batch to the transport."""
        out = self._out
        if out:
            self._out = []
            self._outBytes = 0
            transport = self.transport
            if transport is not None and not getattr(transport, "disconnected", False):
                self._lastWrite = self.reactor.seconds()
                transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _lose(self) -> None:
        """Close the socket after the bytes already written."""
        self.flushWrites()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def sendMethod(self, channel: int, method: _spec.Method) -> None:
        """Write one method frame."""
        self.write(encodeMethod(channel, method))

    def sendContent(self, channel: int, method: _spec.Method, propsRaw: bytes, body: bytes) -> None:
        """Write a content-bearing method with its header and body frames."""
        self.write(encodeContent(channel, method, propsRaw, body, self.frameMax))

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        server = self.server
        server.broker.stats.amqpBytesReceived += len(data)
        server.batching += 1
        try:
            self._dataReceived(data)
        finally:
            server.batching -= 1
            if not server.batching:
                server.flushWrites()

    def _dataReceived(self, data: bytes) -> None:
        self._lastRead = self.reactor.seconds()
        try:
            frames = self.parser.feed(data)
        except FrameError as e:
            self.log.info(
                "AMQP {peer}: {error} ({detail})", peer=self.peer, error=e.text, detail=e.detail
            )
            self._closeConnection(e.code, e.text, e.classId, e.methodId, abortAfterSend=True)
            return
        channels = self.channels
        for frame in frames:
            if self.closed:
                return
            try:
                ch = channels.get(frame.channel) if self.state == "open" else None
                if ch is not None:
                    ch.dispatch(frame)  # the hot path: a frame for an open channel
                else:
                    self._frameReceived(frame)
            except AMQPError as e:
                if e.hard or frame.channel == 0:  # type: ignore[union-attr]
                    self._closeConnection(e.code, e.text, e.classId, e.methodId)
                    return
                self._closeChannel(frame.channel, e)  # type: ignore[union-attr]
            except FrameError as e:
                self.log.info(
                    "AMQP {peer}: {error} ({detail})", peer=self.peer, error=e.text, detail=e.detail
                )
                self._closeConnection(e.code, e.text, e.classId, e.methodId, abortAfterSend=True)
                return
            except Exception:
                self.log.failure("AMQP {peer}: internal error", peer=self.peer)
                self._closeConnection(_spec.INTERNAL_ERROR, "INTERNAL_ERROR", 0, 0)
                return

    def _frameReceived(self, frame: Any) -> None:
        if isinstance(frame, ProtocolHeader):
            if not frame.valid:
                self.write(PROTOCOL_HEADER)
                self._lose()
                self.closed = True
                return
            self.state = "start"
            self.sendMethod(
                0,
                _spec.ConnectionStart(
                    0,
                    9,
                    {
                        "product": "RobustMQ",
                        "version": __version__,
                        "platform": "Python/Twisted",
                        "copyright": "RobustMQ contributors",
                        "information": "Licensed under the Apache License 2.0",
                        "cluster_name": self.server.broker.settings.node.id,
                        "capabilities": dict(SERVER_CAPABILITIES),
                    },
                    b"PLAIN AMQPLAIN EXTERNAL" if self._certificateUser() else b"PLAIN AMQPLAIN",
                    b"en_US",
                ),
            )
            return
        if isinstance(frame, Heartbeat):
            if frame.channel != 0:
                raise FrameError(_spec.FRAME_ERROR, "FRAME_ERROR - heartbeat on a non-zero channel")
            return
        channel = frame.channel
        if self.state == "closing":
            if isinstance(frame, MethodFrame) and isinstance(
                frame.method, _spec.ConnectionCloseOk | _spec.ConnectionClose
            ):
                if isinstance(frame.method, _spec.ConnectionClose):
                    self.sendMethod(0, _spec.ConnectionCloseOk())
                self._lose()
            return
        if channel == 0:
            if not isinstance(frame, MethodFrame):
                raise ConnectionError(
                    _spec.UNEXPECTED_FRAME, "UNEXPECTED_FRAME - content frame on channel 0"
                )
            method = frame.method
            if method.CLASS_ID != _spec.CONNECTION_CLASS_ID:
                raise ConnectionError(
                    _spec.COMMAND_INVALID,
                    f"COMMAND_INVALID - {method.NAME} on channel 0",
                    method.CLASS_ID,
                    method.METHOD_ID,
                )
            handler = getattr(self, "handle_" + method.NAME, None)
            if handler is None:
                raise ConnectionError(
                    _spec.COMMAND_INVALID,
                    f"COMMAND_INVALID - unexpected {method.NAME}",
                    method.CLASS_ID,
                    method.METHOD_ID,
                )
            handler(method)
            return
        if self.state != "open":
            raise ConnectionError(
                _spec.CHANNEL_ERROR, "CHANNEL_ERROR - channel used before Connection.Open"
            )
        ch = self.channels.get(channel)
        if ch is None:
            if channel in self.closingChannels:
                if isinstance(frame, MethodFrame) and isinstance(
                    frame.method, _spec.ChannelCloseOk
                ):
                    self.closingChannels.discard(channel)
                elif isinstance(frame, MethodFrame) and isinstance(
                    frame.method, _spec.ChannelClose
                ):
                    self.sendMethod(channel, _spec.ChannelCloseOk())
                return
            if isinstance(frame, MethodFrame) and isinstance(frame.method, _spec.ChannelOpen):
                if channel > self.channelMax:
                    raise ConnectionError(
                        _spec.CHANNEL_ERROR,
                        f"CHANNEL_ERROR - channel {channel} exceeds channel_max {self.channelMax}",
                        20,
                        10,
                    )
                self.channels[channel] = AMQPChannel(self, channel)
                self.sendMethod(channel, _spec.ChannelOpenOk(b""))
                return
            raise ConnectionError(
                _spec.CHANNEL_ERROR, f"CHANNEL_ERROR - expected 'channel.open' on channel {channel}"
            )
        if isinstance(frame, MethodFrame) and isinstance(frame.method, _spec.ChannelOpen):
            raise ConnectionError(
                _spec.CHANNEL_ERROR, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10
            )
        ch.dispatch(frame)

    # -- channels -------------------------------------------------------

    def _closeChannel(self, number: int, error: AMQPError) -> None:
        ch = self.channels.pop(number, None)
        if ch is not None:
            ch.teardown()
        self.closingChannels.add(number)
        self.log.debug(
            "AMQP {peer}: channel {n} closed: {text}", peer=self.peer, n=number, text=error.text
        )
        self.sendMethod(
            number, _spec.ChannelClose(error.code, error.text, error.classId, error.methodId)
        )

    def channelClosed(self, channel: AMQPChannel) -> None:
        """The client closed C{channel} (Close-Ok already sent)."""
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]
        channel.teardown()

    # -- negotiation ----------------------------------------------------

    def handle_connection_start_ok(self, m: _spec.ConnectionStartOk) -> None:
        if self.state != "start":
            raise ConnectionError(
                _spec.COMMAND_INVALID, "COMMAND_INVALID - unexpected start-ok", 10, 11
            )
        self.clientProperties = m.client_properties or {}
        caps = self.clientProperties.get("capabilities")
        self.clientCapabilities = caps if isinstance(caps, dict) else {}
        username, password = self._credentials(m.mechanism, m.response)
        self.state = "auth"
        d = defer.ensureDeferred(self._authenticate(m.mechanism, username, password))
        d.addErrback(lambda f: self.log.failure("AMQP authentication failed", f))

    def _certificateUser(self) -> str | None:
        """The name a verified client certificate stands for (mutual TLS), if any."""
        return getattr(self.transport, "certificateUsername", None)

    @property
    def username(self) -> str | None:
        """The logged-in user (for listings and bans)."""
        return self.user

    def kick(self, why: str) -> None:
        """A ban now covers this connection: Connection.Close 320 CONNECTION_FORCED."""
        self._closeConnection(_spec.CONNECTION_FORCED, f"CONNECTION_FORCED - {why}", 0, 0)

    def _credentials(self, mechanism: str, response: bytes) -> tuple[str, bytes | None]:
        if mechanism == "EXTERNAL":
            # The identity is the verified client certificate (RabbitMQ's
            # rabbitmq_auth_mechanism_ssl); the response carries nothing we use.
            certUser = self._certificateUser()
            if certUser is None:
                raise ConnectionError(
                    _spec.ACCESS_REFUSED,
                    "ACCESS_REFUSED - EXTERNAL needs a verified client certificate",
                    10,
                    11,
                )
            return certUser, None
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                raise ConnectionError(
                    _spec.ACCESS_REFUSED, "ACCESS_REFUSED - malformed PLAIN response", 10, 11
                )
            return parts[1].decode("utf-8", "replace"), parts[2]
        if mechanism == "AMQPLAIN":
            try:
                table, _ = decodeTable(struct.pack(">I", len(response)) + response, 0)
            except DecodeError:
                raise ConnectionError(
                    _spec.ACCESS_REFUSED, "ACCESS_REFUSED - malformed AMQPLAIN response", 10, 11
                ) from None
            login = table.get("LOGIN", "")
            password = table.get("PASSWORD", "")
            if isinstance(password, str):
                password = password.encode()
            return str(login), bytes(password)
        raise ConnectionError(
            _spec.ACCESS_REFUSED,
            f"ACCESS_REFUSED - unsupported authentication mechanism '{mechanism}'",
            10,
            11,
        )

    async def _authenticate(self, mechanism: str, username: str, password: bytes | None) -> None:
        s = self.settings
        host = self.peer.rsplit(":", 1)[0]
        if username == s.default_user and password is not None:
            ok = password == s.default_pass.encode() and (
                not s.default_user_loopback_only
                or host.startswith(_LOOPBACK)
                or host == "localhost"
            )
        else:
            creds = Credentials(
                protocol="amqp",
                clientId=str(self.clientProperties.get("connection_name", self.peer)),
                username=username,
                password=password,
                peerHost=host,
                listener=self.listener.label,
                certificateUsername=self._certificateUser(),
            )
            ok = await self.server.broker.auth.authenticate(creds)
            self._attributes = dict(creds.attributes)
        if self.closed:
            return
        if ok:
            why = securityOf(self.server.broker).admitPeer(username, host)
            if why is not None:
                self.log.warn(
                    "AMQP {peer}: login of {user} refused: {why}",
                    peer=self.peer,
                    user=username,
                    why=why,
                )
                ok = False
        if not ok:
            self.log.info(
                "AMQP {peer}: login refused for user {user}", peer=self.peer, user=username
            )
            self._closeConnection(
                _spec.ACCESS_REFUSED,
                f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. "
                "For details see the broker logfile.",
                0,
                0,
            )
            return
        await self.server.start()  # durable queues are back before anyone uses them
        if self.closed:
            return
        self.user = username
        self.state = "tune"
        self.sendMethod(
            0,
            _spec.ConnectionTune(
                self.settings.channel_max, self.settings.frame_max, self.settings.heartbeat
            ),
        )

    def handle_connection_tune_ok(self, m: _spec.ConnectionTuneOk) -> None:
        if self.state != "tune":
            raise ConnectionError(
                _spec.COMMAND_INVALID, "COMMAND_INVALID - unexpected tune-ok", 10, 31
            )
        s = self.settings
        frameMax = m.frame_max or s.frame_max
        if frameMax < _spec.FRAME_MIN_SIZE or frameMax > s.frame_max:
            raise ConnectionError(
                _spec.NOT_ALLOWED,
                f"NOT_ALLOWED - frame_max={frameMax} outside {_spec.FRAME_MIN_SIZE}..{s.frame_max}",
                10,
                31,
            )
        self.frameMax = frameMax
        self.parser.frameMax = frameMax
        self.channelMax = min(m.channel_max or s.channel_max, s.channel_max)
        self.heartbeat = m.heartbeat
        self.state = "open-wait"
        if self.heartbeat:
            self._heartbeatCall = self.reactor.callLater(self.heartbeat / 2.0, self._heartbeatTick)

    def _heartbeatTick(self) -> None:
        self._heartbeatCall = None
        if self.closed:
            return
        now = self.reactor.seconds()
        if now - self._lastRead > 2 * self.heartbeat:
            self.log.info("AMQP {peer}: missed heartbeats from client, closing", peer=self.peer)
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if now - self._lastWrite >= self.heartbeat / 2.0:
            self.write(encodeHeartbeat())
        self._heartbeatCall = self.reactor.callLater(self.heartbeat / 2.0, self._heartbeatTick)

    def handle_connection_open(self, m: _spec.ConnectionOpen) -> None:
        if self.state != "open-wait":
            raise ConnectionError(
                _spec.COMMAND_INVALID, "COMMAND_INVALID - unexpected open", 10, 40
            )
        name = m.virtual_host or "/"
        if name not in self.settings.vhosts and name != self.settings.default_vhost:
            raise ConnectionError(
                _spec.NOT_ALLOWED, f"NOT_ALLOWED - vhost {name} not found", 10, 40
            )
        assert self.user is not None
        access = securityOf(self.server.broker).amqpAccess(self.user, name, self._attributes)
        if access is None:
            # RabbitMQ's answer (rabbit_access_control:check_vhost_access): 530.
            self.log.warn(
                "AMQP {peer}: user {user} has no permissions in vhost {vhost}",
                peer=self.peer,
                user=self.user,
                vhost=name,
            )
            raise ConnectionError(
                _spec.NOT_ALLOWED,
                f"NOT_ALLOWED - access to vhost '{name}' refused for user '{self.user}'",
                10,
                40,
            )
        self.access = access
        self.vhost = self.server.vhost(name)
        self.state = "open"
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None
        self.server.connections.add(self)
        self.server.broker.connectionOpened(self)
        self.sendMethod(0, _spec.ConnectionOpenOk(""))
        if self.server.blocked and self.clientCapabilities.get("connection.blocked"):
            self.sendMethod(0, _spec.ConnectionBlocked("low on memory"))
            self.blocked = True

    def handle_connection_close(self, m: _spec.ConnectionClose) -> None:
        self.sendMethod(0, _spec.ConnectionCloseOk())
        self._teardown()
        self._lose()

    def handle_connection_close_ok(self, m: _spec.ConnectionCloseOk) -> None:
        self._lose()

    def handle_connection_update_secret(self, m: _spec.ConnectionUpdateSecret) -> None:
        self.sendMethod(0, _spec.ConnectionUpdateSecretOk())

    def handle_connection_blocked(self, m: Any) -> None:
        pass

    def handle_connection_unblocked(self, m: Any) -> None:
        pass

    # -- memory alarm ---------------------------------------------------

    def checkMemory(self) -> None:
        """After a publish: stop reading from this publisher while the memory alarm is on."""
        if self.server.blocked and not self.readPaused:
            self.readPaused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
            if self.clientCapabilities.get("connection.blocked") and not self.blocked:
                self.blocked = True
                self.sendMethod(0, _spec.ConnectionBlocked("low on memory"))

    def topicAccess(self) -> Any:
        """This user's authorization in the MQTT topic namespace (the topic exchange)."""
        access = self._topicAccess
        if access is None:
            host = self.peer.rpartition(":")[0]
            access = self._topicAccess = securityOf(self.server.broker).access(
                f"amqp:{self.peer}", self.user, host
            )
        return access

    def _pauseForTargets(self) -> None:
        if not self.readPaused and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resumeAfterTargets(self) -> None:
        if not self.readPaused and not self.closed and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def unblock(self) -> None:
        """The memory alarm cleared."""
        if self.blocked:
            self.blocked = False
            self.sendMethod(0, _spec.ConnectionUnblocked())
        if self.readPaused:
            self.readPaused = False
            if not self.gate.blockedOn:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    # -- closing --------------------------------------------------------

    def _closeConnection(
        self, code: int, text: str, classId: int, methodId: int, abortAfterSend: bool = False
    ) -> None:
        """Send Connection.Close and wait (at most C{close_timeout}) for the client's Close-Ok.

        Frames other than Close/Close-Ok are read and dropped meanwhile
        (AMQP 0-9-1 section 2.2.4).  With C{abortAfterSend} (the byte stream
        cannot be parsed any further) nothing more is parsed: the sending
        side is shut down and whatever arrives is dropped until the client
        closes or C{close_timeout} passes, so that the client reads the Close
        instead of a connection reset (L{robustmq.protocols._linger}).  The
        connection stops being a client of the broker at once.
        """
        if self.state == "closing" or self.closed:
            return
        self.log.info("AMQP {peer}: closing connection: {text}", peer=self.peer, text=text)
        self._teardown()
        self.sendMethod(0, _spec.ConnectionClose(code, text[:255], classId, methodId))
        self.state = "closing"
        server = self.server
        server.connections.discard(self)
        broker = server.broker
        broker.connectionClosed(self)
        registry = broker.lingering
        limit = broker.settings.limits.max_lingering
        if abortAfterSend:
            self.closed = True
            self.flushWrites()
            self._linger = linger(
                self.transport, self.reactor, self.settings.close_timeout, registry, limit
            )
            return
        if len(registry) >= limit:
            self._lose()
            return
        self._closeTimer = self.reactor.callLater(
            self.settings.close_timeout,
            self.transport.abortConnection,  # type: ignore[union-attr]
        )
        self._linger = Linger(self._closeTimer, registry)

    def _teardown(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        for ch in channels:
            ch.teardown()
        for q in list(self.exclusiveQueues):
            q.vhost.deleteQueue(q)
        self.exclusiveQueues.clear()

    def shutdown(self) -> None:
        """The node is stopping: Connection.Close 320 CONNECTION_FORCED."""
        self._closeConnection(_spec.CONNECTION_FORCED, "CONNECTION_FORCED - broker shutdown", 0, 0)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._out = []
        for call in (self._heartbeatCall, self._timeoutCall, self._closeTimer):
            if call is not None and call.active():
                call.cancel()
        self._heartbeatCall = self._timeoutCall = self._closeTimer = None
        if self._linger is not None:
            self._linger.ended()
            self._linger = None
        self._teardown()
        self.gate.release()
        self.server.connections.discard(self)
        self.server.broker.connectionClosed(self)
        if self.factory is not None:
            self.factory.connectionEnded(self)
