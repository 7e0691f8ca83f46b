"""The MQTT 3.1 / 3.1.1 / 5.0 server protocol: one instance per client connection."""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.core.auth import Credentials
from robustmq.core.broker import ExclusiveTaken
from robustmq.core.delayed import parseDelayed
from robustmq.core.message import Message
from robustmq.core.rewrite import expand
from robustmq.core.security import securityOf
from robustmq.core.subscription import SubscriptionOptions, parseFilter
from robustmq.core.topics import InvalidTopic, validateTopicFilter, validateTopicName
from robustmq.interfaces import ISessionConnection, StorageFullError, StorageUnavailableError
from robustmq.protocols.mqtt._codec import (
    PINGRESP_BYTES,
    MQTTParser,
    encodeAck,
    encodeAck5,
    encodeAuth,
    encodeConnack,
    encodeDisconnect,
    encodePublish,
    encodeSuback,
    encodeUnsuback,
)
from robustmq.protocols.mqtt._exceptions import MQTTError, ProtocolViolation
from robustmq.protocols.mqtt._packets import (
    AUTH,
    CONNACK_V3_FOR_REASON,
    CONNECT,
    DISCONNECT,
    MQTT5,
    MQTT31,
    MQTT311,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK_FAILURE,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Auth,
    Connect,
    Disconnect,
    Packet,
    Publish,
    Reason,
    Subscribe,
    Unsubscribe,
)
from robustmq.protocols.mqtt._properties import encodeProperties

if TYPE_CHECKING:
    from robustmq.config import ListenerSettings
    from robustmq.core.broker import Broker
    from robustmq.core.session import Session

# Connection states.
AWAIT_CONNECT = 0
AUTHENTICATING = 1
CONNECTED = 2
CLOSING = 3

# Keys of Message.encodings used by this protocol (3.1 and 3.1.1 share a wire format).
_ENC_QOS0 = "mqtt3:q0"
_ENC_QOS0_RETAIN = "mqtt3:q0r"
_ENC_TOPIC = "mqtt3:topic"
_ENC5_QOS0 = "mqtt5:q0"
_ENC5_QOS0_RETAIN = "mqtt5:q0r"
_ENC5_PROPS = "mqtt5:props"

SUPPORTED_LEVELS = (MQTT31, MQTT311, MQTT5)
# MQTT-3.1.2-1/-2: the protocol name must go with its level.
_PROTOCOLS = {("MQIsdp", MQTT31), ("MQTT", MQTT311), ("MQTT", MQTT5)}

# PUBLISH properties forwarded from publisher to subscribers unchanged.
_FORWARDED = (
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "user_property",
)

_EMPTY_PROPS = b"\x00"


