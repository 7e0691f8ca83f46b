"""A small blocking raw-socket MQTT 3.1 / 3.1.1 / 5.0 client for end-to-end tests.

Real client libraries hide the wire: they ack, resend and reconnect on their
own.  Tests of the broker's protocol handling need to send exactly the bytes
they choose (including wrong ones), withhold acknowledgements, drop the socket
without DISCONNECT, and see every packet the broker sends back, DUP flags and
packet identifiers included.  L{RawClient} does that with the broker's own
codec (C{encodeConnect}, C{encodePublish}, ... and C{MQTTParser(server=False)});
it does not implement MQTT itself.

Every receive has a timeout, so a test never hangs::

    with RawClient(port) as c:
        assert c.connect("probe").returnCode == 0
        c.subscribe([("a/b", 1)])
        packet = c.expect(Publish)

A CONNECT at protocol level 5 switches the client to MQTT 5.0 forms
(properties on PUBLISH, SUBSCRIBE and acknowledgements, reason codes on
acknowledgements and DISCONNECT)::

    with RawClient(port) as c:
        c.connect("probe", MQTT5, properties={"receive_maximum": 10})
        c.publish("a/b", b"x", 1, properties={"payload_format_indicator": 1})
        assert c.expect(Disconnect).reasonCode == 0x93
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from typing import Any, TypeVar

from robustmq.protocols.mqtt import (
    MQTTParser,
    encode,
    encodeAck,
    encodeConnect,
    encodePublish,
    encodeSubscribe,
    encodeUnsubscribe,
)
from robustmq.protocols.mqtt._codec import (
    DISCONNECT_BYTES,
    PINGREQ_BYTES,
    encodeAck5,
    encodeDisconnect,
)
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    MQTT311,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Unsuback,
)
from robustmq.protocols.mqtt._properties import encodeProperties

P = TypeVar("P", bound=Packet)

DEFAULT_TIMEOUT = 5.0

_ACK_KINDS: dict[int, type[Packet]] = {
    PUBACK: Puback,
    PUBREC: Pubrec,
    PUBREL: Pubrel,
    PUBCOMP: Pubcomp,
}


class ConnectionClosed(Exception):
    """The broker closed the connection (EOF or reset) while a packet was awaited."""


class RawClient:
    """One TCP connection to a broker, spoken to packet by packet.

    @ivar closed: True once the broker closed the connection (EOF or reset seen).
    @ivar received: packets parsed but not yet returned by L{receive}.
    """

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = MQTTParser(server=False)
        self.received: deque[Packet] = deque()
        self.closed = False
        self._nextId = 1
        #: the protocol level of the latest CONNECT (5: MQTT 5.0 forms)
        self.version = MQTT311

    @property
    def v5(self) -> bool:
        """Whether the client speaks MQTT 5.0 (it sent a level 5 CONNECT)."""
        return self.version == MQTT5

    # Context manager

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def localPort(self) -> int:
        """The client side's port (the broker logs it as the peer)."""
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        """Close the socket without DISCONNECT (an abnormal end, as far as MQTT goes)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        except OSError:
            pass
        self.close()

    # Sending

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(data)

    def sendPacket(self, packet: Packet) -> None:
        """Encode C{packet} with the broker's codec and write it."""
        self.send(encode(packet))

    def nextId(self) -> int:
        """A fresh packet identifier."""
        pid = self._nextId
        self._nextId = pid % 65535 + 1
        return pid

    def connect(
        self,
        clientId: str,
        protocolLevel: int = MQTT311,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Connack:
        """Send CONNECT and return the CONNACK.

        @param fields: the rest of the CONNECT, as L{Connect}'s keyword
            arguments (C{cleanSession}, C{keepAlive}, C{willTopic},
            C{willPayload}, C{willQos}, C{willRetain}, C{username},
            C{password}, C{protocolName}, and for 5.0 C{properties} and
            C{willProperties}), with L{Connect}'s defaults.
        """
        self.sendConnect(clientId, protocolLevel, **fields)
        return self.expect(Connack, timeout)

    def sendConnect(self, clientId: str, protocolLevel: int = MQTT311, **fields: Any) -> None:
        """Send CONNECT without waiting for the CONNACK (see L{connect})."""
        self.version = protocolLevel
        self.parser.version = MQTT5 if protocolLevel == MQTT5 else MQTT311
        self.send(encodeConnect(Connect(clientId, protocolLevel, **fields)))

    def subscribe(
        self,
        topics: list[tuple[str, int]],
        timeout: float | None = None,
        properties: dict[str, Any] | None = None,
    ) -> Suback:
        """SUBSCRIBE and return the SUBACK (PUBLISHes arriving first stay queued).

        Each topic comes with its QoS (3.x) or subscription options byte (5.0).
        """
        pid = self.nextId()
        self.send(encodeSubscribe(pid, topics, self._props(properties)))
        suback = self.expect(Suback, timeout, keepOthers=True)
        assert suback.packetId == pid, (suback, pid)
        return suback

    def _props(self, properties: dict[str, Any] | None) -> dict[str, Any] | None:
        """The property dict to encode: always one under 5.0, never under 3.x."""
        if self.v5:
            return properties or {}
        assert not properties, "properties need MQTT 5.0"
        return None

    def unsubscribe(self, topics: list[str], timeout: float | None = None) -> Unsuback:
        """UNSUBSCRIBE and return the UNSUBACK."""
        pid = self.nextId()
        self.send(encodeUnsubscribe(pid, topics, self._props(None)))
        unsuback = self.expect(Unsuback, timeout, keepOthers=True)
        assert unsuback.packetId == pid, (unsuback, pid)
        return unsuback

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packetId: int | None = None,
        complete: bool = True,
        timeout: float | None = None,
        properties: dict[str, Any] | None = None,
    ) -> int | None:
        """PUBLISH; with C{complete}, also run the QoS 1/2 handshake to its end.

        @return: the packet identifier used (None at QoS 0).
        """
        if qos and packetId is None:
            packetId = self.nextId()
        self.send(self.encodePublish(topic, payload, qos, retain, dup, packetId, properties))
        if qos and complete:
            assert packetId is not None
            if qos == 1:
                ack = self.expectAck(PUBACK, packetId, timeout)
            else:
                self.expectAck(PUBREC, packetId, timeout)
                self.sendAck(PUBREL, packetId)
                ack = self.expectAck(PUBCOMP, packetId, timeout)
            assert ack.packetId == packetId
        return packetId

    def encodePublish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packetId: int | None = None,
        properties: dict[str, Any] | None = None,
    ) -> bytes:
        """The bytes of a PUBLISH in this client's protocol version (for batching sends)."""
        props = self._props(properties)
        return encodePublish(
            topic.encode(),
            payload,
            qos,
            retain,
            dup,
            packetId,
            None if props is None else encodeProperties(props),
        )

    def sendAck(
        self,
        packetType: int,
        packetId: int,
        reasonCode: int = 0,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Send PUBACK, PUBREC, PUBREL or PUBCOMP (5.0: with a reason code and properties)."""
        if self.v5:
            self.send(encodeAck5(packetType, packetId, reasonCode, properties))
        else:
            assert not reasonCode and not properties, "reason codes need MQTT 5.0"
            self.send(encodeAck(packetType, packetId))

    def ack(self, packet: Publish) -> None:
        """Acknowledge a received PUBLISH (PUBACK, or PUBREC → PUBREL → PUBCOMP)."""
        pid = packet.packetId
        assert pid is not None
        if packet.qos == 1:
            self.sendAck(PUBACK, pid)
        elif packet.qos == 2:
            self.sendAck(PUBREC, pid)
            self.expectAck(PUBREL, pid)
            self.sendAck(PUBCOMP, pid)

    def ping(self, timeout: float | None = None) -> Pingresp:
        """PINGREQ and wait for the PINGRESP."""
        self.send(PINGREQ_BYTES)
        return self.expect(Pingresp, timeout, keepOthers=True)

    def disconnect(self, reasonCode: int = 0, properties: dict[str, Any] | None = None) -> None:
        """Send DISCONNECT (the socket stays open until L{close} or the broker's close)."""
        if self.v5:
            self.send(encodeDisconnect(reasonCode, properties))
        else:
            self.send(DISCONNECT_BYTES)

    # Receiving

    def _read(self, deadline: float) -> bool:
        """Read once from the socket into the parser; False on timeout.

        @raise ConnectionClosed: on EOF or reset.
        """
        if self.closed:
            raise ConnectionClosed("connection already closed by the broker")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError) as e:
            self.closed = True
            raise ConnectionClosed(f"connection reset: {e}") from None
        if not data:
            self.closed = True
            raise ConnectionClosed("EOF from the broker")
        self.received.extend(self.parser.feed(data))
        return True

    def receive(self, timeout: float | None = None) -> Packet:
        """The next packet from the broker.

        @raise TimeoutError: nothing arrived in time.
        @raise ConnectionClosed: the broker closed the connection first.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.received:
            if not self._read(deadline):
                raise TimeoutError("no packet from the broker in time")
        return self.received.popleft()

    def expect(self, kind: type[P], timeout: float | None = None, keepOthers: bool = False) -> P:
        """The next packet, which must be a C{kind}.

        With C{keepOthers}, packets of other kinds arriving first are kept
        (in order) for later L{receive} calls instead of failing the test.
        """
        if not keepOthers:
            packet = self.receive(timeout)
            if not isinstance(packet, kind):
                raise AssertionError(f"expected {kind.__name__}, got {packet!r}")
            return packet
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, packet in enumerate(self.received):
                if isinstance(packet, kind):
                    del self.received[i]
                    return packet
            if not self._read(deadline):
                raise TimeoutError(f"no {kind.__name__} from the broker in time")

    def expectAck(self, packetType: int, packetId: int, timeout: float | None = None) -> Any:
        """Wait for PUBACK/PUBREC/PUBREL/PUBCOMP with C{packetId} (other packets are kept)."""
        kind = _ACK_KINDS[packetType]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, packet in enumerate(self.received):
                if isinstance(packet, kind) and packet.packetId == packetId:  # type: ignore[attr-defined]
                    del self.received[i]
                    return packet
            if not self._read(deadline):
                raise TimeoutError(f"no {kind.__name__} for packet id {packetId} in time")

    def expectPublish(self, timeout: float | None = None) -> Publish:
        """The next PUBLISH (other packets arriving first are kept)."""
        return self.expect(Publish, timeout, keepOthers=True)

    def expectDisconnect(self, timeout: float | None = None) -> Disconnect:
        """The broker's DISCONNECT (5.0), other packets arriving first are kept.

        @raise ConnectionClosed: the connection closed without one.
        """
        return self.expect(Disconnect, timeout, keepOthers=True)

    def expectNothing(self, timeout: float = 0.3) -> None:
        """Assert that no packet arrives within C{timeout} (the socket may stay open)."""
        deadline = time.monotonic() + timeout
        if self.received:
            raise AssertionError(f"unexpected packet {self.received[0]!r}")
        while time.monotonic() < deadline:
            if self._read(deadline) and self.received:
                raise AssertionError(f"unexpected packet {self.received[0]!r}")

    def waitClosed(self, timeout: float | None = None) -> list[Packet]:
        """Wait until the broker closes the connection; return packets received meanwhile.

        @raise TimeoutError: the connection is still open after C{timeout}.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                if not self._read(deadline) and time.monotonic() >= deadline:
                    raise TimeoutError("the broker did not close the connection in time")
        except ConnectionClosed:
            pass
        packets = list(self.received)
        self.received.clear()
        return packets

    def isOpen(self) -> bool:
        """True unless the broker closed the connection (checks without blocking)."""
        if self.closed:
            return False
        try:
            self._read(time.monotonic() + 0.001)
        except ConnectionClosed:
            return False
        return True


__all__ = ["ConnectionClosed", "RawClient"]
