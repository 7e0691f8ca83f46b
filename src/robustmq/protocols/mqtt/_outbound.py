"""Outbound delivery to a client and flow control in both directions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from robustmq.core.message import Message
from robustmq.protocols.mqtt._codec import (
    encodePublish,
)
from robustmq.protocols.mqtt._packets import (
    PUBREL,
)
from robustmq.protocols.mqtt._properties import encodeProperties

if TYPE_CHECKING:
    pass
from robustmq.protocols.mqtt._connection import (
    CONNECTED,
    ENC5_PROPS,
    ENC5_QOS0,
    ENC5_QOS0_RETAIN,
    ENC_QOS0,
    ENC_QOS0_RETAIN,
    ENC_TOPIC,
    MQTTConnection,
)


class OutboundDelivery(MQTTConnection):
    """Writes deliveries (ISessionConnection), pauses delivery when the socket is full, and pauses
    reading from this client while sessions it published to are congested."""

    __slots__ = ()

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

    # ISessionConnection: outgoing deliveries

    def canDeliver(self) -> bool:
        return not self._paused and self.state == CONNECTED

    def deliver(
        self, message: Message, qos: int, packetId: int | None, dup: bool, sub: Any = None
    ) -> bool:
        """Write C{message}; False when it could not be sent (too large for the client,
        or on a topic this client may not receive: C{[acl] check_deliveries})."""
        access = self.access
        if (
            access is not None
            and not (access.trivial and access.acl.isOpen)
            and not access.canReceive(message.topic)
        ):
            return False
        retain = message.retain and sub is not None and sub.keepRetain
        if self._v5 is not None:
            return self._deliver5(message, qos, packetId, dup, sub, retain)
        enc = message.encodings
        if enc is None:
            enc = message.encodings = {}
        if qos == 0:
            key = ENC_QOS0_RETAIN if retain else ENC_QOS0
            data = enc.get(key)
            if data is None:
                data = enc[key] = encodePublish(message.topic.encode(), message.payload, 0, retain)
        else:
            topic = enc.get(ENC_TOPIC)
            if topic is None:
                topic = enc[ENC_TOPIC] = message.topic.encode()
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
        topic = enc.get(ENC_TOPIC)
        if topic is None:
            topic = enc[ENC_TOPIC] = message.topic.encode()
        identifiers = sub.identifiers if sub is not None else ()
        plain = not identifiers and message.expiresAt is None and not v5["topicAliasMaximum"]
        newAlias = None
        if plain:
            if qos == 0:
                key = ENC5_QOS0_RETAIN if retain else ENC5_QOS0
                data = enc.get(key)
                if data is None:
                    props = enc.get(ENC5_PROPS)
                    if props is None:
                        props = enc[ENC5_PROPS] = encodeProperties(message.properties)
                    data = enc[key] = encodePublish(
                        topic, message.payload, 0, retain, False, None, props
                    )
            else:
                props = enc.get(ENC5_PROPS)
                if props is None:
                    props = enc[ENC5_PROPS] = encodeProperties(message.properties)
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
            self.broker.stats.dropped("mqtt", "too_large", qos)
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
        """Stop reading from this client until the sessions it filled drain.

        One wait lasts at most C{congestion_timeout}, however many sessions
        congest while it lasts (a subscriber cycling through new client ids
        cannot extend it): then the sessions still congested are timed out
        (they overflow by policy until they drain) and reading resumes.  After
        such a full-length wait the publisher is not paused again for
        C{congestion_timeout} more seconds: sessions it fills meanwhile are
        timed out at once instead, so no subscriber, however many client ids
        it cycles through, holds a publisher more than half the time.
        """
        if self.reactor.seconds() < self._noWaitUntil:
            for session in congested:
                if session.congested and session.connection is not self:
                    timeOut = getattr(session, "timeOutCongestion", None)
                    if timeOut is not None:
                        timeOut()
            congested.clear()
            return
        waiting = bool(self._blockedOn)
        for session in congested:
            if session.congested and session.connection is not self and self not in session.waiters:
                session.addWaiter(self)
                if not self._blockedOn:
                    self._blockedOn = set()
                self._blockedOn.add(session)  # type: ignore[union-attr]
        congested.clear()
        if self._blockedOn and self.transport is not None:
            self.transport.pauseProducing()
            timeout = self.settings.congestion_timeout
            if not waiting and timeout > 0:
                self._waitStarted = self.reactor.seconds()
                self._waitTimer = self.reactor.callLater(timeout, self._waitedTooLong)

    def _waitedTooLong(self) -> None:
        self._waitTimer = None
        self._waitEnded()
        for session in list(self._blockedOn):
            timeOut = getattr(session, "timeOutCongestion", None)
            if timeOut is not None:
                timeOut()  # calls our congestionCleared
        if self._blockedOn:  # targets that did not call back (a cluster link)
            for session in self._blockedOn:
                session.removeWaiter(self)
            self._blockedOn = ()
            if self.state == CONNECTED:
                self._resumeReading()

    def _stopWaitTimer(self) -> None:
        timer, self._waitTimer = self._waitTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._waitEnded()

    def _waitEnded(self) -> None:
        """A wait for congested sessions ended; one that lasted C{congestion_timeout}
        (however it ended: our timer or the sessions' own) starts the cool-down."""
        started, self._waitStarted = self._waitStarted, None
        timeout = self.settings.congestion_timeout
        now = self.reactor.seconds()
        if started is not None and now - started >= timeout:
            self._noWaitUntil = now + timeout

    def congestionCleared(self, session: Any) -> None:
        if session in self._blockedOn:
            self._blockedOn.remove(session)  # type: ignore[union-attr]
        if not self._blockedOn:
            self._stopWaitTimer()
            if self.state == CONNECTED:
                self._resumeReading()

    def sessionCongested(self) -> None:
        if self._blockedOn:
            for session in self._blockedOn:
                session.removeWaiter(self)
            self._blockedOn = ()
            self._stopWaitTimer()
            if self.state == CONNECTED:
                # Later, from the reactor: we may be inside this client's own publish.
                self.reactor.callLater(0, self._resumeReading)