@implementer(ISessionConnection, IPushProducer)
class MQTTServerProtocol(Protocol):
    """Speaks MQTT to one client and connects it to its broker session.

    Packets are dispatched by type to C{handle_<name>} methods.  Bad input
    closes this connection only, with a log line naming the client and the
    reason (and, under MQTT 5, a DISCONNECT or CONNACK carrying the reason
    code).  Delivery pauses (messages wait in the bounded session queue)
    while the transport says its write buffer is full (64 KiB in Twisted's TCP
    transport); reading pauses while a session this client published to is
    congested (see L{robustmq.core.session.Session}).
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
        "_lastActivity",
        "_limiter",
        "_out",
        "_paused",
        "_throttled",
        "_timer",
        "_v5",
        "access",
        "broker",
        "clientId",
        "connected",
        "connectedAt",
        "factory",
        "keepAlive",
        "listener",
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
        self.listener = listener
        self.reactor = reactor
        self.settings = broker.settings.mqtt
        self.parser = MQTTParser(
            self.settings.max_packet_size,
            maxTopicLength=broker.settings.limits.max_topic_length,
            maxTopicLevels=self.settings.max_topic_levels,
        )
        self.state = AWAIT_CONNECT
        self.session: Session | None = None
        self.clientId: str | None = None
        self.username: str | None = None
        self.version = MQTT311
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

    # Connection lifecycle

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        if not self.broker.ready:
            # Storage is still being recovered: read nothing until it is.
            transport.pauseProducing()
            self.broker.whenReady().addCallback(lambda _: self._brokerReady())
        self._lastActivity = self.reactor.seconds()
        self._timer = self.reactor.callLater(self.settings.connect_timeout, self._connectTimeout)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
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
        if self.factory is not None:
            self.factory.connectionEnded(self)
        for session in self._blockedOn:
            session.removeWaiter(self)
        self._blockedOn = ()
        if not wasConnected or self.connectedAt is None:
            return
        broker = self.broker
        broker.connectionClosed(self)
        assert self.session is not None
        why = self._closeReason or "connection lost"
        self.log.info("client {clientId} disconnected: {why}", clientId=self.clientId, why=why)
        will, self.will = self.will, None
        broker.sessions.close(self.session, self, will, self.willDelay)

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

    def _close(self, why: str) -> None:
        if self._closeReason is None:
            self._closeReason = why
        self.state = CLOSING
        if self.transport is not None:
            self.flushWrites()
            self.transport.loseConnection()

    def _disconnect(self, reasonCode: int, why: str) -> None:
        """Close, telling a 5.0 client why with a DISCONNECT (MQTT-4.13.2-1)."""
        if self.version == MQTT5 and self.transport is not None and self.state != CLOSING:
            props = {"reason_string": why} if self._problemInfo() else None
            self._write(encodeDisconnect(reasonCode, props))
        self._close(why)

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
            self._close(f"{type(error).__name__}: {error}")
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

    def _problemInfo(self) -> bool:
        v5 = self._v5
        return v5 is None or v5["problemInfo"]

    # Back-pressure (IPushProducer, registered with our own transport)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        session = self.session
        if session is not None and session.connection is self:
            session.pump()

    def stopProducing(self) -> None:
        self._paused = True

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
        handlers = _HANDLERS
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

    # CONNECT

    def _brokerReady(self) -> None:
        if self.state == AWAIT_CONNECT and self.transport is not None:
            self.transport.resumeProducing()

    def _writeAck(self, data: bytes, packetType: int = 0, packetId: int = 0) -> None:
        """Write an acknowledgement once the durable writes of its packet are done.

        Acknowledgements leave in the order their packets arrived (MQTT-4.6.0-2..4).
        A failed write never yields a success: a PUBACK or PUBREC (C{packetType})
        of a 5.0 client becomes 0x97 Quota exceeded (disk full) or 0x80
        Unspecified error (MQTT-3.4.2.1, 3.5.2.1); otherwise the connection
        closes without the acknowledgement (3.x has no negative one), so the
        client sends the packet again.
        """
        broker = self.broker
        pending = broker.pendingWrites
        acks = self._acks
        if not pending and not acks:
            self._write(data)  # type: ignore[union-attr]
            return
        if acks is None:
            acks = self._acks = deque()
        entry = [data, len(pending), packetType, packetId]
        acks.append(entry)
        if pending:
            broker.pendingWrites = []
            for d in pending:
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
            props = {"reason_string": str(failure.value)} if self._problemInfo() else None
            return encodeAck5(packetType, pid, reason, props)
        else:
            self.log.debug(
                "{clientId}: storage refused a write: {error}; closing without acknowledging",
                clientId=self.clientId,
                error=str(failure.value),
            )
        self._close("storage write failed")
        return None

    def _connectTimeout(self) -> None:
        self._timer = None
        if self.state in (AWAIT_CONNECT, AUTHENTICATING):
            self.log.info("closing {peer}: no CONNECT within the connect timeout", peer=self.peer)
            self._close("connect timeout")

    def _refuse(self, reason: int, why: str, props: dict[str, Any] | None = None) -> None:
        """Refuse the CONNECT with a 5.0 reason code (mapped to a 3.x return code)."""
        v5 = self.version == MQTT5
        code = reason if v5 else CONNACK_V3_FOR_REASON.get(reason, reason)
        self.log.info(
            "refusing client {clientId} from {peer}: {why} (CONNACK {code:#x})",
            clientId=self.clientId,
            peer=self.peer,
            why=why,
            code=code,
        )
        if self.transport is not None:
            if v5:
                props = dict(props or {})
                if self._problemInfo():
                    props["reason_string"] = why
                self._write(encodeConnack(False, code, props))
            else:
                self._write(encodeConnack(False, code))
        self._close(why)

    def handle_connect(self, packet: Connect) -> None:
        if self.state != AWAIT_CONNECT:
            raise ProtocolViolation("second CONNECT on a connection", "MQTT-3.1.0-2")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.clientId = packet.clientId
        settings = self.settings
        if (packet.protocolName, packet.protocolLevel) not in _PROTOCOLS:
            self.version = MQTT311
            self._refuse(
                Reason.UNSUPPORTED_PROTOCOL_VERSION,
                f"unsupported protocol level {packet.protocolLevel}",
            )
            return
        self.version = packet.protocolLevel
        v5 = self.version == MQTT5
        props = packet.properties
        if v5:
            self._v5 = {
                "receiveMaximum": props.get("receive_maximum", 65535),
                "maxPacketSize": props.get("maximum_packet_size", 0),
                "topicAliasMaximum": props.get("topic_alias_maximum", 0),
                "problemInfo": props.get("request_problem_information", 1) == 1,
                "inAliases": {},
                "outAliases": {},
                "sessionExpiry": 0,
            }
        if settings.server_reference_mode != "none":
            reason = (
                Reason.SERVER_MOVED
                if settings.server_reference_mode == "server_moved"
                else Reason.USE_ANOTHER_SERVER
            )
            self._refuse(
                reason,
                f"redirected to {settings.server_reference}",
                {"server_reference": settings.server_reference},
            )
            return
        clientId = packet.clientId
        assigned = False
        if not clientId:
            if self.version == MQTT31:
                self._refuse(Reason.CLIENT_IDENTIFIER_NOT_VALID, "empty client id (MQTT 3.1)")
                return
            if not packet.cleanSession and not v5:
                self._refuse(
                    Reason.CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id with clean session 0 [MQTT-3.1.3-8]",
                )
                return
            if not settings.allow_empty_client_id:
                self._refuse(
                    Reason.CLIENT_IDENTIFIER_NOT_VALID, "empty client id not allowed by config"
                )
                return
            clientId = f"auto-{uuid.uuid4().hex}"
            assigned = True
        if len(clientId) > settings.max_client_id_length:
            self._refuse(Reason.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
            return
        if packet.willTopic is not None:
            try:
                validateTopicName(packet.willTopic, settings.max_topic_levels)
            except InvalidTopic as e:
                raise ProtocolViolation(f"CONNECT will topic: {e}", "MQTT-3.1.3-10") from None
            if packet.willQos > settings.max_qos:
                self._refuse(Reason.QOS_NOT_SUPPORTED, "will QoS above the maximum QoS")
                return
            if packet.willRetain and not settings.retain_available:
                self._refuse(Reason.RETAIN_NOT_SUPPORTED, "retained will but retain is off")
                return
            if packet.willProperties.get("payload_format_indicator") == 1:
                try:
                    (packet.willPayload or b"").decode("utf-8")
                except UnicodeDecodeError:
                    self._refuse(Reason.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
                    return
        self.clientId = clientId
        self.username = packet.username
        # A transport that verified a client certificate may name the user (mutual TLS).
        certUser = getattr(self.transport, "certificateUsername", None)
        if certUser is not None:
            self.username = certUser
        banned = securityOf(self.broker).admit(clientId, self.username, self.peer.rsplit(":", 1)[0])
        if banned is not None:
            self._refuse(Reason.BANNED, banned)
            return
        self.state = AUTHENTICATING
        if self.transport is not None:
            self.transport.pauseProducing()
        # The connect timeout also bounds an authentication exchange.
        self._timer = self.reactor.callLater(settings.connect_timeout, self._connectTimeout)
        method = props.get("authentication_method") if v5 else None
        if method is not None:
            factory = self.broker.authMechanisms.get(method)
            if factory is None:
                self._refuse(Reason.BAD_AUTHENTICATION_METHOD, f"unknown method {method!r}")
                return
            assert self._v5 is not None
            self._v5.update(mechanism=factory(), method=method, connect=packet, assigned=assigned)
            self._authStep(props.get("authentication_data", b""))
            return
        credentials = Credentials(
            protocol="mqtt",
            clientId=clientId,
            username=self.username,
            password=packet.password,
            peerHost=self.peer.rsplit(":", 1)[0],
            listener=self.listener.label,
            certificateUsername=certUser,
        )
        d = defer.ensureDeferred(self.broker.auth.authenticate(credentials))
        d.addCallback(self._authenticated, packet, clientId, assigned, credentials.attributes)
        d.addErrback(self._authFailed)

    # MQTT 5 enhanced authentication (section 4.12)

    def _authStep(self, data: bytes) -> None:
        v5 = self._v5
        assert v5 is not None
        status, reply = v5["mechanism"].step(data)
        props = {"authentication_method": v5["method"], "authentication_data": reply}
        if status == "continue":
            self._write(encodeAuth(Reason.CONTINUE_AUTHENTICATION, props))  # type: ignore[union-attr]
            return
        mechanism = v5.pop("mechanism")
        if status != "success":
            if self.state == CONNECTED:
                self._disconnect(Reason.NOT_AUTHORIZED, "re-authentication failed")
            else:
                self._refuse(Reason.BAD_USER_NAME_OR_PASSWORD, "enhanced authentication failed")
            return
        if self.state == CONNECTED:
            self._write(encodeAuth(Reason.SUCCESS, props))  # type: ignore[union-attr]
            return
        if mechanism.username:
            self.username = mechanism.username
        v5["authReply"] = props
        packet = v5.pop("connect")
        self._authenticated(True, packet, self.clientId, v5.pop("assigned"))  # type: ignore[arg-type]

    def handle_auth(self, packet: Auth) -> None:
        v5 = self._v5
        if v5 is None:
            raise ProtocolViolation("AUTH before MQTT 5.0")
        method = packet.properties.get("authentication_method")
        if self.state == CONNECTED and packet.reasonCode == Reason.REAUTHENTICATE:
            factory = self.broker.authMechanisms.get(method)  # type: ignore[arg-type]
            if factory is None or method != v5.get("method"):
                raise ProtocolViolation("re-authentication with another method", "MQTT-4.12.1-1")
            v5["mechanism"] = factory()
        elif "mechanism" not in v5 or packet.reasonCode != Reason.CONTINUE_AUTHENTICATION:
            raise ProtocolViolation("unexpected AUTH packet")
        if method != v5.get("method"):
            raise ProtocolViolation("AUTH with a different authentication method", "MQTT-4.12.0-5")
        self._authStep(packet.properties.get("authentication_data", b""))

    def _authFailed(self, failure: Failure) -> None:
        self.log.failure("authentication of {clientId} failed", failure, clientId=self.clientId)
        if self.state == AUTHENTICATING:
            self._refuse(Reason.SERVER_UNAVAILABLE, "authentication error")

    def _authenticated(
        self,
        allowed: bool,
        packet: Connect,
        clientId: str,
        assigned: bool,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        if self.state != AUTHENTICATING or self.transport is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not allowed:
            reason = (
                Reason.BAD_USER_NAME_OR_PASSWORD
                if packet.password is not None
                else Reason.NOT_AUTHORIZED
            )
            self._refuse(reason, "not authorised")
            return
        broker = self.broker
        settings = self.settings
        security = securityOf(broker)
        self.access = security.access(
            clientId, self.username, self.peer.rsplit(":", 1)[0], attributes
        )
        if attributes and attributes.get("expires_at") is not None:
            self._authExpiry = float(attributes["expires_at"])
        self._limiter = security.publishLimiter()
        v5 = self._v5
        props = packet.properties
        connack: dict[str, Any] | None = None
        if v5 is not None:
            requested = props.get("session_expiry_interval", 0)
            expiry = min(requested, settings.max_session_expiry)
            v5["sessionExpiry"] = expiry
            connack = self._connackProperties(packet, clientId if assigned else None, expiry)
        else:
            expiry = 0 if packet.cleanSession else settings.v3_persistent_session_expiry
        cluster = getattr(broker, "cluster", None)
        if cluster is not None:
            # The session may live on another node: it is handed over first.
            d = cluster.prepareSession(clientId, packet.cleanSession, expiry)
            d.addCallback(lambda _: self._openSession(packet, clientId, expiry, connack))
            d.addErrback(self._prepareFailed)
            return
        self._openSession(packet, clientId, expiry, connack)

    def _prepareFailed(self, failure: Failure) -> None:
        self.log.warn(
            "{clientId}: session could not be taken over from another node: {error}",
            clientId=self.clientId,
            error=failure.getErrorMessage(),
        )
        if self.state == AUTHENTICATING and self.transport is not None:
            self._refuse(Reason.SERVER_UNAVAILABLE, "session is on an unreachable node")

    def _openSession(
        self, packet: Connect, clientId: str, expiry: int, connack: dict[str, Any] | None
    ) -> None:
        if self.state != AUTHENTICATING or self.transport is None:
            return
        broker = self.broker
        settings = self.settings
        v5 = self._v5
        session, present = broker.sessions.open(clientId, packet.cleanSession, self, expiry)
        self.session = session
        maxInflight = settings.max_inflight
        if v5 is not None and v5["receiveMaximum"] < maxInflight:
            maxInflight = v5["receiveMaximum"]
        session.maxInflight = maxInflight
        if packet.willTopic is not None:
            willProps = {
                k: packet.willProperties[k] for k in _FORWARDED if k in packet.willProperties
            }
            self.will = Message(
                packet.willTopic,
                packet.willPayload or b"",
                packet.willQos,
                packet.willRetain,
                properties=willProps or None,
                origin=clientId,
            )
            self.willDelay = packet.willProperties.get("will_delay_interval", 0)
            if not self.access.canPublish(packet.willTopic):
                self.log.info(
                    "{clientId}: will on {topic!r} dropped: not authorized",
                    clientId=clientId,
                    topic=packet.willTopic,
                )
                self.will = None
        self.keepAlive = packet.keepAlive
        if (
            v5 is not None
            and settings.max_keepalive
            and (self.keepAlive == 0 or self.keepAlive > settings.max_keepalive)
        ):
            self.keepAlive = settings.max_keepalive
            assert connack is not None
            connack["server_keep_alive"] = self.keepAlive
        if self.keepAlive:
            self._timer = self.broker.timers.callLater(self.keepAlive * 1.5, self._checkKeepAlive)
        self._write(encodeConnack(present, Reason.SUCCESS, connack))
        self.state = CONNECTED
        self.connectedAt = self.reactor.seconds()
        broker.connectionOpened(self)
        self.log.info(
            "client {clientId} connected from {peer} on {listener} "
            "(MQTT level {protocolLevel}, clean={clean}, keepalive={keepAlive}, "
            "session present={present})",
            clientId=clientId,
            peer=self.peer,
            listener=self.listener.label,
            protocolLevel=self.version,
            clean=packet.cleanSession,
            keepAlive=self.keepAlive,
            present=present,
        )
        session.attach(self)
        self._autoSubscribe(session)
        self._resumeReading()
        if self._authExpiry is not None:
            # Credentials with an expiry (a JWT's exp): the connection ends with them.
            left = max(0.0, self._authExpiry - time.time())
            self._authExpiry = broker.timers.callLater(left, self._credentialsExpired)

    def _credentialsExpired(self) -> None:
        self._authExpiry = None
        if self.state == CONNECTED:
            self.log.info("client {clientId}: credentials expired", clientId=self.clientId)
            self._disconnect(Reason.NOT_AUTHORIZED, "credentials expired")

    def _connackProperties(
        self, packet: Connect, assignedId: str | None, expiry: int
    ) -> dict[str, Any]:
        """What the broker tells a 5.0 client about itself (section 3.2.2.3)."""
        s = self.settings
        v5 = self._v5
        assert v5 is not None
        props: dict[str, Any] = {}
        if expiry != packet.properties.get("session_expiry_interval", 0):
            props["session_expiry_interval"] = expiry
        props["receive_maximum"] = s.max_awaiting_rel
        if s.max_qos < 2:
            props["maximum_qos"] = s.max_qos
        if not s.retain_available:
            props["retain_available"] = 0
        props["maximum_packet_size"] = s.max_packet_size
        if assignedId is not None:
            props["assigned_client_identifier"] = assignedId
        props["topic_alias_maximum"] = s.topic_alias_maximum
        if not s.wildcard_subscription:
            props["wildcard_subscription_available"] = 0
        if not s.subscription_identifiers:
            props["subscription_identifier_available"] = 0
        if not s.shared_subscription:
            props["shared_subscription_available"] = 0
        if packet.properties.get("request_response_information") == 1 and s.response_information:
            props["response_information"] = s.response_information + (self.clientId or "")
        if "authReply" in v5:
            props.update(v5.pop("authReply"))
        return props

    def _autoSubscribe(self, session: Session) -> None:
        for auto in self.settings.auto_subscribe:
            topicFilter = expand(auto.topic, self.clientId or "", self.username)
            options = SubscriptionOptions(
                qos=auto.qos,
                noLocal=auto.no_local,
                keepRetain=auto.retain_as_published,
                retainHandling=auto.retain_handling,
            )
            try:
                validateTopicFilter(topicFilter, self.settings.max_topic_levels)
                retained = self.broker.subscribe(session, topicFilter, options)
            except (InvalidTopic, ValueError, ExclusiveTaken) as e:
                self.log.warn(
                    "auto-subscription {topicFilter!r} for {clientId} failed: {why}",
                    topicFilter=topicFilter,
                    clientId=self.clientId,
                    why=str(e),
                )
                continue
            kept = options.withRetainKept()
            for message in retained:
                session.deliver(message, min(message.qos, options.qos), kept)

    def _checkKeepAlive(self) -> None:
        # MQTT-3.1.2-24: one and a half times the keep alive without a packet.
        limit = self.keepAlive * 1.5
        idle = self.reactor.seconds() - self._lastActivity
        if idle >= limit:
            self._timer = None
            self.log.info(
                "client {clientId} silent for {idle:.1f}s (keep alive {keepAlive}s): closing",
                clientId=self.clientId,
                idle=idle,
                keepAlive=self.keepAlive,
            )
            self._disconnect(Reason.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
            if self.transport is not None:
                self.transport.abortConnection()
        else:
            self._timer = self.broker.timers.callLater(limit - idle, self._checkKeepAlive)

    # PUBLISH and acknowledgements

    def handle_publish(self, packet: Publish) -> None:
        topic = packet.topic
        qos = packet.qos
        settings = self.settings
        broker = self.broker
        properties = None
        if self._limiter is not None:
            self._throttle(len(packet.payload))
        if self._v5 is not None:
            topic, properties = self._publish5(packet)
        # Topic length and levels were checked by the parser, once per distinct topic.
        if qos > settings.max_qos:
            raise _Refused(Reason.QOS_NOT_SUPPORTED, f"PUBLISH at QoS {qos} above the maximum")
        if packet.retain and not settings.retain_available:
            raise _Refused(Reason.RETAIN_NOT_SUPPORTED, "retained PUBLISH but retain is off")
        rewriter = broker.rewriter
        if rewriter.active:
            topic = rewriter.rewrite(topic, "publish", self.clientId or "", self.username)
        access = self.access
        # Fast path: no rules apply to anyone and the topic is not a $-topic.
        if not (access.trivial and access.acl.isOpen and topic[0] != "$") and not access.canPublish(
            topic
        ):
            self._publishDenied(packet, topic)
            return
        broker.stats.publishReceived += 1
        message = Message(
            topic,
            packet.payload,
            qos,
            packet.retain,
            self.reactor.seconds(),
            properties,
            self.clientId,
        )
        reason = 0
        if topic[0] == "$" and topic.startswith("$delayed/"):
            reason = self._delay(message)
        elif qos == 0:
            raw = packet.raw
            if raw is not None and not packet.retain:
                message.encodings = {_ENC_QOS0: raw}
            broker.publish(message)
        elif qos == 1:
            if not broker.publish(message) and self._v5 is not None:
                reason = Reason.NO_MATCHING_SUBSCRIBERS
        else:
            pid = packet.packetId
            session = self.session
            assert session is not None and pid is not None
            if pid not in session.awaitingRel:
                if len(session.awaitingRel) >= settings.max_awaiting_rel:
                    raise _Refused(
                        Reason.RECEIVE_MAXIMUM_EXCEEDED,
                        f"more than {settings.max_awaiting_rel} QoS 2 messages awaiting PUBREL",
                    )
                session.startIncomingQos2(pid)
                if not broker.publish(message) and self._v5 is not None:
                    reason = Reason.NO_MATCHING_SUBSCRIBERS
        if qos == 1:
            self._ack(PUBACK, packet.packetId, reason)  # type: ignore[arg-type]
        elif qos == 2:
            self._ack(PUBREC, packet.packetId, reason)  # type: ignore[arg-type]
        elif broker.pendingWrites:
            broker._backgroundWrites()
        if broker.congestion:
            self._waitFor(broker.congestion)

    def _publishDenied(self, packet: Publish, topic: str) -> None:
        """The ACL refused a PUBLISH: 0x87 under 5.0, dropped under 3.x, or disconnect."""
        why = f"not authorized to publish to {topic!r}"
        self.log.info("{clientId}: {why}", clientId=self.clientId, why=why)
        if self.broker.settings.acl.deny_action == "disconnect":
            self._disconnect(Reason.NOT_AUTHORIZED, why)
            return
        if packet.qos:
            kind = PUBACK if packet.qos == 1 else PUBREC
            # 3.x has no reason codes: acknowledge, and drop the message.
            self._ack(kind, packet.packetId, Reason.NOT_AUTHORIZED, why)  # type: ignore[arg-type]

    def _throttle(self, size: int) -> None:
        """Over [limits] message_rate / byte_rate: stop reading until the buckets refill."""
        delay = self._limiter.take(size, self.reactor.seconds())
        if delay > 0 and self._throttled is None and self.transport is not None:
            self.log.debug(
                "{clientId}: over the publish rate; not reading for {delay:.3f}s",
                clientId=self.clientId,
                delay=delay,
            )
            self._throttled = self.reactor.callLater(delay, self._unthrottle)
            self.transport.pauseProducing()

    def _unthrottle(self) -> None:
        self._throttled = None
        if not self._blockedOn and self.state == CONNECTED:
            self._resumeReading()

    def _publish5(self, packet: Publish) -> tuple[str, dict[str, Any] | None]:
        """Resolve a topic alias and pick the properties to forward (MQTT 5)."""
        v5 = self._v5
        assert v5 is not None
        props = packet.properties
        topic = packet.topic
        if props:
            alias = props.get("topic_alias")
            if alias is not None:
                if alias > self.settings.topic_alias_maximum:
                    raise _Refused(
                        Reason.TOPIC_ALIAS_INVALID, f"topic alias {alias} above the maximum"
                    )  # MQTT-3.3.2-9
                if topic:
                    v5["inAliases"][alias] = topic
                else:
                    topic = v5["inAliases"].get(alias)
                    if topic is None:
                        raise ProtocolViolation(f"unknown topic alias {alias}")
            if "subscription_identifier" in props:
                raise ProtocolViolation(
                    "PUBLISH from a client with a Subscription Identifier", "MQTT-3.3.4-6"
                )
            if props.get("payload_format_indicator") == 1:
                try:
                    packet.payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Refused(
                        Reason.PAYLOAD_FORMAT_INVALID, "payload is not UTF-8 as its format says"
                    ) from None
            forwarded = {k: props[k] for k in _FORWARDED if k in props}
            if not topic:
                raise ProtocolViolation("PUBLISH with an empty topic and no alias", "MQTT-4.7.3-1")
            return topic, forwarded or None
        if not topic:
            raise ProtocolViolation("PUBLISH with an empty topic and no alias", "MQTT-4.7.3-1")
        return topic, None

    def _delay(self, message: Message) -> int:
        try:
            parsed = parseDelayed(message.topic)
        except ValueError as e:
            raise ProtocolViolation(f"PUBLISH: {e}") from None
        assert parsed is not None
        seconds, real = parsed
        message.topic = real
        if not self.broker.delayed.add(message, seconds):
            self.log.warn(
                "{clientId}: delayed message refused: {n} delayed messages held",
                clientId=self.clientId,
                n=len(self.broker.delayed),
            )
            return Reason.QUOTA_EXCEEDED
        return 0

    def _ack(self, packetType: int, pid: int, reason: int = 0, why: str | None = None) -> None:
        if self._v5 is None:
            self._writeAck(encodeAck(packetType, pid), packetType, pid)
            return
        props = {"reason_string": why} if why and self._problemInfo() else None
        self._writeAck(encodeAck5(packetType, pid, reason, props), packetType, pid)

    def handle_puback(self, packet: Any) -> None:
        if not self.session.acknowledge(packet.packetId):  # type: ignore[union-attr]
            self.log.debug(
                "{clientId}: PUBACK for unknown packet id {pid}",
                clientId=self.clientId,
                pid=packet.packetId,
            )

    def handle_pubrec(self, packet: Any) -> None:
        session = self.session
        assert session is not None
        if packet.reasonCode >= 0x80:
            # The subscriber refused it: the QoS 2 flow ends here (MQTT-4.3.3).
            session.abandon(packet.packetId)
            return
        if session.received(packet.packetId):
            self._ack(PUBREL, packet.packetId)
        else:
            self._ack(PUBREL, packet.packetId, Reason.PACKET_IDENTIFIER_NOT_FOUND)

    def handle_pubrel(self, packet: Any) -> None:
        if self.session.releaseIncomingQos2(packet.packetId):  # type: ignore[union-attr]
            self._ack(PUBCOMP, packet.packetId)
        else:
            self._ack(PUBCOMP, packet.packetId, Reason.PACKET_IDENTIFIER_NOT_FOUND)

    def handle_pubcomp(self, packet: Any) -> None:
        self.session.acknowledge(packet.packetId)  # type: ignore[union-attr]

    # SUBSCRIBE / UNSUBSCRIBE

    def handle_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        broker = self.broker
        settings = self.settings
        v5 = self._v5 is not None
        identifier = packet.properties.get("subscription_identifier") if v5 else None
        if identifier is not None and not settings.subscription_identifiers:
            raise _Refused(
                Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            )
        codes: list[int] = []
        retained: list[tuple[list[Message], SubscriptionOptions]] = []
        for topicFilter, optionsByte in packet.topics:
            options = (
                SubscriptionOptions.fromByte(optionsByte, identifier)
                if v5
                else SubscriptionOptions(qos=optionsByte)
            )
            code = self._checkFilter(session, topicFilter, options)
            if code is not None:
                codes.append(code if v5 else SUBACK_FAILURE)
                continue
            if options.qos > settings.max_qos:
                options.qos = settings.max_qos
            if broker.rewriter.active:
                topicFilter = self._rewriteFilter(topicFilter)
            try:
                messages = broker.subscribe(session, topicFilter, options)
            except ExclusiveTaken:
                self._refuseFilter(topicFilter, "exclusive subscription already taken")
                codes.append(Reason.QUOTA_EXCEEDED if v5 else SUBACK_FAILURE)
                continue
            retained.append((messages, options))
            codes.append(options.qos)
        self._writeAck(encodeSuback(packet.packetId, codes, {} if v5 else None))
        # MQTT-3.3.1-6: retained messages follow the SUBACK, with RETAIN set.
        for messages, options in retained:
            if messages:
                kept = options.withRetainKept()
                for message in messages:
                    session.deliver(message, min(message.qos, options.qos), kept)

    def _checkFilter(
        self, session: Session, topicFilter: str, options: SubscriptionOptions
    ) -> int | None:
        """None if the filter may be subscribed, else the 5.0 reason code to refuse it."""
        settings = self.settings
        try:
            group, real, _exclusive = parseFilter(topicFilter)
            validateTopicFilter(real, settings.max_topic_levels)
        except (InvalidTopic, ValueError) as e:
            self._refuseFilter(topicFilter, str(e))
            return Reason.TOPIC_FILTER_INVALID
        if group is not None:
            if options.noLocal:
                raise ProtocolViolation("No Local on a shared subscription", "MQTT-3.8.3-4")
            if not settings.shared_subscription:
                self._refuseFilter(topicFilter, "shared subscriptions are disabled")
                return Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        if not settings.wildcard_subscription and ("+" in real or "#" in real):
            self._refuseFilter(topicFilter, "wildcard subscriptions are disabled")
            return Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
        if (
            settings.max_subscriptions
            and topicFilter not in session.subscriptions
            and len(session.subscriptions) >= settings.max_subscriptions
        ):
            self._refuseFilter(topicFilter, f"limit of {settings.max_subscriptions} reached")
            return Reason.QUOTA_EXCEEDED
        if len(topicFilter) > self.broker.settings.limits.max_topic_length:
            self._refuseFilter(topicFilter, "longer than [limits] max_topic_length")
            return Reason.TOPIC_FILTER_INVALID
        if not self.access.canSubscribe(real):
            self._refuseFilter(topicFilter, "not authorized")
            return Reason.NOT_AUTHORIZED
        return None

    def _rewriteFilter(self, topicFilter: str) -> str:
        group, real, exclusive = parseFilter(topicFilter)
        new = self.broker.rewriter.rewrite(real, "subscribe", self.clientId or "", self.username)
        if new == real:
            return topicFilter
        return topicFilter[: len(topicFilter) - len(real)] + new

    def _refuseFilter(self, topicFilter: str, why: str) -> None:
        self.log.info(
            "{clientId}: refusing subscription {topicFilter!r}: {why}",
            clientId=self.clientId,
            topicFilter=topicFilter,
            why=why,
        )

    def handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        for topicFilter in packet.topics:
            if self.broker.rewriter.active:
                try:
                    topicFilter = self._rewriteFilter(topicFilter)
                except ValueError:
                    pass
            existed = self.broker.unsubscribe(session, topicFilter)
            codes.append(Reason.SUCCESS if existed else Reason.NO_SUBSCRIPTION_EXISTED)
        if self._v5 is not None:
            self._writeAck(encodeUnsuback(packet.packetId, codes, {}))
        else:
            self._writeAck(encodeAck(UNSUBACK, packet.packetId))

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

    # ISessionConnection: outgoing deliveries

    def canDeliver(self) -> bool:
        return not self._paused and self.state == CONNECTED

    def deliver(
        self, message: Message, qos: int, packetId: int | None, dup: bool, sub: Any = None
    ) -> bool:
        """Write C{message}; False when it could not be sent (too large for the client)."""
        retain = message.retain and sub is not None and sub.keepRetain
        if self._v5 is not None:
            return self._deliver5(message, qos, packetId, dup, sub, retain)
        enc = message.encodings
        if enc is None:
            enc = message.encodings = {}
        if qos == 0:
            key = _ENC_QOS0_RETAIN if retain else _ENC_QOS0
            data = enc.get(key)
            if data is None:
                data = enc[key] = encodePublish(message.topic.encode(), message.payload, 0, retain)
        else:
            topic = enc.get(_ENC_TOPIC)
            if topic is None:
                topic = enc[_ENC_TOPIC] = message.topic.encode()
            data = encodePublish(topic, message.payload, qos, retain, dup, packetId)
        self._write(data)  # type: ignore[union-attr]
        stats = self.broker.stats
        stats.mqttSent[qos] += 1
        stats.publishSent += 1
        stats.mqttBytesSent += len(data)
        return True

    def _deliver5(
        self,
        message: Message,
        qos: int,
        packetId: int | None,
        dup: bool,
        sub: Any,
        retain: bool,
    ) -> bool:
        v5 = self._v5
        assert v5 is not None
        enc = message.encodings
        if enc is None:
            enc = message.encodings = {}
        topic = enc.get(_ENC_TOPIC)
        if topic is None:
            topic = enc[_ENC_TOPIC] = message.topic.encode()
        identifiers = sub.identifiers if sub is not None else ()
        plain = not identifiers and message.expiresAt is None and not v5["topicAliasMaximum"]
        newAlias = None
        if plain:
            if qos == 0:
                key = _ENC5_QOS0_RETAIN if retain else _ENC5_QOS0
                data = enc.get(key)
                if data is None:
                    props = enc.get(_ENC5_PROPS)
                    if props is None:
                        props = enc[_ENC5_PROPS] = encodeProperties(message.properties)
                    data = enc[key] = encodePublish(
                        topic, message.payload, 0, retain, False, None, props
                    )
            else:
                props = enc.get(_ENC5_PROPS)
                if props is None:
                    props = enc[_ENC5_PROPS] = encodeProperties(message.properties)
                data = encodePublish(topic, message.payload, qos, retain, dup, packetId, props)
        else:
            d = dict(message.properties) if message.properties else {}
            if message.expiresAt is not None:
                # MQTT-3.3.2-6: forward the remaining lifetime.
                remaining = message.expiresAt - self.reactor.seconds()
                d["message_expiry_interval"] = max(1, math.ceil(remaining))
            if identifiers:
                d["subscription_identifier"] = list(identifiers)
            sendTopic = topic
            aliasMax = v5["topicAliasMaximum"]
            if aliasMax:
                aliases = v5["outAliases"]
                alias = aliases.get(message.topic)
                if alias is not None:
                    d["topic_alias"] = alias
                    sendTopic = b""
                elif len(aliases) < aliasMax:
                    newAlias = len(aliases) + 1
                    d["topic_alias"] = newAlias
            data = encodePublish(
                sendTopic, message.payload, qos, retain, dup, packetId, encodeProperties(d)
            )
        maxSize = v5["maxPacketSize"]
        if maxSize and len(data) > maxSize:
            # MQTT-3.1.2-25: never send a client more than it accepts; drop as if delivered.
            self.broker.stats.mqttDropped[qos] += 1
            self.log.debug(
                "{clientId}: {n}-byte PUBLISH above the client's maximum packet size dropped",
                clientId=self.clientId,
                n=len(data),
            )
            return False
        if newAlias is not None:
            v5["outAliases"][message.topic] = newAlias
        self._write(data)  # type: ignore[union-attr]
        stats = self.broker.stats
        stats.mqttSent[qos] += 1
        stats.publishSent += 1
        stats.mqttBytesSent += len(data)
        return True

    def deliverRelease(self, packetId: int) -> None:
        self._ack(PUBREL, packetId)

    # Back-pressure towards publishers (see Session)

    def _waitFor(self, congested: list[Any]) -> None:
        """Stop reading from this client until the sessions it filled drain."""
        for session in congested:
            if session.congested and session.connection is not self and self not in session.waiters:
                session.addWaiter(self)
                if not self._blockedOn:
                    self._blockedOn = set()
                self._blockedOn.add(session)  # type: ignore[union-attr]
        congested.clear()
        if self._blockedOn and self.transport is not None:
            self.transport.pauseProducing()

    def congestionCleared(self, session: Any) -> None:
        if session in self._blockedOn:
            self._blockedOn.remove(session)  # type: ignore[union-attr]
        if not self._blockedOn and self.state == CONNECTED:
            self._resumeReading()

    def sessionCongested(self) -> None:
        if self._blockedOn:
            for session in self._blockedOn:
                session.removeWaiter(self)
            self._blockedOn = ()
            if self.state == CONNECTED:
                # Later, from the reactor: we may be inside this client's own publish.
                self.reactor.callLater(0, self._resumeReading)

    # Introspection for operators

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary of this client (admin API, logs)."""
        session = self.session
        return {
            "client_id": self.clientId,
            "username": self.username,
            "peer": self.peer,
            "listener": self.listener.label,
            "protocol": "mqtt",
            "protocol_level": self.version,
            "keepalive": self.keepAlive,
            "connected_at": self.connectedAt,
            "clean_session": session.clean if session else None,
            "session_expiry_interval": session.expiryInterval if session else None,
            "subscriptions": len(session.subscriptions) if session else 0,
            "inflight": len(session.inflight) if session else 0,
            "queued": len(session.queue) if session else 0,
        }


