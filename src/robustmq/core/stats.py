"""Counters the broker keeps for $SYS topics and metrics."""

from __future__ import annotations

import time

#: Protocols whose message and byte counts L{Stats} keeps.
PROTOCOLS = ("mqtt", "kafka", "amqp")


class Stats:
    """Process-wide broker counters (monotonic except the current gauges).

    Message counts are kept per protocol, and for MQTT per QoS level, in
    small lists indexed by QoS (C{mqttSent[qos] += 1}): one list index per
    message on the hot path, no dictionary lookup or call.  The totals that
    C{$SYS/broker/...} publishes (L{messagesReceived}, L{bytesSent}, ...)
    are sums over protocols, computed when read, so C{$SYS} and the
    labelled metrics always add up to the same numbers.

    MQTT's "received" counts every application message routed into the MQTT
    topic space: client PUBLISHes, admin API publishes, wills and delayed
    messages.  Kafka counts records (produced, fetched); AMQP counts
    messages (basic.publish in; basic.deliver and basic.get-ok out; dropped:
    unroutable, refused or pushed out by a full queue, or expired, when not
    dead-lettered).

    Every drop also counts in L{dropReasons} under its reason (L{dropped}),
    so operators can tell I{why}: C{offline_qos0}, C{queue_overflow},
    C{too_large} (MQTT), C{unroutable}, C{overflow}, C{expired},
    C{delivery_limit} (AMQP).
    """

    __slots__ = (
        "startTime",
        "clientsConnected",
        "clientsMaximum",
        "clientsTotalConnects",
        "mqttReceived",
        "mqttSent",
        "mqttDropped",
        "mqttBytesReceived",
        "mqttBytesSent",
        "kafkaReceived",
        "kafkaSent",
        "kafkaBytesReceived",
        "kafkaBytesSent",
        "amqpReceived",
        "amqpSent",
        "amqpDropped",
        "amqpBytesReceived",
        "amqpBytesSent",
        "publishReceived",
        "publishSent",
        "malformedPackets",
        "messagesExpired",
        "messagesDelayed",
        "dropReasons",
        "loadSamples",
        "sessions",
    )

    def __init__(self) -> None:
        self.startTime = time.time()
        self.clientsConnected = 0
        self.clientsMaximum = 0
        self.clientsTotalConnects = 0
        #: MQTT application messages by QoS: routed into the broker, delivered, dropped
        self.mqttReceived = [0, 0, 0]
        self.mqttSent = [0, 0, 0]
        self.mqttDropped = [0, 0, 0]
        self.mqttBytesReceived = 0
        self.mqttBytesSent = 0
        self.kafkaReceived = 0
        self.kafkaSent = 0
        self.kafkaBytesReceived = 0
        self.kafkaBytesSent = 0
        self.amqpReceived = 0
        self.amqpSent = 0
        self.amqpDropped = 0
        self.amqpBytesReceived = 0
        self.amqpBytesSent = 0
        self.publishReceived = 0
        self.publishSent = 0
        self.malformedPackets = 0
        self.messagesExpired = 0
        self.messagesDelayed = 0
        #: (protocol, reason) -> messages dropped for that reason
        self.dropReasons: dict[tuple[str, str], int] = {}
        #: (time, messages received, messages sent, bytes received, bytes sent), oldest
        #: first, one per $SYS interval over the last 15 minutes (L{sample}, L{load})
        self.loadSamples: list[tuple[float, int, int, int, int]] = []
        #: sessions the node keeps, online and offline (MQTT's clients/total)
        self.sessions = 0

    # Totals over protocols (what $SYS/broker/... publishes)

    @property
    def messagesReceived(self) -> int:
        """Messages received by every protocol."""
        return sum(self.mqttReceived) + self.kafkaReceived + self.amqpReceived

    @property
    def messagesSent(self) -> int:
        """Messages delivered by every protocol."""
        return sum(self.mqttSent) + self.kafkaSent + self.amqpSent

    @property
    def messagesDropped(self) -> int:
        """Messages dropped by every protocol."""
        return sum(self.mqttDropped) + self.amqpDropped

    @property
    def bytesReceived(self) -> int:
        """Bytes read from client sockets of every protocol."""
        return self.mqttBytesReceived + self.kafkaBytesReceived + self.amqpBytesReceived

    @property
    def bytesSent(self) -> int:
        """Bytes written to client sockets of every protocol."""
        return self.mqttBytesSent + self.kafkaBytesSent + self.amqpBytesSent

    def byProtocol(self) -> list[tuple[str, str, int, int, int | None]]:
        """(protocol, qos, received, sent, dropped) rows.

        C{qos} is "" for protocols without QoS levels; C{dropped} is None for
        Kafka, which never drops a record it accepted.
        """
        rows: list[tuple[str, str, int, int, int | None]] = [
            ("mqtt", str(q), self.mqttReceived[q], self.mqttSent[q], self.mqttDropped[q])
            for q in range(3)
        ]
        rows.append(("kafka", "", self.kafkaReceived, self.kafkaSent, None))
        rows.append(("amqp", "", self.amqpReceived, self.amqpSent, self.amqpDropped))
        return rows

    def bytesByProtocol(self) -> list[tuple[str, int, int]]:
        """(protocol, bytes received, bytes sent) rows."""
        return [
            ("mqtt", self.mqttBytesReceived, self.mqttBytesSent),
            ("kafka", self.kafkaBytesReceived, self.kafkaBytesSent),
            ("amqp", self.amqpBytesReceived, self.amqpBytesSent),
        ]

    def dropped(self, protocol: str, reason: str, qos: int = 0, n: int = 1) -> None:
        """Count C{n} messages of C{protocol} dropped for C{reason} (not the hot path)."""
        if protocol == "mqtt":
            self.mqttDropped[qos] += n
        elif protocol == "amqp":
            self.amqpDropped += n
        key = (protocol, reason)
        self.dropReasons[key] = self.dropReasons.get(key, 0) + n

    def sample(self, now: float) -> None:
        """Remember the counters at C{now}, for L{load} (kept for 15 minutes)."""
        samples = self.loadSamples
        samples.append(
            (now, self.messagesReceived, self.messagesSent, self.bytesReceived, self.bytesSent)
        )
        horizon = now - 15 * 60 - 1
        drop = 0
        while drop < len(samples) - 1 and samples[drop + 1][0] <= horizon:
            drop += 1
        del samples[:drop]

    def load(self, now: float, minutes: int) -> tuple[float, float, float, float]:
        """Per-minute rates over the last C{minutes} (mosquitto's C{$SYS/broker/load/#}).

        C{(messages received, messages sent, bytes received, bytes sent)} per
        minute, from the oldest sample within the window to the newest; zeros
        until two samples exist.
        """
        samples = self.loadSamples
        if len(samples) < 2:
            return 0.0, 0.0, 0.0, 0.0
        newest = samples[-1]
        oldest = newest
        for s in samples:
            if s[0] >= now - minutes * 60 - 0.5:
                oldest = s
                break
        span = newest[0] - oldest[0]
        if span <= 0:
            return 0.0, 0.0, 0.0, 0.0
        scale = 60.0 / span
        return (
            (newest[1] - oldest[1]) * scale,
            (newest[2] - oldest[2]) * scale,
            (newest[3] - oldest[3]) * scale,
            (newest[4] - oldest[4]) * scale,
        )

    def clientConnected(self) -> None:
        """Count a connection that completed its handshake."""
        self.clientsConnected += 1
        self.clientsTotalConnects += 1
        if self.clientsConnected > self.clientsMaximum:
            self.clientsMaximum = self.clientsConnected

    def clientDisconnected(self) -> None:
        """Count the end of a connection counted by L{clientConnected}."""
        self.clientsConnected -= 1

    def uptime(self) -> float:
        """Seconds since the broker started."""
        return time.time() - self.startTime
