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
    UnacceptedPublish,
)
from robustmq.protocols.mqtt._session import AWAITING_COMP

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
        if packet.qos == 2 and self._paceQos2(packet):
            return
        self._publish(packet)

    def _publish(self, packet: Publish) -> None:
        """Check, authorize and route one PUBLISH, and acknowledge it."""
        topic = packet.topic
        qos = packet.qos
        settings = self.settings
        broker = self.broker
        properties = None
        if self._limiter is not None:
            self._throttle(len(packet.payload))
        if self._v5 is not None:
            if packet.__class__ is UnacceptedPublish:
                # Beyond [limits] max_topic_length or [mqtt] max_topic_levels.
                self._refusePublish(packet, Reason.TOPIC_NAME_INVALID, packet.why)  # type: ignore[attr-defined]
                return
            topic, properties = self._publish5(packet)
            if properties is not None and properties.get("payload_format_indicator") == 1:
                try:
                    packet.payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._refusePublish(
                        packet,
                        Reason.PAYLOAD_FORMAT_INVALID,
                        "payload is not UTF-8 as its Payload Format Indicator says",
                    )
                    return
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
                    # MQTT 5.0 section 3.3.4: more than the Receive Maximum we sent.
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

    def _refusePublish(self, packet: Publish, reason: int, why: str) -> None:
        """Refuse one 5.0 PUBLISH that the connection survives: PUBACK/PUBREC C{reason}.

        A QoS 0 message has nothing to carry the reason: it is dropped (and
        logged), as mosquitto does.  A refused QoS 2 message starts no QoS 2
        flow (a PUBREC reason code of 0x80 or more ends it, MQTT 5.0 section 4.3.3).
        """
        self.log.info(
            "{clientId}: PUBLISH to {topic!r} refused ({reason:#x}): {why}",
            clientId=self.clientId,
            topic=packet.topic,
            reason=reason,
            why=why,
        )
        self.broker.stats.mqttDropped[packet.qos] += 1
        if packet.qos:
            self._ack(PUBACK if packet.qos == 1 else PUBREC, packet.packetId, reason, why)  # type: ignore[arg-type]

    # QoS 2 pacing under 3.1 / 3.1.1

    def _paceQos2(self, packet: Publish) -> bool:
        """Hold a 3.x QoS 2 PUBLISH while C{max_awaiting_rel} messages await PUBREL.

        MQTT 5.0 has a Receive Maximum, and a client beyond it gets
        DISCONNECT 0x93.  A 3.1/3.1.1 client was promised no limit, and some
        (paho) resend their whole queue at once after reconnecting; closing
        the connection would only make them send it all again.  Instead the
        new message is held, unacknowledged and not yet routed, and handled
        in arrival order as PUBRELs free room (L{_releaseHeldQos2}).  Held
        payloads are bounded by C{max_queued_bytes}; beyond that the client is
        disconnected.  Returns True when C{packet} was held.
        """
        if self._v5 is not None:
            return False
        session = self.session
        assert session is not None
        pid = packet.packetId
        awaiting = session.awaitingRel
        held = self._heldQos2
        if pid in awaiting:
            return False  # a resend of a message already routed: PUBREC again
        if held is None:
            if len(awaiting) < self.settings.max_awaiting_rel:
                return False
            held = self._heldQos2 = {}
            self.log.info(
                "{clientId}: {n} QoS 2 messages await PUBREL; holding further ones",
                clientId=self.clientId,
                n=len(awaiting),
            )
        if pid in held:
            return True  # a resend of a held one: it is handled once, when released
        size = len(packet.payload)
        if self._heldQos2Bytes + size > self.settings.max_queued_bytes:
            raise Refused(
                Reason.RECEIVE_MAXIMUM_EXCEEDED,
                f"{len(held)} QoS 2 messages held while {len(awaiting)} await PUBREL "
                f"reach max_queued_bytes",
            )
        held[pid] = packet  # type: ignore[index]
        self._heldQos2Bytes += size
        return True

    def _releaseHeldQos2(self) -> None:
        """A PUBREL freed room: handle the oldest held QoS 2 PUBLISH."""
        held = self._heldQos2
        if not held:
            return
        session = self.session
        assert session is not None
        if len(session.awaitingRel) >= self.settings.max_awaiting_rel:
            return
        pid = next(iter(held))
        packet = held.pop(pid)
        self._heldQos2Bytes -= len(packet.payload)
        if not held:
            self._heldQos2 = None
        self._publish(packet)

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
                if alias == 0 or alias > self.settings.topic_alias_maximum:
                    # MQTT-3.3.2-8 (0 is not a Topic Alias) and MQTT-3.3.2-9 (above
                    # the Topic Alias Maximum in our CONNACK, 0 when none was sent).
                    raise Refused(
                        Reason.TOPIC_ALIAS_INVALID,
                        f"topic alias {alias} outside 1..{self.settings.topic_alias_maximum}",
                    )
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
        data = self._fitted(encodeAck5, (packetType, pid, reason), self._reasonProps(why))
        self._writeAck(data, writes, packetType, pid)

    # Acknowledgements of deliveries to the client.  One of the wrong kind
    # for the delivery it names is a protocol error (MQTT 3.1.1 section 4.3,
    # MQTT 5.0 section 4.3: PUBACK ends QoS 1 only, PUBREC and PUBCOMP QoS 2
    # only, PUBCOMP only after PUBREL): the connection is closed (5.0:
    # DISCONNECT 0x82), as mosquitto does.  An id with no delivery in flight
    # is ignored: it may acknowledge a resend that was already completed.

    def _wrongAck(self, kind: str, pid: int, what: str) -> None:
        raise ProtocolViolation(f"{kind} for packet id {pid}, which is {what}")

    def handle_puback(self, packet: Any) -> None:
        session = self.session
        assert session is not None
        pid = packet.packetId
        flow = session.outgoing(pid)
        if flow is None:
            self.log.debug(
                "{clientId}: PUBACK for unknown packet id {pid}", clientId=self.clientId, pid=pid
            )
            return
        if flow[0] != 1:
            self._wrongAck("PUBACK", pid, "a QoS 2 delivery")
        session.acknowledge(pid)

    def handle_pubrec(self, packet: Any) -> None:
        session = self.session
        assert session is not None
        pid = packet.packetId
        flow = session.outgoing(pid)
        if flow is not None and flow[0] != 2:
            self._wrongAck("PUBREC", pid, "a QoS 1 delivery")
        if packet.reasonCode >= 0x80:
            # The subscriber refused it: the QoS 2 flow ends here (MQTT-4.3.3).
            session.abandon(pid)
            return
        if session.received(pid):
            self._ack(PUBREL, pid)
        else:
            self._ack(PUBREL, pid, Reason.PACKET_IDENTIFIER_NOT_FOUND)

    def handle_pubrel(self, packet: Any) -> None:
        """PUBREL: the client releases an incoming QoS 2 message.

        An id not awaiting release is answered with PUBCOMP (5.0: reason
        0x92, Packet Identifier not found), as MQTT 5.0 section 4.3.3 and the
        PUBCOMP reason codes (3.7.2.1) say: a client that reconnects resends
        PUBRELs the broker may have completed already.
        """
        pid = packet.packetId
        if self.session.releaseIncomingQos2(pid):  # type: ignore[union-attr]
            self._ack(PUBCOMP, pid)
            self._releaseHeldQos2()
        else:
            self._ack(PUBCOMP, pid, Reason.PACKET_IDENTIFIER_NOT_FOUND)

    def handle_pubcomp(self, packet: Any) -> None:
        session = self.session
        assert session is not None
        pid = packet.packetId
        flow = session.outgoing(pid)
        if flow is None:
            return
        if flow[0] != 2:
            self._wrongAck("PUBCOMP", pid, "a QoS 1 delivery")
        if flow[1] != AWAITING_COMP:
            self._wrongAck("PUBCOMP", pid, "a QoS 2 delivery not yet released (no PUBREC)")
        session.acknowledge(pid)