class _Refused(MQTTError):
    """A well-formed packet the broker refuses with a specific 5.0 reason code."""

    def __init__(self, reasonCode: int, reason: str) -> None:
        super().__init__(reason)
        self.reasonCode = reasonCode


def _notAllowed(protocol: MQTTServerProtocol, packet: Packet) -> None:
    raise ProtocolViolation(f"a client may not send {packet.name.upper()}")


_HANDLERS: list[Any] = [_notAllowed] * 16
_HANDLERS[CONNECT] = MQTTServerProtocol.handle_connect
_HANDLERS[PUBLISH] = MQTTServerProtocol.handle_publish
_HANDLERS[PUBACK] = MQTTServerProtocol.handle_puback
_HANDLERS[PUBREC] = MQTTServerProtocol.handle_pubrec
_HANDLERS[PUBREL] = MQTTServerProtocol.handle_pubrel
_HANDLERS[PUBCOMP] = MQTTServerProtocol.handle_pubcomp
_HANDLERS[SUBSCRIBE] = MQTTServerProtocol.handle_subscribe
_HANDLERS[UNSUBSCRIBE] = MQTTServerProtocol.handle_unsubscribe
_HANDLERS[PINGREQ] = MQTTServerProtocol.handle_pingreq
_HANDLERS[DISCONNECT] = MQTTServerProtocol.handle_disconnect
_HANDLERS[AUTH] = MQTTServerProtocol.handle_auth
