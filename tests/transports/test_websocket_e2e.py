"""MQTT over WebSocket and WSS: paho-mqtt, MQTT.js, raw frames, hostile HTTP, back-pressure."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from transport_support import TIMEOUT, Certs, Node, RawWebSocket, startNode

from robustmq.protocols.mqtt import MQTTParser, encodeConnect, encodePublish, encodeSubscribe
from robustmq.protocols.mqtt._codec import PINGREQ_BYTES, encodeAck
from robustmq.protocols.mqtt._packets import PUBACK, Connack, Connect, Pingresp, Publish, Suback
from robustmq.testing.rawclient import RawClient

JS_DIR = Path(__file__).parent / "js"


class WsPaho:
    """A paho client with transport="websockets", with blocking helpers."""

    def __init__(
        self, port: int, clientId: str, ca: str | None = None, version: int = mqtt.MQTTv311
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=clientId,
            transport="websockets",
            protocol=version,
        )
        self.client.ws_set_options(path="/mqtt")
        if ca:
            self.client.tls_set(ca_certs=ca)
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_message = self._onMessage
        self.subacks: dict[int, threading.Event] = {}
        self.client.on_subscribe = lambda c, u, mid, *a: self.subacks.setdefault(
            mid, threading.Event()
        ).set()
        self.client.connect("localhost", port)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK over websocket"

    def _onMessage(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self.cond.notify_all()

    def subscribe(self, topic: str, qos: int) -> None:
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == 0
        assert self.subacks.setdefault(mid, threading.Event()).wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def waitMessages(self, n: int) -> list[tuple[str, bytes, int, bool]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= n, TIMEOUT), self.messages
            return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(
    "transport, version",
    [("ws", mqtt.MQTTv311), ("wss", mqtt.MQTTv311), ("ws", mqtt.MQTTv5), ("wss", mqtt.MQTTv31)],
)
def test_pahoQos012AndRetained(
    node: Node, certs: Certs, uniq: str, transport: str, version: int
) -> None:
    ca = certs.ca if transport == "wss" else None
    sub = WsPaho(node.ports[transport], f"{uniq}-s", ca, version)
    pub = WsPaho(node.ports[transport], f"{uniq}-p", ca, version)
    try:
        pub.publish(f"{uniq}/retained", b"kept", 1, retain=True)
        sub.subscribe(f"{uniq}/#", 2)
        for qos in (0, 1, 2):
            pub.publish(f"{uniq}/q{qos}", b"m%d" % qos, qos)
        got = sub.waitMessages(4)
        assert got[0] == (f"{uniq}/retained", b"kept", 1, True)
        assert sorted(got[1:]) == [(f"{uniq}/q{q}", b"m%d" % q, q, False) for q in (0, 1, 2)]
        pub.publish(f"{uniq}/retained", b"", 1, retain=True)
    finally:
        sub.stop()
        pub.stop()


def test_willOverWebSocket(node: Node, uniq: str) -> None:
    """A WebSocket client that drops its socket has its will published to a TCP subscriber."""
    with RawClient(node.tcp) as watcher:
        assert watcher.connect(f"{uniq}-w").returnCode == 0
        watcher.subscribe([(f"{uniq}/will", 1)])
        ws = RawWebSocket(node.ports["ws"])
        assert ws.status == 101
        ws.sendFrame(
            encodeConnect(
                Connect(f"{uniq}-c", willTopic=f"{uniq}/will", willPayload=b"gone", willQos=1)
            )
        )
        opcode, payload = ws.recvFrame()
        assert opcode == 2 and payload[:1] == b"\x20"
        ws.close()
        will = watcher.expectPublish()
        assert (will.topic, will.payload) == (f"{uniq}/will", b"gone")
        watcher.ack(will)


@pytest.mark.skipif(shutil.which("node") is None, reason="node")
def test_mqttJsOverWebSocket(node: Node, uniq: str) -> None:
    """MQTT.js (npm mqtt) from Node over ws: subscribe, publish at QoS 0, 1 and 2."""
    if not (JS_DIR / "node_modules" / "mqtt").exists():
        if shutil.which("npm") is None:
            pytest.skip("npm not available to install MQTT.js")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=240
        )
    result = subprocess.run(
        ["node", "mqttjs_ws.js", f"ws://127.0.0.1:{node.ports['ws']}/mqtt", uniq],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = sorted(result.stdout.strip().splitlines())
    assert lines == [
        f'{{"topic":"{uniq}/q{q}","payload":"hello {q}","qos":{q}}}' for q in (0, 1, 2)
    ]


@pytest.mark.parametrize("offered", [("mqtt",), ("mqttv3.1",), None, ("foo", "mqtt")])
def test_subprotocolsAccepted(node: Node, uniq: str, offered: tuple[str, ...] | None) -> None:
    ws = RawWebSocket(node.ports["ws"], subprotocols=offered)
    try:
        assert ws.status == 101, ws.response
        expected = None if offered is None else next(p for p in offered if p.startswith("mqtt"))
        assert ws.header("Sec-WebSocket-Protocol") == expected
        ws.sendFrame(encodeConnect(Connect(uniq)))
        assert ws.recvFrame() == (2, b"\x20\x02\x00\x00")
    finally:
        ws.close()


@pytest.mark.parametrize(
    "path, offered, status", [("/mqtt", ("foo",), 400), ("/other", ("mqtt",), 404)]
)
def test_handshakeRefused(node: Node, path: str, offered: tuple[str, ...], status: int) -> None:
    ws = RawWebSocket(node.ports["ws"], path=path, subprotocols=offered)
    try:
        assert ws.status == status, ws.response
    finally:
        ws.close()


def test_packetsSplitAcrossFramesAndSharingFrames(node: Node, uniq: str) -> None:
    ws = RawWebSocket(node.ports["ws"])
    parser = MQTTParser(server=False)
    try:
        connect = encodeConnect(Connect(uniq))
        # CONNECT in three pieces: a binary frame without FIN, then continuation frames.
        ws.sendFrame(connect[:3], opcode=2, fin=False)
        ws.sendFrame(connect[3:9], opcode=0, fin=False)
        ws.sendFrame(connect[9:], opcode=0, fin=True)
        assert isinstance(parser.feed(ws.recvFrame()[1])[0], Connack)
        # SUBSCRIBE, PUBLISH and PINGREQ in one frame, the PUBLISH cut at the end of a second one.
        publish = encodePublish(f"{uniq}/t".encode(), b"x" * 300, 0, False, False, None)
        ws.sendFrame(encodeSubscribe(1, [(f"{uniq}/#", 0)]) + publish[:100])
        ws.sendFrame(publish[100:] + PINGREQ_BYTES)
        packets: list[object] = []
        deadline = time.monotonic() + TIMEOUT
        while len(packets) < 3 and time.monotonic() < deadline:
            packets.extend(parser.feed(ws.recvFrame()[1]))
        kinds = [type(p) for p in packets]
        assert kinds == [Suback, Publish, Pingresp], packets
        assert packets[1].payload == b"x" * 300  # type: ignore[attr-defined]
    finally:
        ws.close()


def test_textFrameClosesConnection(node: Node, uniq: str) -> None:
    """MQTT-6.0.0-1: a text frame ends the connection (WebSocket close 1003)."""
    ws = RawWebSocket(node.ports["ws"])
    try:
        ws.sendFrame(encodeConnect(Connect(uniq)))
        assert ws.recvFrame()[0] == 2
        ws.sendFrame(b"hello", opcode=1)
        opcode, payload = ws.recvFrame()
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1003
    finally:
        ws.close()


def test_plainHTTPAndJunkOnWsPortLeaveOthersServed(node: Node, uniq: str) -> None:
    """A browser-style GET without Upgrade, an endless header and junk bytes: refused, others fine."""
    with socket.create_connection(("127.0.0.1", node.ports["ws"]), timeout=TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = s.recv(4096)
        assert response.startswith(b"HTTP/1.1 4"), response[:80]
    with socket.create_connection(("127.0.0.1", node.ports["ws"]), timeout=TIMEOUT) as s:
        # Raw MQTT, not HTTP: no CONNACK (the socket waits for the end of an HTTP
        # request until the opening-handshake timeout, then closes).
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        s.settimeout(0.5)
        try:
            data = s.recv(4096)
        except TimeoutError:
            data = b""
        assert not data.startswith(b"\x20")
    endless = socket.create_connection(("127.0.0.1", node.ports["ws"]), timeout=TIMEOUT)
    try:
        endless.sendall(b"GET /mqtt HTTP/1.1\r\n")
        closed = False
        for _ in range(64):  # 64 KiB of header, four times the bound
            try:
                endless.sendall(b"X-Junk: " + b"a" * 1014 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        if not closed:
            try:
                closed = endless.recv(4096) == b""
            except ConnectionResetError:
                closed = True
        assert closed, "oversized handshake not refused"
    finally:
        endless.close()
    sub = WsPaho(node.ports["ws"], f"{uniq}-s")
    try:
        sub.subscribe(f"{uniq}/t", 1)
        sub.publish(f"{uniq}/t", b"still here", 1)
        assert sub.waitMessages(1)[0][:2] == (f"{uniq}/t", b"still here")
    finally:
        sub.stop()


def test_slowWebSocketSubscriberPausesDelivery(certs: Certs, uniq: str) -> None:
    """Back-pressure over ws: a subscriber that stops reading stops its publisher, loses nothing.

    The subscriber's socket is not read while a TCP publisher sends QoS 1
    messages as fast as it is acknowledged.  Delivery to the WebSocket must
    pause at the socket (not buffer without bound): the session queue fills
    to its small bound and the publisher is no longer read, so its PUBACKs
    stop.  Once the subscriber reads again every message arrives, in order.
    """
    n = startNode(certs, extra="[mqtt]\nmax_queued_messages = 20\ncongestion_timeout = 60.0\n")
    total, size = 400, 16384
    ws = RawWebSocket(n.ports["ws"], rcvbuf=4096)
    parser = MQTTParser(server=False)
    try:
        ws.sendFrame(encodeConnect(Connect(f"{uniq}-slow")))
        assert isinstance(parser.feed(ws.recvFrame()[1])[0], Connack)
        # QoS 1: a QoS 0 message for a full queue would be dropped, not held (docs/mqtt.md).
        ws.sendFrame(encodeSubscribe(1, [(f"{uniq}/t", 1)]))
        assert isinstance(parser.feed(ws.recvFrame()[1])[0], Suback)
        with RawClient(n.tcp) as pub:
            assert pub.connect(f"{uniq}-pub").returnCode == 0
            pub.sock.settimeout(60.0)
            topic = f"{uniq}/t".encode()

            def sendAll() -> None:
                for i in range(total):
                    body = i.to_bytes(4, "big") * (size // 4)
                    pub.send(encodePublish(topic, body, 1, False, False, i + 1))

            sender = threading.Thread(target=sendAll, daemon=True)
            sender.start()
            # Count PUBACKs until none arrives for a second (bounded by the total).
            acked = 0
            while acked < total:
                try:
                    pub.receive(timeout=1.0)
                except TimeoutError:
                    break
                acked += 1
            # (Its bytes may all sit in socket buffers by now; what counts is that the
            # broker stopped reading them: without back-pressure it would ack all.)
            assert acked < total, "publisher never paused: nothing held the WebSocket back"
            # Now read everything: every message arrives, in order, and the rest is acknowledged.
            received = 0
            while received < total:
                opcode, payload = ws.recvFrame()
                assert opcode == 2
                for packet in parser.feed(payload):
                    assert isinstance(packet, Publish)
                    assert packet.payload[:4] == received.to_bytes(4, "big")
                    assert packet.packetId is not None
                    ws.sendFrame(encodeAck(PUBACK, packet.packetId))
                    received += 1
            while acked < total:
                pub.receive()
                acked += 1
            sender.join(TIMEOUT)
            assert not sender.is_alive()
    finally:
        ws.close()
        n.process.cleanup()
