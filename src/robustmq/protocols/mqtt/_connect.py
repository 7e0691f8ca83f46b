"""CONNECT, enhanced authentication (MQTT 5 AUTH) and keep-alive."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from robustmq.core.auth import Credentials
from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.security import securityOf
from robustmq.core.subscription import SubscriptionOptions
from robustmq.core.topics import InvalidTopic, validateTopicFilter, validateTopicName
from robustmq.protocols.mqtt._codec import (
    encodeAuth,
    encodeConnack,
)
from robustmq.protocols.mqtt._exceptions import ProtocolViolation
from robustmq.protocols.mqtt._node import ExclusiveTaken
from robustmq.protocols.mqtt._packets import (
    CONNACK_V3_FOR_REASON,
    MQTT5,
    MQTT31,
    MQTT311,
    Auth,
    Connect,
    Reason,
)
from robustmq.protocols.mqtt._rewrite import expand

if TYPE_CHECKING:
    from robustmq.protocols.mqtt._session import Session

    pass
from robustmq.protocols.mqtt._connection import (
    AUTHENTICATING,
    AWAIT_CONNECT,
    CONNECTED,
    FORWARDED,
    PROTOCOLS,
    MQTTConnection,
)


class ConnectHandling(MQTTConnection):
    """CONNECT: checks, authentication, the session it opens or resumes, CONNACK, keep-alive."""

    __slots__ = ()

    # CONNECT

    def _brokerReady(self) -> None:
        if self.state == AWAIT_CONNECT and self.transport is not None:
            self.transport.resumeProducing()

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
                self._write(
                    self._fitted(encodeConnack, (False, code), self._reasonProps(why, props) or {})
                )
            else:
                self._write(encodeConnack(False, code))
        self._close(why, linger=True)

    def handle_connect(self, packet: Connect) -> None:
        if self.state != AWAIT_CONNECT:
            raise ProtocolViolation("second CONNECT on a connection", "MQTT-3.1.0-2")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.clientId = packet.clientId
        settings = self.settings
        if (packet.protocolName, packet.protocolLevel) not in PROTOCOLS:
            self.version = MQTT311
            self._refuse(
                Reason.UNSUPPORTED_PROTOCOL_VERSION,
                f"unsupported protocol level {packet.protocolLevel}",
            )
            return
        self.version = packet.protocolLevel
        self.bridge = packet.bridge
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
                if len(packet.willTopic) > self.broker.settings.limits.max_topic_length:
                    raise InvalidTopic("longer than [limits] max_topic_length")
            except InvalidTopic as e:
                if v5:
                    # CONNACK 0x90: "The Will Topic Name is not malformed, but is not
                    # accepted by this Server" (MQTT 5.0 section 3.2.2.2).
                    self._refuse(Reason.TOPIC_NAME_INVALID, f"will topic: {e}")
                    return
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
        if attributes and attributes.get("anonymous") and self.username is not None:
            # An unknown user let in as anonymous ([auth] unknown_users_as_anonymous):
            # the name it claimed grants nothing.
            self.log.info(
                "client {clientId}: unknown user {username!r} connects as anonymous",
                clientId=clientId,
                username=self.username,
            )
            self.username = None
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
        session, present = self.node.sessions.open(clientId, packet.cleanSession, self, expiry)
        self.session = session
        maxInflight = settings.max_inflight
        if v5 is not None and v5["receiveMaximum"] < maxInflight:
            maxInflight = v5["receiveMaximum"]
        session.maxInflight = maxInflight
        if packet.willTopic is not None:
            willProps = {
                k: packet.willProperties[k] for k in FORWARDED if k in packet.willProperties
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
        if connack is not None:
            self.keepAlive = connack.get("server_keep_alive", self.keepAlive)
        if self.keepAlive:
            self._timer = self.broker.timers.callLater(self.keepAlive * 1.5, self._checkKeepAlive)
        # MQTT 3.1 has no Session Present flag: the first CONNACK byte is reserved (0).
        self._write(encodeConnack(present and self.version != MQTT31, Reason.SUCCESS, connack))
        self.state = CONNECTED
        self.connectedAt = self.reactor.seconds()
        broker.connectionOpened(self)
        self.log.info(
            "client {clientId} connected from {peer} on {listener} "
            "(MQTT level {protocolLevel}{bridge}, clean={clean}, keepalive={keepAlive}, "
            "session present={present})",
            bridge=", bridge" if self.bridge else "",
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
        """What the broker tells a 5.0 client about itself (section 3.2.2.3).

        Only what differs from the value a client assumes when the property is
        absent is sent, in the order of section 3.2.2.3 (docs/mqtt.md):
        Session Expiry Interval (when not the one asked for), Receive Maximum
        (below 65,535), Maximum QoS (below 2), Retain Available (0),
        Maximum Packet Size (when one is configured), Assigned Client
        Identifier, Topic Alias Maximum (above 0), Wildcard / Subscription
        Identifiers / Shared Subscription Available (0), Server Keep Alive
        (when it replaces the client's), Response Information, and the
        enhanced authentication's method and data.
        """
        s = self.settings
        v5 = self._v5
        assert v5 is not None
        props: dict[str, Any] = {}
        if expiry != packet.properties.get("session_expiry_interval", 0):
            props["session_expiry_interval"] = expiry
        if s.max_awaiting_rel < 65535:
            props["receive_maximum"] = s.max_awaiting_rel
        if s.max_qos < 2:
            props["maximum_qos"] = s.max_qos
        if not s.retain_available:
            props["retain_available"] = 0
        if s.max_packet_size:
            props["maximum_packet_size"] = s.max_packet_size
        if assignedId is not None:
            props["assigned_client_identifier"] = assignedId
        if s.topic_alias_maximum:
            props["topic_alias_maximum"] = s.topic_alias_maximum
        if not s.wildcard_subscription:
            props["wildcard_subscription_available"] = 0
        if not s.subscription_identifiers:
            props["subscription_identifier_available"] = 0
        if not s.shared_subscription:
            props["shared_subscription_available"] = 0
        if s.max_keepalive and (packet.keepAlive == 0 or packet.keepAlive > s.max_keepalive):
            # MQTT-3.2.2-21: the client uses the Server Keep Alive instead of its own.
            props["server_keep_alive"] = s.max_keepalive
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
                outcome = Outcome()
                retained = self.node.subscribe(session, topicFilter, options, outcome)
                outcome.background()
            except (InvalidTopic, ValueError, ExclusiveTaken) as e:
                self.log.warn(
                    "auto-subscription {topicFilter!r} for {clientId} failed: {why}",
                    topicFilter=topicFilter,
                    clientId=self.clientId,
                    why=str(e),
                )
                continue
            kept = options.withRetainKept()
            outcome = Outcome()
            for message in retained:
                session.deliver(message, min(message.qos, options.qos), kept, outcome)
            outcome.background()

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
            # The lingering close aborts a client that is gone for good.
            self._disconnect(Reason.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
        else:
            self._timer = self.broker.timers.callLater(limit - idle, self._checkKeepAlive)
