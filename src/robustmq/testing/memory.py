"""An in-process broker driven over in-memory transports, for unit tests.

Plugin authors and our own trial tests use it to exercise protocol logic
without sockets: a L{twisted.internet.task.Clock} drives timers and
L{twisted.internet.testing.StringTransport} captures what the broker writes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from robustmq.config import ListenerSettings, Settings, settingsFromMapping
from robustmq.core.broker import Broker
from robustmq.protocols.mqtt import MQTTParser, encode
from robustmq.protocols.mqtt._factory import MQTTServerFactory
from robustmq.protocols.mqtt._node import MQTTNode
from robustmq.protocols.mqtt._packets import Packet


class InMemoryBroker:
    """A L{Broker} on a fake clock, with helpers to open fake MQTT connections."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.settings: Settings = settingsFromMapping(config or {})
        self.clock = Clock()
        from robustmq.core.scram import scramSha256Plugin

        self.broker = Broker(
            self.settings,
            self.clock,
            authMechanisms={"SCRAM-SHA-256": scramSha256Plugin.build(self.settings)},
        )
        self.broker.startService()
        self.node = MQTTNode(self.broker, self.clock)
        self.broker.nodeServices["mqtt"] = self.node
        self.node.startService()
        self.listener = ListenerSettings(port=1883, bind="127.0.0.1")
        self.factory = MQTTServerFactory(self.broker, self.listener, self.clock)

    @property
    def sessions(self) -> Any:
        """The MQTT session registry."""
        return self.node.sessions

    def connect(self, port: int = 50000) -> FakeClient:
        """A new connection (no MQTT sent yet)."""
        return FakeClient(self, port)


class FakeClient:
    """One client connection over a StringTransport: send packets, read replies."""

    def __init__(self, harness: InMemoryBroker, port: int) -> None:
        self.harness = harness
        self.protocol = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert self.protocol is not None
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol.makeConnection(self.transport)
        self.parser = MQTTParser(server=False)
        self.closed = False

    def send(self, *packets: Packet, bytewise: bool = False) -> None:
        """Feed encoded packets to the broker (optionally one byte at a time)."""
        self.sendBytes(b"".join(encode(p) for p in packets), bytewise)

    def sendBytes(self, data: bytes, bytewise: bool = False) -> None:
        """Feed raw bytes to the broker."""
        if bytewise:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)

    def received(self) -> list[Packet]:
        """Packets the broker wrote since the last call."""
        self.harness.broker.flushWrites()
        data = self.transport.value()
        self.transport.clear()
        return self.parser.feed(data)

    @property
    def disconnecting(self) -> bool:
        """True once the broker asked to close this connection."""
        return bool(self.transport.disconnecting)

    def lose(self, reason: Any = None) -> None:
        """Simulate the network connection dropping (or finish a broker-initiated close)."""
        if not self.closed:
            self.closed = True
            from twisted.internet.error import ConnectionDone
            from twisted.python.failure import Failure

            self.protocol.connectionLost(Failure(reason or ConnectionDone()))
