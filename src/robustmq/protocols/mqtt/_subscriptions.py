"""SUBSCRIBE and UNSUBSCRIBE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustmq.core.message import Message
from robustmq.core.outcome import Outcome
from robustmq.core.subscription import SubscriptionOptions, parseFilter
from robustmq.core.topics import InvalidTopic, validateTopicFilter
from robustmq.protocols.mqtt._codec import (
    encodeAck,
    encodeSuback,
    encodeUnsuback,
)
from robustmq.protocols.mqtt._exceptions import ProtocolViolation, Refused
from robustmq.protocols.mqtt._node import ExclusiveTaken
from robustmq.protocols.mqtt._packets import (
    SUBACK_FAILURE,
    UNSUBACK,
    Reason,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from robustmq.protocols.mqtt._session import Session

    pass
from robustmq.protocols.mqtt._connection import (
    MQTTConnection,
)


class SubscriptionHandling(MQTTConnection):
    """SUBSCRIBE and UNSUBSCRIBE: filter checks, ACL, rewrite, retained messages to send."""

    __slots__ = ()

    # SUBSCRIBE / UNSUBSCRIBE

    def handle_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None
        settings = self.settings
        v5 = self._v5 is not None
        identifier = packet.properties.get("subscription_identifier") if v5 else None
        if identifier is not None and not settings.subscription_identifiers:
            raise Refused(
                Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            )
        codes: list[int] = []
        retained: list[tuple[list[Message], SubscriptionOptions]] = []
        outcome = Outcome()
        for topicFilter, optionsByte in packet.topics:
            if v5:
                options = SubscriptionOptions.fromByte(optionsByte, identifier)
            elif self.bridge and not topicFilter.startswith(("$share/", "$queue/")):
                # A bridge's own messages do not come back to it, and retained ones
                # keep their flag (mosquitto's is_bridge semantics for try_private).
                options = SubscriptionOptions(qos=optionsByte, noLocal=True, keepRetain=True)
            else:
                options = SubscriptionOptions(qos=optionsByte)
            code = self._checkFilter(session, topicFilter, options)
            if code is not None:
                codes.append(code if v5 else SUBACK_FAILURE)
                continue
            if options.qos > settings.max_qos:
                options.qos = settings.max_qos
            if self.node.rewriter.active:
                topicFilter = self._rewriteFilter(topicFilter)
            # Authorised on the filter actually subscribed: after rewriting.
            if not self.access.canSubscribe(parseFilter(topicFilter)[1]):
                self._refuseFilter(topicFilter, "not authorized")
                codes.append(Reason.NOT_AUTHORIZED if v5 else SUBACK_FAILURE)
                continue
            try:
                messages = self.node.subscribe(session, topicFilter, options, outcome)
            except ExclusiveTaken:
                self._refuseFilter(topicFilter, "exclusive subscription already taken")
                codes.append(Reason.QUOTA_EXCEEDED if v5 else SUBACK_FAILURE)
                continue
            retained.append((messages, options))
            codes.append(options.qos)
        self._writeAck(encodeSuback(packet.packetId, codes, {} if v5 else None), outcome.writes)
        # MQTT-3.3.1-6: retained messages follow the SUBACK, with RETAIN set.
        delivered = Outcome()
        for messages, options in retained:
            if messages:
                kept = options.withRetainKept()
                for message in messages:
                    session.deliver(message, min(message.qos, options.qos), kept, delivered)
        delivered.background()

    def _checkFilter(
        self, session: Session, topicFilter: str, options: SubscriptionOptions
    ) -> int | None:
        """None if the filter may be subscribed, else the 5.0 reason code to refuse it."""
        settings = self.settings
        # Server limits first, in time linear in the filter's length (a filter
        # of 65,535 empty levels costs one count): beyond them the filter is
        # refused with 0x97 Quota exceeded (3.x: 0x80), whatever else is wrong with it.
        if len(topicFilter) > self.broker.settings.limits.max_topic_length:
            self._refuseFilter(topicFilter[:64], "longer than [limits] max_topic_length")
            return Reason.QUOTA_EXCEEDED
        if topicFilter.count("/") >= settings.max_topic_levels:
            self._refuseFilter(
                topicFilter[:64], f"more than [mqtt] max_topic_levels ({settings.max_topic_levels})"
            )
            return Reason.QUOTA_EXCEEDED
        try:
            group, real, _exclusive = parseFilter(topicFilter)
            validateTopicFilter(real)
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
        return None

    def _rewriteFilter(self, topicFilter: str) -> str:
        group, real, exclusive = parseFilter(topicFilter)
        new = self.node.rewriter.rewrite(real, "subscribe", self.clientId or "", self.username)
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
        outcome = Outcome()
        for topicFilter in packet.topics:
            try:
                validateTopicFilter(parseFilter(topicFilter)[1])
            except (InvalidTopic, ValueError):
                # MQTT 5.0 UNSUBACK reason 0x8F: the filter is not a valid filter.
                codes.append(Reason.TOPIC_FILTER_INVALID)
                continue
            if self.node.rewriter.active:
                try:
                    topicFilter = self._rewriteFilter(topicFilter)
                except ValueError:
                    pass
            existed = self.node.unsubscribe(session, topicFilter, outcome)
            codes.append(Reason.SUCCESS if existed else Reason.NO_SUBSCRIPTION_EXISTED)
        if self._v5 is not None:
            self._writeAck(encodeUnsuback(packet.packetId, codes, {}), outcome.writes)
        else:
            self._writeAck(encodeAck(UNSUBACK, packet.packetId), outcome.writes)
