"""The MQTT 3.1 / 3.1.1 server protocol: one instance per client connection."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.core.auth import Credentials
from robustmq.core.message import Message
from robustmq.core.topics import InvalidTopic, validateTopicFilter, validateTopicName
from robustmq.interfaces import ISessionConnection
from robustmq.protocols.mqtt._codec import (
    PINGRESP_BYTES,
    MQTTParser,
    encodeAck,
    encodeConnack,
    encodePublish,
    encodeSuback,
)
from robustmq.protocols.mqtt._exceptions import MQTTError, ProtocolViolation
from robustmq.protocols.mqtt._packets import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_CREDENTIALS,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_NOT_AUTHORIZED,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    CONNECT,
    DISCONNECT,
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
    Connect,
    Packet,
    Publish,
    Subscribe,
    Unsubscribe,
)

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
_ENC_TOPIC = "mqtt3:topic"

SUPPORTED_LEVELS = (MQTT31, MQTT311)


@implementer(ISessionConnection, IPushProducer)
class MQTTServerProtocol(Protocol):
    """Speaks MQTT to one client and connects it to its broker session.

    Packets are dispatched by type to C{handle_<name>} methods.  Bad input
    closes this connection only, with a log line naming the client and the
    reason.  Delivery pauses (messages wait in the bounded session queue)
    while the transport says its write buffer is full (64 KiB in Twisted's TCP
    transport); reading pauses while a session this client published to is
    congested (see L{robustmq.core.session.Session}).
    """

    log = Logger()

    def __init__(self, broker: Broker, listener: ListenerSettings, reactor: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.reactor = reactor
        self.settings = broker.settings.mqtt
        self.parser = MQTTParser(self.settings.max_packet_size)
        self.state = AWAIT_CONNECT
        self.session: Session | None = None
        self.clientId: str | None = None
        self.username: str | None = None
        self.version = MQTT311
        self.keepAlive = 0
        self.will: Message | None = None
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

    # Connection lifecycle

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._lastActivity = self.reactor.seconds()
        self._timer = self.reactor.callLater(self.settings.connect_timeout, self._connectTimeout)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        wasConnected = self.state in (CONNECTED, CLOSING) and self.session is not None
        self.state = CLOSING
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.factory is not None:
            self.factory.connectionEnded(self)
        for session in self._blockedOn:
            session.removeWaiter(self)
        self._blockedOn = ()
        if not wasConnected:
            return
        broker = self.broker
        broker.connectionClosed(self)
        assert self.session is not None
        broker.sessions.close(self.session, self)
        why = self._closeReason or "connection lost"
        self.log.info("client {clientId} disconnected: {why}", clientId=self.clientId, why=why)
        will = self.will
        if will is not None:
            self.will = None
            self.log.info(
                "publishing will of {clientId} on {topic}", clientId=self.clientId, topic=will.topic
            )
            broker.publish(will)
            broker.congestion.clear()

    def _close(self, why: str) -> None:
        if self._closeReason is None:
            self._closeReason = why
        self.state = CLOSING
        if self.transport is not None:
            self.transport.loseConnection()

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
        self._close(f"{type(error).__name__}: {error}")

    def shutdown(self) -> None:
        """The node is stopping: close without publishing the will."""
        self.will = None
        self._close("server shutting down")

    def takeOver(self) -> None:
        """Another connection took this client id (MQTT-3.1.4-2)."""
        self._close("session taken over by a new connection")

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
        self._lastActivity = self.reactor.seconds()
        self.broker.stats.bytesReceived += len(data)
        try:
            packets = self.parser.feed(data)
        except MQTTError as e:
            self._protocolError(e)
            return
        if self._held is not None:
            self._held.extend(packets)
            return
        self._run(packets, 0)

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
                    self._held = packets[i:]
                    return
                else:
                    return
                i += 1
                if self._blockedOn and i < n:
                    self._held = packets[i:]
                    return
        except MQTTError as e:
            self._protocolError(e)

    def _resumeReading(self) -> None:
        """Handle held packets, then read from the socket again unless blocked anew."""
        held, self._held = self._held, None
        if held:
            self._run(held, 0)
        if self._held is None and not self._blockedOn and self.state != CLOSING:
            if self.transport is not None:
                self.transport.resumeProducing()

    # CONNECT

    def _connectTimeout(self) -> None:
        self._timer = None
        if self.state == AWAIT_CONNECT:
            self.log.info("closing {peer}: no CONNECT within the connect timeout", peer=self.peer)
            self._close("connect timeout")

    def _refuse(self, code: int, why: str) -> None:
        self.log.info(
            "refusing client {clientId} from {peer}: {why} (CONNACK {code})",
            clientId=self.clientId,
            peer=self.peer,
            why=why,
            code=code,
        )
        if self.transport is not None:
            self.transport.write(encodeConnack(False, code))
        self._close(why)

    def handle_connect(self, packet: Connect) -> None:
        if self.state != AWAIT_CONNECT:
            raise ProtocolViolation("second CONNECT on a connection", "MQTT-3.1.0-2")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.clientId = packet.clientId
        if packet.protocolLevel not in SUPPORTED_LEVELS:
            self._refuse(
                CONNACK_UNACCEPTABLE_PROTOCOL,
                f"unsupported protocol level {packet.protocolLevel}",
            )
            return
        self.version = packet.protocolLevel
        clientId = packet.clientId
        if not clientId:
            if self.version == MQTT31:
                self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id (MQTT 3.1)")
                return
            if not packet.cleanSession:
                self._refuse(
                    CONNACK_IDENTIFIER_REJECTED,
                    "empty client id with clean session 0 [MQTT-3.1.3-8]",
                )
                return
            if not self.settings.allow_empty_client_id:
                self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id not allowed by config")
                return
            clientId = f"auto-{uuid.uuid4().hex}"
        if len(clientId) > self.settings.max_client_id_length:
            self._refuse(CONNACK_IDENTIFIER_REJECTED, "client id too long")
            return
        if packet.willTopic is not None:
            try:
                validateTopicName(packet.willTopic, self.settings.max_topic_levels)
            except InvalidTopic as e:
                raise ProtocolViolation(f"CONNECT will topic: {e}", "MQTT-3.1.3-10") from None
        self.clientId = clientId
        self.username = packet.username
        self.state = AUTHENTICATING
        if self.transport is not None:
            self.transport.pauseProducing()
        credentials = Credentials(
            protocol="mqtt",
            clientId=clientId,
            username=packet.username,
            password=packet.password,
            peerHost=self.peer.rsplit(":", 1)[0],
            listener=self.listener.label,
        )
        d = defer.ensureDeferred(self.broker.auth.authenticate(credentials))
        d.addCallback(self._authenticated, packet, clientId)
        d.addErrback(self._authFailed)

    def _authFailed(self, failure: Failure) -> None:
        self.log.failure("authentication of {clientId} failed", failure, clientId=self.clientId)
        if self.state == AUTHENTICATING:
            self._refuse(3, "authentication error")

    def _authenticated(self, allowed: bool, packet: Connect, clientId: str) -> None:
        if self.state != AUTHENTICATING or self.transport is None:
            return
        if not allowed:
            code = (
                CONNACK_BAD_CREDENTIALS if packet.password is not None else CONNACK_NOT_AUTHORIZED
            )
            self._refuse(code, "not authorised")
            return
        broker = self.broker
        session, present = broker.sessions.open(clientId, packet.cleanSession, self)
        self.session = session
        if packet.willTopic is not None:
            self.will = Message(
                packet.willTopic,
                packet.willPayload or b"",
                packet.willQos,
                packet.willRetain,
                origin=clientId,
            )
        self.keepAlive = packet.keepAlive
        if self.keepAlive:
            self._timer = self.reactor.callLater(self.keepAlive * 1.5, self._checkKeepAlive)
        self.transport.write(encodeConnack(present, CONNACK_ACCEPTED))
        self.state = CONNECTED
        self.connectedAt = self.reactor.seconds()
        broker.connectionOpened(self)
        self.log.info(
            "client {clientId} connected from {peer} on {listener} "
            "(MQTT level {protocolLevel}, clean={clean}, keepalive={keepAlive}, session present={present})",
            clientId=clientId,
            peer=self.peer,
            listener=self.listener.label,
            protocolLevel=self.version,
            clean=packet.cleanSession,
            keepAlive=self.keepAlive,
            present=present,
        )
        session.attach(self)
        self._resumeReading()

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
            self._close("keep-alive timeout")
            if self.transport is not None:
                self.transport.abortConnection()
        else:
            self._timer = self.reactor.callLater(limit - idle, self._checkKeepAlive)

    # PUBLISH and acknowledgements

    def handle_publish(self, packet: Publish) -> None:
        topic = packet.topic
        maxLevels = self.settings.max_topic_levels
        if topic.count("/") >= maxLevels:
            raise ProtocolViolation(f"PUBLISH: topic has more than {maxLevels} levels")
        qos = packet.qos
        broker = self.broker
        broker.stats.publishReceived += 1
        message = Message(topic, packet.payload, qos, packet.retain, None, None, self.clientId)
        if qos == 0:
            raw = packet.raw
            if raw is not None and not packet.retain:
                message.encodings = {_ENC_QOS0: raw}
            broker.publish(message)
        elif qos == 1:
            broker.publish(message)
            self.transport.write(encodeAck(PUBACK, packet.packetId))  # type: ignore[union-attr, arg-type]
        else:
            pid = packet.packetId
            session = self.session
            assert session is not None and pid is not None
            if pid not in session.awaitingRel:
                if len(session.awaitingRel) >= self.settings.max_awaiting_rel:
                    raise ProtocolViolation(
                        f"more than {self.settings.max_awaiting_rel} QoS 2 messages awaiting PUBREL"
                    )
                session.startIncomingQos2(pid)
                broker.publish(message)
            self.transport.write(encodeAck(PUBREC, pid))  # type: ignore[union-attr]
        if broker.congestion:
            self._waitFor(broker.congestion)

    def handle_puback(self, packet: Any) -> None:
        if not self.session.acknowledge(packet.packetId):  # type: ignore[union-attr]
            self.log.debug(
                "{clientId}: PUBACK for unknown packet id {pid}",
                clientId=self.clientId,
                pid=packet.packetId,
            )

    def handle_pubrec(self, packet: Any) -> None:
        self.session.received(packet.packetId)  # type: ignore[union-attr]
        self.transport.write(encodeAck(PUBREL, packet.packetId))  # type: ignore[union-attr]

    def handle_pubrel(self, packet: Any) -> None:
        self.session.releaseIncomingQos2(packet.packetId)  # type: ignore[union-attr]
        self.transport.write(encodeAck(PUBCOMP, packet.packetId))  # type: ignore[union-attr]

    def handle_pubcomp(self, packet: Any) -> None:
        self.session.acknowledge(packet.packetId)  # type: ignore[union-attr]

    # SUBSCRIBE / UNSUBSCRIBE

    def handle_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        broker = self.broker
        settings = self.settings
        codes: list[int] = []
        retained: list[tuple[list[Message], int]] = []
        for topicFilter, qos in packet.topics:
            try:
                validateTopicFilter(topicFilter, settings.max_topic_levels)
            except InvalidTopic as e:
                self.log.info(
                    "{clientId}: refusing subscription {topicFilter!r}: {why}",
                    clientId=self.clientId,
                    topicFilter=topicFilter,
                    why=str(e),
                )
                codes.append(SUBACK_FAILURE)
                continue
            if (
                settings.max_subscriptions
                and topicFilter not in session.subscriptions
                and len(session.subscriptions) >= settings.max_subscriptions
            ):
                self.log.info(
                    "{clientId}: refusing subscription {topicFilter!r}: limit of {n} reached",
                    clientId=self.clientId,
                    topicFilter=topicFilter,
                    n=settings.max_subscriptions,
                )
                codes.append(SUBACK_FAILURE)
                continue
            retained.append((broker.subscribe(session, topicFilter, qos), qos))
            codes.append(qos)
        self.transport.write(encodeSuback(packet.packetId, codes))  # type: ignore[union-attr]
        # MQTT-3.3.1-6: retained messages follow the SUBACK, with RETAIN set.
        for messages, granted in retained:
            for message in messages:
                session.deliver(message, message.qos if message.qos < granted else granted)

    def handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        for topicFilter in packet.topics:
            self.broker.unsubscribe(session, topicFilter)
        self.transport.write(encodeAck(UNSUBACK, packet.packetId))  # type: ignore[union-attr]

    def handle_pingreq(self, packet: Packet) -> None:
        self.transport.write(PINGRESP_BYTES)  # type: ignore[union-attr]

    def handle_disconnect(self, packet: Packet) -> None:
        # MQTT-3.14.4-3: a clean DISCONNECT discards the will.
        self.will = None
        self._close("client sent DISCONNECT")

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

    # ISessionConnection: outgoing deliveries

    def canDeliver(self) -> bool:
        return not self._paused and self.state == CONNECTED

    def deliver(self, message: Message, qos: int, packetId: int | None, dup: bool) -> None:
        enc = message.encodings
        if enc is None:
            enc = message.encodings = {}
        if qos == 0:
            data = enc.get(_ENC_QOS0)
            if data is None:
                data = enc[_ENC_QOS0] = encodePublish(
                    message.topic.encode(), message.payload, 0, message.retain
                )
        else:
            topic = enc.get(_ENC_TOPIC)
            if topic is None:
                topic = enc[_ENC_TOPIC] = message.topic.encode()
            data = encodePublish(topic, message.payload, qos, message.retain, dup, packetId)
        self.transport.write(data)  # type: ignore[union-attr]
        stats = self.broker.stats
        stats.messagesSent += 1
        stats.publishSent += 1
        stats.bytesSent += len(data)

    def deliverRelease(self, packetId: int) -> None:
        self.transport.write(encodeAck(PUBREL, packetId))  # type: ignore[union-attr]

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
            "subscriptions": len(session.subscriptions) if session else 0,
            "inflight": len(session.inflight) if session else 0,
            "queued": len(session.queue) if session else 0,
        }


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
