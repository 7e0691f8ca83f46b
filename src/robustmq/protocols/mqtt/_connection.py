"""One MQTT connection's state, lifecycle, reading loop and writes.

The server protocol (L{robustmq.protocols.mqtt._protocol.MQTTServerProtocol})
is this base plus one mixin per concern: CONNECT and authentication
(C{_connect}), inbound PUBLISH and acknowledgements (C{_inbound}),
subscriptions (C{_subscriptions}), outbound delivery and flow control
(C{_outbound}).  The base holds every slot, so the mixins add behaviour only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.core.message import Message
from robustmq.interfaces import StorageFullError, StorageUnavailableError
from robustmq.protocols._linger import Linger
from robustmq.protocols._linger import linger as startLinger
from robustmq.protocols.mqtt._codec import (
    MAX_PACKET_SIZE,
    PINGRESP_BYTES,
    MQTTParser,
    encodeAck5,
    encodeConnack,
    encodeDisconnect,
)
from robustmq.protocols.mqtt._exceptions import MQTTError, ProtocolViolation
from robustmq.protocols.mqtt._packets import (
    AUTH,
    CONNECT,
    MQTT5,
    MQTT31,
    MQTT311,
    PUBACK,
    PUBREC,
    Auth,
    Connect,
    Disconnect,
    Packet,
    Publish,
    Reason,
)

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker
    from robustmq.protocols.mqtt._node import MQTTNode
    from robustmq.protocols.mqtt._session import Session

# Connection states.
AWAIT_CONNECT = 0
AUTHENTICATING = 1
CONNECTED = 2
CLOSING = 3

# Keys of Message.encodings used by this protocol (3.1 and 3.1.1 share a wire format).
ENC_QOS0 = "mqtt3:q0"
ENC_QOS0_RETAIN = "mqtt3:q0r"
ENC_TOPIC = "mqtt3:topic"
ENC5_QOS0 = "mqtt5:q0"
ENC5_QOS0_RETAIN = "mqtt5:q0r"
ENC5_PROPS = "mqtt5:props"

SUPPORTED_LEVELS = (MQTT31, MQTT311, MQTT5)
# MQTT-3.1.2-1/-2: the protocol name must go with its level.
PROTOCOLS = {("MQIsdp", MQTT31), ("MQTT", MQTT311), ("MQTT", MQTT5)}

# PUBLISH properties forwarded from publisher to subscribers unchanged.
FORWARDED = (
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_property",
)

EMPTY_PROPS = b"\x00"


class MQTTConnection(Protocol):
    """One MQTT connection: its state, lifecycle, reading loop and writes.

    Packets are dispatched by type to C{handle_<name>} methods.  Bad input
    closes this connection only, with a log line naming the client and the
    reason (and, under MQTT 5, a DISCONNECT or CONNACK carrying the reason
    code).  Delivery pauses (messages wait in the bounded session queue)
    while the transport says its write buffer is full (64 KiB in Twisted's TCP
    transport); reading pauses while a session this client published to is
    congested (see L{robustmq.protocols.mqtt._session.Session}).
    """

    log = Logger()

    # Slots, not a per-instance dict: ~1.3 KB less per connection (Protocol's base
    # attributes included, so they are set in __init__).
    __slots__ = (
        "_acks",
        "_authExpiry",
        "_blockedOn",
        "_closeReason",
        "_held",
        "_heldQos2",
        "_heldQos2Bytes",
        "_ended",
        "_lastActivity",
        "_limiter",
        "_linger",
        "_out",
        "_paused",
        "_throttled",
        "_timer",
        "_v5",
        "_waitTimer",
        "_noWaitUntil",
        "_waitStarted",
        "access",
        "bridge",
        "broker",
        "clientId",
        "connected",
        "connectedAt",
        "factory",
        "keepAlive",
        "listener",
        "node",
        "parser",
        "peer",
        "reactor",
        "session",
        "settings",
        "state",
        "transport",
        "username",
        "version",
        "will",
        "willDelay",
    )

    def __init__(self, broker: Broker, listener: ListenerSettings, reactor: Any) -> None:
        self.transport: Any = None
        self.connected = 0
        #: wall-clock time the credentials expire (a JWT's exp), then its timer
        self._authExpiry: Any = None
        self.broker = broker
        #: the node's MQTT service: sessions, subscriptions, delays, rewrite rules
        self.node: MQTTNode = broker.nodeService("mqtt")
        self.listener = listener
        self.reactor = reactor
        self.settings = broker.settings.mqtt
        self.parser = MQTTParser(
            self.settings.max_packet_size or MAX_PACKET_SIZE,
            maxTopicLength=broker.settings.limits.max_topic_length,
            maxTopicLevels=self.settings.max_topic_levels,
        )
        self.state = AWAIT_CONNECT
        self.session: Session | None = None
        self.clientId: str | None = None
        self.username: str | None = None
        self.version = MQTT311
        #: a 3.x bridge from another broker (Connect.bridge)
        self.bridge = False
        self.keepAlive = 0
        self.will: Message | None = None
        self.willDelay = 0
        self.connectedAt: float | None = None
        self.peer = "?"
        self._paused = False
        #: parsed packets held back while authenticating or while publishers are paused
        self._held: list[Packet] | None = None
        self._lastActivity = 0.0
        self._timer: Any = None
        self._closeReason: str | None = None
        self.factory: Any = None
        #: congested sessions this connection published to; reading is paused until empty
        self._blockedOn: set[Any] | tuple[()] = ()
        #: ends one wait for congested sessions after congestion_timeout (see _outbound)
        self._waitTimer: Any = None
        #: after a wait that lasted congestion_timeout: no new wait before this (reactor time)
        self._noWaitUntil = 0.0
        #: when the current wait for congested sessions began (None: not waiting)
        self._waitStarted: float | None = None
        # MQTT 5 state; None/defaults under 3.x.
        self._v5: dict[str, Any] | None = None
        #: acknowledgements waiting for durable writes, in order: [bytes or None, writes left]
        self._acks: deque[list[Any]] | None = None
        #: authorization (ACL) of the authenticated client; rate limiter; its pause timer
        self.access: Any = None
        self._limiter: Any = None
        self._throttled: Any = None
        #: bytes written during this reactor turn, sent with one writeSequence (see Broker)
        self._out: list[bytes] | None = None
        #: 3.x QoS 2 PUBLISHes held while max_awaiting_rel await PUBREL (packet id → packet)
        self._heldQos2: dict[int, Publish] | None = None
        self._heldQos2Bytes = 0
        #: the connection is over for the broker (see L{_end}); the lingering close, if any
        self._ended = False
        self._linger: Linger | None = None

    # Connection lifecycle

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        if not self.node.ready:
            # Storage is still being recovered: read nothing until it is.
            transport.pauseProducing()
            self.node.whenReady().addCallback(self._whenNodeReady)
        self._lastActivity = self.reactor.seconds()
        self._timer = self.reactor.callLater(self.settings.connect_timeout, self._connectTimeout)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._end()
        if self._linger is not None:
            self._linger.ended()
            self._linger = None
        if self.factory is not None:
            self.factory.connectionEnded(self)

    def _end(self) -> None:
        """The MQTT connection is over (the socket may linger): timers, session, will.

        Runs once, when the socket is lost or when a lingering close starts
        (L{_close}); from then on the connection is no client of the broker.
        """
        if self._ended:
            return
        self._ended = True
        wasConnected = self.state in (CONNECTED, CLOSING) and self.session is not None
        self.state = CLOSING
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._throttled is not None:
            self._throttled.cancel()
            self._throttled = None
        if self._authExpiry is not None and hasattr(self._authExpiry, "cancel"):
            self._authExpiry.cancel()
        self._authExpiry = None
        for session in self._blockedOn:
            session.removeWaiter(self)
        self._blockedOn = ()
        if self._waitTimer is not None:
            if self._waitTimer.active():
                self._waitTimer.cancel()
            self._waitTimer = None
        self._held = None
        self._heldQos2 = None
        if not wasConnected or self.connectedAt is None:
            return
        broker = self.broker
        broker.connectionClosed(self)
        assert self.session is not None
        why = self._closeReason or "connection lost"
        self.log.info("client {clientId} disconnected: {why}", clientId=self.clientId, why=why)
        will, self.will = self.will, None
        self.node.sessions.close(self.session, self, will, self.willDelay)

    def _write(self, data: bytes) -> None:
        """Queue bytes for this connection; the broker flushes them once per read or turn."""
        out = self._out
        if out is None:
            self._out = [data]
            self.broker.markDirty(self)
        else:
            out.append(data)

    def flushWrites(self) -> None:
        """Hand the bytes queued by L{_write} to the transport in one call."""
        out = self._out
        if out is not None:
            self._out = None
            transport = self.transport
            if transport is not None:
                if len(out) == 1:
                    transport.write(out[0])
                else:
                    transport.writeSequence(out)

    def _close(self, why: str, linger: bool = False) -> None:
        """Close after what was written; with C{linger}, let the client read it first.

        A close that tells the client why (DISCONNECT, or a CONNACK refusing
        it) lingers: the sending side is shut down, what the client still
        sends is read and dropped for at most C{[mqtt] close_linger} seconds
        or until it closes, so its kernel does not reset the connection
        before it has read the reason (L{robustmq.protocols._linger}).
        """
        if self._closeReason is None:
            self._closeReason = why
        self.state = CLOSING
        transport = self.transport
        if transport is None or self._linger is not None:
            return
        self.flushWrites()
        if linger:
            self._end()
            broker = self.broker
            self._linger = startLinger(
                transport,
                self.reactor,
                self.settings.close_linger,
                broker.lingering,
                broker.settings.limits.max_lingering,
            )
            if self._linger is not None:
                return
        transport.loseConnection()

    def _disconnect(self, reasonCode: int, why: str) -> None:
        """Close, telling a 5.0 client why with a DISCONNECT (MQTT-4.13.2-1)."""
        if self.version == MQTT5 and self.transport is not None and self.state != CLOSING:
            self._write(self._fitted(encodeDisconnect, (reasonCode,), self._reasonProps(why)))
        self._close(why, linger=True)

    def _protocolError(self, error: MQTTError) -> None:
        self.broker.stats.malformedPackets += 1
        who = self.clientId if self.clientId is not None else "(not connected)"
        self.log.warn(
            "closing client {clientId} from {peer}: {kind}: {reason}",
            clientId=who,
            peer=self.peer,
            kind=type(error).__name__,
            reason=str(error),
        )
        if self.version == MQTT5 and self.state in (AWAIT_CONNECT, AUTHENTICATING):
            if self.transport is not None and self.parser.version == MQTT5:
                self._write(encodeConnack(False, error.reasonCode, {}))
            self._close(f"{type(error).__name__}: {error}", linger=True)
        else:
            self._disconnect(error.reasonCode, f"{type(error).__name__}: {error}")

    def shutdown(self) -> None:
        """The node is stopping: close without publishing the will."""
        self.will = None
        self._disconnect(Reason.SERVER_SHUTTING_DOWN, "server shutting down")

    def kick(self, why: str) -> None:
        """An administrator (or a ban) ends this connection (MQTT 5: DISCONNECT 0x98)."""
        self._disconnect(Reason.ADMINISTRATIVE_ACTION, why)

    def takeOver(self) -> None:
        """Another connection took this client id (MQTT-3.1.4-2)."""
        self._disconnect(Reason.SESSION_TAKEN_OVER, "session taken over by a new connection")

    def _reasonProps(
        self, why: str | None, props: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """C{props} plus a Reason String C{why}, when the client wants one (MQTT 5).

        A Reason String is optional (MQTT 5.0 section 3.4.2.2.2): it is sent
        only when C{[mqtt] reason_strings} is on and the client asked for
        problem information (Request Problem Information 1, the default;
        MQTT-3.1.2-29 forbids it on acknowledgements otherwise).
        """
        v5 = self._v5
        if why and self.settings.reason_strings and (v5 is None or v5["problemInfo"]):
            props = dict(props) if props else {}
            props["reason_string"] = why
        return props

    def _fitted(
        self, encoder: Callable[..., bytes], args: tuple[Any, ...], props: dict[str, Any] | None
    ) -> bytes:
        """C{encoder(*args, props)}, without its Reason String and User Properties when
        that makes it fit the client's Maximum Packet Size.

        The server must not send a packet larger than the client accepts
        (MQTT-3.1.2-25) and must leave these properties out rather than exceed
        it (MQTT-3.2.2-19/-20 for CONNACK, MQTT-3.4.2-2/-3 and the like for
        acknowledgements, MQTT-3.14.2-3/-4 for DISCONNECT).
        """
        data = encoder(*args, props)
        v5 = self._v5
        maxSize = v5["maxPacketSize"] if v5 is not None else 0
        if maxSize and len(data) > maxSize and props:
            slim = {k: v for k, v in props.items() if k not in ("reason_string", "user_property")}
            data = encoder(*args, slim)
        return data

    # Incoming bytes

    def dataReceived(self, data: bytes) -> None:
        if self.state == CLOSING:
            return
        broker = self.broker
        self._lastActivity = self.reactor.seconds()
        broker.stats.mqttBytesReceived += len(data)
        broker.reading += 1
        try:
            try:
                packets = self.parser.feed(data)
            except MQTTError as e:
                self.version = self.parser.version if self.state == AWAIT_CONNECT else self.version
                self._protocolError(e)
                return
            if self._held is not None:
                self._held.extend(packets)
                return
            self._run(packets, 0)
        finally:
            broker.reading -= 1
            if not broker.reading and broker.dirty:
                broker.flushWrites()

    def _run(self, packets: list[Packet], i: int) -> None:
        """Handle C{packets[i:]}, holding the rest back if handling must pause."""
        n = len(packets)
        handlers = self._handlers
        try:
            while i < n:
                state = self.state
                packet = packets[i]
                if state == CONNECTED:
                    handlers[packet.type](self, packet)
                elif state == AWAIT_CONNECT:
                    if packet.type != CONNECT:
                        raise ProtocolViolation(
                            f"first packet is {packet.name.upper()}, not CONNECT", "MQTT-3.1.0-1"
                        )
                    self.handle_connect(packet)  # type: ignore[arg-type]
                elif state == AUTHENTICATING:
                    if packet.type == AUTH and self._v5 is not None and self._v5.get("mechanism"):
                        self.handle_auth(packet)  # type: ignore[arg-type]
                    elif self._v5 is not None and self._v5.get("mechanism"):
                        raise ProtocolViolation(
                            f"{packet.name.upper()} during enhanced authentication", "MQTT-4.12.0-4"
                        )
                    else:
                        self._held = packets[i:]
                        return
                else:
                    return
                i += 1
                if (self._blockedOn or self._throttled is not None) and i < n:
                    self._held = packets[i:]
                    return
        except MQTTError as e:
            self._protocolError(e)

    def _resumeReading(self) -> None:
        """Handle held packets, then read from the socket again unless blocked anew."""
        if self._throttled is not None:
            return  # _unthrottle comes back here
        held, self._held = self._held, None
        if held:
            self._run(held, 0)
        if (
            self._held is None
            and not self._blockedOn
            and self._throttled is None
            and self.state != CLOSING
        ):
            if self.transport is not None:
                self.transport.resumeProducing()

    def handle_pingreq(self, packet: Packet) -> None:
        self._write(PINGRESP_BYTES)  # type: ignore[union-attr]

    def handle_disconnect(self, packet: Disconnect) -> None:
        v5 = self._v5
        if v5 is not None:
            expiry = packet.properties.get("session_expiry_interval")
            if expiry is not None:
                if v5["sessionExpiry"] == 0 and expiry != 0:
                    raise ProtocolViolation(
                        "DISCONNECT sets a session expiry after CONNECT set 0", "MQTT-3.14.2-2"
                    )
                assert self.session is not None
                self.session.expiryInterval = min(expiry, self.settings.max_session_expiry)
            if packet.reasonCode == Reason.DISCONNECT_WITH_WILL:
                self._close("client sent DISCONNECT with will")
                return
        # MQTT-3.14.4-3: a clean DISCONNECT discards the will.
        self.will = None
        self._close("client sent DISCONNECT")

    # Acknowledgements held for durable writes

    def _writeAck(
        self,
        data: bytes,
        writes: list[Any] | None = None,
        packetType: int = 0,
        packetId: int = 0,
    ) -> None:
        """Write an acknowledgement once C{writes}, the durable writes of its packet, are done.

        Acknowledgements leave in the order their packets arrived (MQTT-4.6.0-2..4).
        A failed write never yields a success: a PUBACK or PUBREC (C{packetType})
        of a 5.0 client becomes 0x97 Quota exceeded (disk full) or 0x80
        Unspecified error (MQTT-3.4.2.1, 3.5.2.1); otherwise the connection
        closes without the acknowledgement (3.x has no negative one), so the
        client sends the packet again.
        """
        acks = self._acks
        if not writes and not acks:
            self._write(data)
            return
        if acks is None:
            acks = self._acks = deque()
        entry = [data, len(writes) if writes else 0, packetType, packetId]
        acks.append(entry)
        if writes:
            for d in writes:
                d.addBoth(self._ackWriteDone, entry)

    def _ackWriteDone(self, result: Any, entry: list[Any]) -> Any:
        entry[1] -= 1
        if isinstance(result, Failure):
            if entry[0] is not None:
                entry[0] = self._storageRefused(result, entry[2], entry[3])
            result = None
        acks = self._acks
        while acks and acks[0][1] <= 0:
            data = acks.popleft()[0]
            if data is not None and self.transport is not None and self.state != CLOSING:
                self._write(data)
        return result

    def _storageRefused(self, failure: Failure, packetType: int, pid: int) -> bytes | None:
        """What to send instead of a PUBACK/PUBREC whose write failed (None: close)."""
        refused = failure.check(StorageUnavailableError)
        if not refused:
            self.log.failure(
                "durable write for {clientId} failed; closing without acknowledging",
                failure,
                clientId=self.clientId,
            )
        elif self._v5 is not None and packetType in (PUBACK, PUBREC):
            reason = (
                Reason.QUOTA_EXCEEDED
                if isinstance(failure.value, StorageFullError)
                else Reason.UNSPECIFIED_ERROR
            )
            if packetType == PUBREC and self.session is not None:
                # an error PUBREC ends the QoS 2 flow: no PUBREL will come (MQTT-4.3.3)
                awaiting = self.session.awaitingRel
                if pid in awaiting:
                    awaiting.remove(pid)  # type: ignore[union-attr]
            self.log.debug(
                "{clientId}: storage refused a write: {error}; answering {reason:#x}",
                clientId=self.clientId,
                error=str(failure.value),
                reason=reason,
            )
            return self._fitted(
                encodeAck5, (packetType, pid, reason), self._reasonProps(str(failure.value))
            )
        else:
            self.log.debug(
                "{clientId}: storage refused a write: {error}; closing without acknowledging",
                clientId=self.clientId,
                error=str(failure.value),
            )
        self._close("storage write failed")
        return None

    def _whenNodeReady(self, _: object) -> None:
        self._brokerReady()

    # Provided by the concern mixins (see the module docstring).
    if TYPE_CHECKING:
        _handlers: list[Any]

        def handle_connect(self, packet: Connect) -> None: ...
        def handle_auth(self, packet: Auth) -> None: ...
        def _brokerReady(self) -> None: ...
        def _connectTimeout(self) -> None: ...
        def _waitFor(self, congested: list[Any]) -> None: ...

        def _ack(
            self, packetType: int, pid: int, reason: int = 0, why: str | None = None
        ) -> None: ...
