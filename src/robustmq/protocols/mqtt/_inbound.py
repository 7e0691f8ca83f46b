"""Inbound PUBLISH from a client and the acknowledgements it sends and receives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.protocols.mqtt._codec import (
    encodeAck,
    encodeAck5,
)
from robustmq.protocols.mqtt._delayed import parseDelayed
from robustmq.protocols.mqtt._exceptions import ProtocolViolation, Refused
from robustmq.protocols.mqtt._packets import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Publish,
    Reason,
)

if TYPE_CHECKING:
    pass
from robustmq.protocols.mqtt._connection import (
    CONNECTED,
    ENC_QOS0,
    FORWARDED,
    MQTTConnection,
)


class InboundPublishing(MQTTConnection):
    """PUBLISH from the client (ACL, rewrite, delay, routing) and PUBACK/PUBREC/PUBREL/PUBCOMP."""

    __slots__ = ()

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
            raise Refused(Reason.QOS_NOT_SUPPORTED, f"PUBLISH at QoS {qos} above the maximum")
        if packet.retain and not settings.retain_available:
            raise Refused(Reason.RETAIN_NOT_SUPPORTED, "retained PUBLISH but retain is off")
        rewriter = self.node.rewriter
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
        outcome = None
        if topic[0] == "$" and topic.startswith("$delayed/"):
            reason = self._delay(message)
        elif qos == 0:
            raw = packet.raw
            if raw is not None and not packet.retain:
                message.encodings = {ENC_QOS0: raw}
            outcome = broker.publish(message)
        elif qos == 1:
            outcome = broker.publish(message)
            if not outcome.delivered and self._v5 is not None:
                reason = Reason.NO_MATCHING_SUBSCRIBERS
        else:
            pid = packet.packetId
            session = self.session
            assert session is not None and pid is not None
            if pid not in session.awaitingRel:
                if len(session.awaitingRel) >= settings.max_awaiting_rel:
                    raise Refused(
                        Reason.RECEIVE_MAXIMUM_EXCEEDED,
                        f"more than {settings.max_awaiting_rel} QoS 2 messages awaiting PUBREL",
                    )
                outcome = Outcome()
                session.startIncomingQos2(pid, outcome)
                broker.publish(message, outcome)
                if not outcome.delivered and self._v5 is not None:
                    reason = Reason.NO_MATCHING_SUBSCRIBERS
        if outcome is None:
            if qos:
                self._ack(PUBACK if qos == 1 else PUBREC, packet.packetId, reason)  # type: ignore[arg-type]
            return
        if qos:
            self._ack(
                PUBACK if qos == 1 else PUBREC,
                packet.packetId,  # type: ignore[arg-type]
                reason,
                None,
                outcome.writes,
            )
        elif outcome.writes:
            outcome.background()
        if outcome.congested:
            self._waitFor(outcome.congested)

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
                    raise Refused(
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
                    raise Refused(
                        Reason.PAYLOAD_FORMAT_INVALID, "payload is not UTF-8 as its format says"
                    ) from None
            forwarded = {k: props[k] for k in FORWARDED if k in props}
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
        if not self.node.delayed.add(message, seconds):
            self.log.warn(
                "{clientId}: delayed message refused: {n} delayed messages held",
                clientId=self.clientId,
                n=len(self.node.delayed),
            )
            return Reason.QUOTA_EXCEEDED
        return 0

    def _ack(
        self,
        packetType: int,
        pid: int,
        reason: int = 0,
        why: str | None = None,
        writes: list[Any] | None = None,
    ) -> None:
        """Acknowledge packet C{pid} once C{writes} (its durable writes) are done."""
        if self._v5 is None:
            self._writeAck(encodeAck(packetType, pid), writes, packetType, pid)
            return
        props = {"reason_string": why} if why and self._problemInfo() else None
        self._writeAck(encodeAck5(packetType, pid, reason, props), writes, packetType, pid)

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
