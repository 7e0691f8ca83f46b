"""Counters the broker keeps for $SYS topics and metrics."""

from __future__ import annotations

import time


class Stats:
    """Process-wide broker counters (monotonic except the current gauges)."""

    __slots__ = (
        "startTime",
        "clientsConnected",
        "clientsMaximum",
        "clientsTotalConnects",
        "messagesReceived",
        "messagesSent",
        "messagesDropped",
        "publishReceived",
        "publishSent",
        "bytesReceived",
        "bytesSent",
        "malformedPackets",
        "messagesExpired",
        "messagesDelayed",
    )

    def __init__(self) -> None:
        self.startTime = time.time()
        self.clientsConnected = 0
        self.clientsMaximum = 0
        self.clientsTotalConnects = 0
        self.messagesReceived = 0
        self.messagesSent = 0
        self.messagesDropped = 0
        self.publishReceived = 0
        self.publishSent = 0
        self.bytesReceived = 0
        self.bytesSent = 0
        self.malformedPackets = 0
        self.messagesExpired = 0
        self.messagesDelayed = 0

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
