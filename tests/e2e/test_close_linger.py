"""The broker's last word reaches a client that is still sending (a bounded linger).

A server that sends DISCONNECT (or a refusing CONNACK, an AMQP
Connection.Close, a Kafka error response) and closes its socket at once,
while the client's packets are still arriving, makes the kernel answer them
with a reset: the client fails on its next send ("broken pipe") or read
("connection reset") and never learns why it was closed.  MQTT 5.0 section
4.13.2 ("the Server MAY send a DISCONNECT packet ... before closing the
Network Connection", MQTT-4.13.2-1: with a Reason Code) only helps if the
client can read it, hence the half-close and linger of
L{robustmq.protocols._linger}.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from robustmq.protocols.amqp import _spec
from robustmq.protocols.amqp._frames import PROTOCOL_HEADER, FrameParser, MethodFrame
from robustmq.protocols.kafka._codec import decodeResponse, encodeRequest
from robustmq.protocols.mqtt._packets import MQTT5, Connack, Publish, Reason
from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0
LINGER = 1.5
#: How long the clients below keep sending after the broker closed: less than LINGER.
KEEP_SENDING = 0.6


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerProcess]:
    """A node with MQTT, Kafka and AMQP listeners and small bounds to run into."""
    kafkaPort, amqpPort = freePort(), freePort()
    broker = BrokerProcess(
        f"""
[mqtt]
sys_interval = 0.2
max_awaiting_rel = 5
close_linger = {LINGER}

[kafka]
close_linger = {LINGER}

[amqp]
close_timeout = {LINGER}

[[listeners]]
protocol = "kafka"
transport = "tcp"
bind = "127.0.0.1"
port = {kafkaPort}

[[listeners]]
protocol = "amqp"
transport = "tcp"
bind = "127.0.0.1"
port = {amqpPort}
"""
    )
    broker.kafkaPort = kafkaPort  # type: ignore[attr-defined]
    broker.amqpPort = amqpPort  # type: ignore[attr-defined]
    broker.start()
    waitForPort("127.0.0.1", kafkaPort)
    waitForPort("127.0.0.1", amqpPort)
    try:
        yield broker
    finally:
        broker.cleanup()


def keepSending(sock: socket.socket, data: bytes, seconds: float = KEEP_SENDING) -> None:
    """Send C{data} every 50 ms for C{seconds}, as a client busy writing would.

    Fails the test (broken pipe, connection reset) if the broker's socket is
    already gone.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.sendall(data)
        time.sleep(0.05)


# MQTT


def test_disconnect_reason_reaches_a_client_still_sending(node: BrokerProcess) -> None:
    """DISCONNECT 0x93 (Receive Maximum exceeded, MQTT 5.0 section 3.3.4) is read by a
    client that keeps sending PUBRELs after the broker closed."""
    c = RawClient(node.port, timeout=TIMEOUT)
    try:
        assert c.connect("linger-rm", MQTT5).returnCode == 0
        for pid in range(1, 7):  # one more than max_awaiting_rel
            c.send(c.encodePublish("linger/rm", b"x", 2, packetId=pid))
        time.sleep(0.2)
        pubrel = b"\x62\x02\x00\x01"
        keepSending(c.sock, pubrel)
        disconnect = c.expectDisconnect()
        assert disconnect.reasonCode == Reason.RECEIVE_MAXIMUM_EXCEEDED
        c.waitClosed(LINGER + TIMEOUT)
    finally:
        c.close()


def test_refusing_connack_reaches_a_client_still_sending(node: BrokerProcess) -> None:
    """A CONNACK refusing the CONNECT (0x84, unsupported protocol version, MQTT-3.1.2-2)
    is read by a client that sent more packets behind its CONNECT and keeps sending."""
    c = RawClient(node.port, timeout=TIMEOUT)
    try:
        c.sendConnect("linger-v6", 6, protocolName="MQTT")
        keepSending(c.sock, b"\xc0\x00")  # PINGREQs
        ack = c.expect(Connack)
        assert ack.returnCode == 1  # 3.1.1 form: unacceptable protocol version
        c.waitClosed(LINGER + TIMEOUT)
    finally:
        c.close()


def test_linger_is_bounded(node: BrokerProcess) -> None:
    """A client that never closes its side is closed once close_linger has passed."""
    c = RawClient(node.port, timeout=TIMEOUT)
    try:
        assert c.connect("linger-bound", MQTT5).returnCode == 0
        for pid in range(1, 7):
            c.send(c.encodePublish("linger/bound", b"x", 2, packetId=pid))
        assert c.expectDisconnect().reasonCode == Reason.RECEIVE_MAXIMUM_EXCEEDED
        # The broker half-closed: EOF arrives, then (reading on) the close after the linger.
        c.waitClosed(LINGER + TIMEOUT)
    finally:
        c.close()


def test_lingering_connection_is_no_longer_a_client(node: BrokerProcess) -> None:
    """While a closed socket lingers it is not counted as a connected client
    ($SYS/broker/clients/connected drops as soon as the broker closed it)."""
    monitor = RawClient(node.port, timeout=TIMEOUT)
    old = RawClient(node.port, timeout=TIMEOUT)
    try:
        assert monitor.connect("linger-monitor").returnCode == 0
        assert old.connect("linger-counted", MQTT5).returnCode == 0
        monitor.subscribe([("$SYS/broker/clients/connected", 0)])
        counts = _clientCounts(monitor, lambda n: n >= 2)
        both = counts[-1]
        for pid in range(1, 7):
            old.send(old.encodePublish("linger/counted", b"x", 2, packetId=pid))
        assert old.expectDisconnect().reasonCode == Reason.RECEIVE_MAXIMUM_EXCEEDED
        # The old client keeps its socket open (it lingers); it is no longer counted.
        _clientCounts(monitor, lambda n: n <= both - 1)
    finally:
        monitor.close()
        old.close()


def _clientCounts(c: RawClient, done: object) -> list[int]:
    """$SYS client counts received until C{done(count)} is true (within the linger)."""
    seen: list[int] = []
    deadline = time.monotonic() + LINGER
    while time.monotonic() < deadline:
        packet = c.expect(Publish, timeout=LINGER)
        seen.append(int(packet.payload))
        if done(seen[-1]):  # type: ignore[operator]
            return seen
    raise AssertionError(f"client counts seen: {seen}")


# Kafka


def test_kafka_error_response_reaches_a_client_still_sending(node: BrokerProcess) -> None:
    """A failed SaslAuthenticate (error 58) is answered, then the connection closes;
    a client still sending requests reads the answer instead of a reset."""
    sock = socket.create_connection(("127.0.0.1", node.kafkaPort), timeout=TIMEOUT)  # type: ignore[attr-defined]
    try:
        sock.sendall(encodeRequest(17, 1, 1, {"mechanism": "PLAIN"}))
        sock.sendall(encodeRequest(36, 2, 2, {"auth_bytes": b"\x00nobody\x00wrong"}))
        keepSending(sock, encodeRequest(18, 0, 3, {}))  # ApiVersions, until told off
        frames = _kafkaFrames(sock)
        assert len(frames) >= 2, frames
        _, handshake = decodeResponse(17, 1, frames[0])
        _, auth = decodeResponse(36, 2, frames[1])
        assert handshake["error_code"] == 0
        assert auth["error_code"] == 58  # SASL_AUTHENTICATION_FAILED
    finally:
        sock.close()


def _kafkaFrames(sock: socket.socket) -> list[bytes]:
    """Every size-prefixed frame until the broker closes the connection."""
    data = b""
    deadline = time.monotonic() + LINGER + TIMEOUT
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 4:
        size = int.from_bytes(data[:4], "big")
        frames.append(data[4 : 4 + size])
        data = data[4 + size :]
    return frames


# AMQP


def test_amqp_connection_close_reaches_a_client_still_sending(node: BrokerProcess) -> None:
    """A frame error closes the connection with Connection.Close 501 (AMQP 0-9-1
    section 4.2.3); a client that keeps sending reads it instead of a reset."""
    sock = socket.create_connection(("127.0.0.1", node.amqpPort), timeout=TIMEOUT)  # type: ignore[attr-defined]
    try:
        sock.sendall(PROTOCOL_HEADER)
        # A heartbeat frame whose end octet is wrong: unparsable from here on.
        sock.sendall(b"\x08\x00\x00\x00\x00\x00\x00\x00")
        keepSending(sock, b"\x08\x00\x00\x00\x00\x00\x00\xce")
        parser = FrameParser(1 << 20)
        data = PROTOCOL_HEADER
        deadline = time.monotonic() + LINGER + TIMEOUT
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        methods = [f.method for f in parser.feed(data) if isinstance(f, MethodFrame)]
        assert isinstance(methods[-1], _spec.ConnectionClose), methods
        assert methods[-1].reply_code == _spec.FRAME_ERROR
    finally:
        sock.close()
