"""Transport pieces in process: config checks, TLS identities, reload, WebSocket and QUIC adapters."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from robustmq.config import ConfigError, ListenerSettings, settingsFromMapping
from robustmq.protocols.mqtt._packets import Connack, Connect
from robustmq.testing.memory import InMemoryBroker
from robustmq.transports import CertificateReloader, serverEndpoint
from robustmq.transports.testcerts import generateTestCertificates
from robustmq.transports.tls import clientTLSOptions
from robustmq.transports.websocket import WebSocketStreamTransport

_CERTS: dict[str, Any] = {}


def _deferred(f: Any) -> Any:
    """Run an async test method as a Deferred (trial waits for it)."""

    def run(self: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(f(self))

    run.__name__ = f.__name__
    return run


def certs() -> dict[str, Any]:
    """One set of test certificates for this module (generated on first use)."""
    if not _CERTS:
        d = Path(tempfile.mkdtemp(prefix="robustmq-certs-"))
        _CERTS.update(
            {k: str(v) for k, v in generateTestCertificates(d, clientName="alice").items()}
        )
        rogue = generateTestCertificates(d / "rogue", clientName="mallory")
        _CERTS.update({f"rogue_{k}": str(v) for k, v in rogue.items()})
    return _CERTS


def listener(**kw: Any) -> ListenerSettings:
    return settingsFromMapping({"listeners": [kw]}).listeners[0]


class ListenerConfigTests(unittest.TestCase):
    """Cross-checks of [[listeners]] keys name the key at fault."""

    def assertConfigError(self, raw: dict[str, Any], key: str) -> None:
        with self.assertRaises(ConfigError) as e:
            settingsFromMapping({"listeners": [{"port": 1883}, raw]})
        self.assertIn(key, str(e.exception))

    def test_standardPorts(self) -> None:
        c = certs()
        tls = {"certfile": c["server"], "keyfile": c["server_key"]}
        ports = {
            t: listener(transport=t, **(tls if t in ("tls", "wss", "quic") else {})).port
            for t in ("tcp", "tls", "ws", "wss", "quic")
        }
        self.assertEqual(ports, {"tcp": 1883, "tls": 8883, "ws": 8083, "wss": 8084, "quic": 14567})
        self.assertEqual(listener(transport="ws", port=9001).port, 9001)

    def test_secureTransportsNeedCertificate(self) -> None:
        for transport in ("tls", "wss", "quic"):
            self.assertConfigError({"transport": transport}, "listeners[1].certfile")
            self.assertConfigError(
                {"transport": transport, "certfile": "a.pem"}, "listeners[1].keyfile"
            )

    def test_tlsKeysRefusedOnPlainTransports(self) -> None:
        self.assertConfigError({"transport": "ws", "certfile": "a.pem"}, "listeners[1].certfile")
        self.assertConfigError(
            {"transport": "tcp", "verify_peer": True}, "listeners[1].verify_peer"
        )

    def test_mutualTLSChecks(self) -> None:
        base = {"transport": "tls", "certfile": "a", "keyfile": "b"}
        self.assertConfigError({**base, "verify_peer": True}, "listeners[1].cacertfile")
        self.assertConfigError(
            {**base, "peer_cert_as_username": "cn"}, "listeners[1].peer_cert_as_username"
        )
        self.assertConfigError(
            {**base, "peer_cert_as_username": "dn"}, "listeners[1].peer_cert_as_username"
        )
        self.assertConfigError(
            {
                "transport": "quic",
                "certfile": "a",
                "keyfile": "b",
                "cacertfile": "c",
                "verify_peer": True,
            },
            "listeners[1].verify_peer",
        )

    def test_otherChecks(self) -> None:
        self.assertConfigError({"transport": "ws", "ws_path": "mqtt"}, "listeners[1].ws_path")
        self.assertConfigError({"transport": "tls", "tls_min_version": "1.1"}, "tls_min_version")
        self.assertConfigError({"transport": "quic", "quic_send_buffer": 10}, "quic_send_buffer")

    def test_quicAndTcpMayShareAPortNumber(self) -> None:
        c = certs()
        s = settingsFromMapping(
            {
                "listeners": [
                    {"port": 14567},
                    {
                        "transport": "quic",
                        "port": 14567,
                        "certfile": c["server"],
                        "keyfile": c["server_key"],
                    },
                ]
            }
        )
        self.assertEqual([x.port for x in s.listeners], [14567, 14567])

    def test_unusableFilesNameTheKey(self) -> None:
        c = certs()
        cases = [
            ({"certfile": "/nonexistent.pem", "keyfile": c["server_key"]}, "listeners[3].certfile"),
            ({"certfile": c["server"], "keyfile": c["client_key"]}, "listeners[3].keyfile"),
            ({"certfile": c["server_key"], "keyfile": c["server_key"]}, "listeners[3].certfile"),
            (
                {"certfile": c["server"], "keyfile": c["server_key"], "ciphers": "NOPE"},
                "listeners[3].ciphers",
            ),
        ]
        for keys, key in cases:
            with self.assertRaises(ConfigError) as e:
                serverEndpoint(reactor, listener(transport="tls", **keys), None, "listeners[3]")
            self.assertIn(key, str(e.exception))

    def test_quicUnusableFilesNameTheKey(self) -> None:
        c = certs()
        cases = [
            ({"certfile": "/nonexistent.pem", "keyfile": c["server_key"]}, "listeners[3].certfile"),
            ({"certfile": c["server"], "keyfile": "/nonexistent.key"}, "listeners[3].keyfile"),
            ({"certfile": c["server_key"], "keyfile": c["server_key"]}, "listeners[3].certfile"),
            ({"certfile": c["server"], "keyfile": c["server"]}, "listeners[3].keyfile"),
        ]
        for keys, key in cases:
            with self.assertRaises(ConfigError) as e:
                serverEndpoint(reactor, listener(transport="quic", **keys), None, "listeners[3]")
            self.assertIn(key, str(e.exception))


class _Recorder(protocol.Protocol):
    """Server side: answers each read with the transport's certificate username."""

    lost: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        _Recorder.lost.append(self.done)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        name = getattr(self.transport, "certificateUsername", None)
        self.transport.write(repr(name).encode())


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.reply: defer.Deferred[bytes] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        if not self.reply.called:
            self.reply.callback(data)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)
        if not self.reply.called:
            self.reply.errback(reason)


class TLSInProcessTests(unittest.TestCase):
    """A TLS listener on loopback and Twisted TLS clients (clientTLSOptions)."""

    async def _exchange(self, settings: ListenerSettings, **client: Any) -> bytes:
        reloader = CertificateReloader(reactor)
        endpoint = serverEndpoint(reactor, settings, reloader, "listeners[0]")
        port = await endpoint.listen(protocol.Factory.forProtocol(_Recorder))
        self.addCleanup(port.stopListening)
        self.reloader = reloader
        hostname = client.pop("hostname", "localhost")
        options = clientTLSOptions(hostname, **client)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
        proto = await wrapClientTLS(options, tcp).connect(protocol.Factory.forProtocol(_Client))
        try:
            return await proto.reply
        finally:
            # Both ends closed before the test ends (trial checks for leftovers).
            await proto.closed
            await defer.gatherResults(_Recorder.lost)
            _Recorder.lost.clear()

    def _mtls(self, source: str) -> ListenerSettings:
        c = certs()
        return listener(
            transport="tls",
            bind="127.0.0.1",
            port=0,
            certfile=c["server"],
            keyfile=c["server_key"],
            cacertfile=c["ca"],
            verify_peer=True,
            peer_cert_as_username=source,
        )

    @_deferred
    async def test_certificateCommonNameAsUsername(self) -> None:
        c = certs()
        reply = await self._exchange(
            self._mtls("cn"), cafile=c["ca"], certfile=c["client"], keyfile=c["client_key"]
        )
        self.assertEqual(reply, b"'alice'")

    @_deferred
    async def test_certificateSANAsUsername(self) -> None:
        c = certs()
        reply = await self._exchange(
            self._mtls("san"), cafile=c["ca"], certfile=c["client"], keyfile=c["client_key"]
        )
        self.assertEqual(reply, b"'alice'")

    @_deferred
    async def test_noUsernameWhenNotConfigured(self) -> None:
        c = certs()
        settings = listener(
            transport="tls", bind="127.0.0.1", port=0, certfile=c["server"], keyfile=c["server_key"]
        )
        reply = await self._exchange(settings, cafile=c["ca"])
        self.assertEqual(reply, b"None")

    @_deferred
    async def test_clientRefusesWrongHostname(self) -> None:
        """Outgoing TLS checks the server's name with service-identity."""
        c = certs()
        settings = listener(
            transport="tls", bind="127.0.0.1", port=0, certfile=c["server"], keyfile=c["server_key"]
        )
        self.assertEqual(
            await self._exchange(settings, cafile=c["ca"], hostname="127.0.0.1"), b"None"
        )
        with self.assertRaises(Exception) as e:
            await self._exchange(settings, cafile=c["ca"], hostname="broker.example.com")
        self.assertIn("broker.example.com", str(e.exception))

    @_deferred
    async def test_reloadServesNewCertificateToNewConnections(self) -> None:
        c = certs()
        live = Path(tempfile.mkdtemp())
        (live / "s.pem").write_bytes(Path(c["server"]).read_bytes())
        (live / "s.key").write_bytes(Path(c["server_key"]).read_bytes())
        settings = listener(
            transport="tls",
            bind="127.0.0.1",
            port=0,
            certfile=str(live / "s.pem"),
            keyfile=str(live / "s.key"),
        )
        self.assertEqual(await self._exchange(settings, cafile=c["ca"]), b"None")
        context = self.reloader.reloadables[0]
        (live / "s.pem").write_bytes(Path(c["rogue_server"]).read_bytes())
        (live / "s.key").write_bytes(Path(c["rogue_server_key"]).read_bytes())
        old = context.context  # type: ignore[attr-defined]
        self.reloader.reloadAll()
        self.assertIsNot(context.context, old)  # type: ignore[attr-defined]
        # A bad file keeps the current context.
        (live / "s.pem").write_text("garbage")
        current = context.context  # type: ignore[attr-defined]
        self.reloader.reloadAll()
        self.assertIs(context.context, current)  # type: ignore[attr-defined]


class _FakeReactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *a: Any) -> None:
        self.calls.append(f)


class ReloaderSignalTests(unittest.TestCase):
    def test_sighupSchedulesReloadAndIsRestored(self) -> None:
        fake = _FakeReactor()
        reloader = CertificateReloader(fake)
        reloaded: list[int] = []

        class R:
            def reload(self) -> None:
                reloaded.append(1)

        reloader.register(R())
        previous = signal.getsignal(signal.SIGHUP)
        reloader.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(fake.calls, [reloader.reloadAll])
            fake.calls[0]()
            self.assertEqual(reloaded, [1])
        finally:
            reloader.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class WebSocketAdapterTests(unittest.TestCase):
    """The stream transport seen by the protocol above a WebSocket."""

    def _adapter(self) -> tuple[WebSocketStreamTransport, StringTransport, Any]:
        raw = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 4242))

        class WS:
            STATE_OPEN, STATE_CLOSING, STATE_CLOSED = 3, 2, 0
            state = 3
            transport = raw
            sent: list[tuple[bytes, bool]] = []

            def sendMessage(self, data: bytes, isBinary: bool) -> None:
                self.sent.append((data, isBinary))

        ws = WS()
        return WebSocketStreamTransport(ws), raw, ws  # type: ignore[arg-type]

    def test_producerGoesToTheSocket(self) -> None:
        """Back-pressure: the socket transport pauses the protocol directly."""
        adapter, raw, _ = self._adapter()
        producer = object()
        adapter.registerProducer(producer, True)
        self.assertIs(raw.producer, producer)
        self.assertTrue(raw.streaming)
        adapter.pauseProducing()
        self.assertEqual(raw.producerState, "paused")
        adapter.resumeProducing()
        self.assertEqual(raw.producerState, "producing")
        adapter.unregisterProducer()
        self.assertIsNone(raw.producer)

    def test_writesAreBinaryMessages(self) -> None:
        adapter, raw, ws = self._adapter()
        adapter.write(b"\x20\x02\x00\x00")
        adapter.writeSequence([b"a", b"b"])
        self.assertEqual(ws.sent, [(b"\x20\x02\x00\x00", True), (b"ab", True)])
        self.assertEqual(adapter.getPeer().host, "10.0.0.7")
        ws.state = ws.STATE_CLOSED
        adapter.write(b"late")
        self.assertEqual(len(ws.sent), 2)

    def test_certificateUsernameFromTheTLSLayer(self) -> None:
        """wss over mutual TLS: the name comes from the TLS transport underneath."""
        adapter, raw, _ = self._adapter()
        self.assertIsNone(adapter.certificateUsername)
        raw.certificateUsername = "alice"  # type: ignore[attr-defined]
        self.assertEqual(adapter.certificateUsername, "alice")


class _CertTransport(StringTransport):
    certificateUsername = "alice"


class MQTTCertificateUsernameTests(unittest.TestCase):
    def test_transportUsernameReplacesConnectUsername(self) -> None:
        harness = InMemoryBroker()
        proto = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert proto is not None
        transport = _CertTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        proto.makeConnection(transport)
        from robustmq.protocols.mqtt import MQTTParser, encode

        proto.dataReceived(encode(Connect("c1", username="bob", password=b"pw")))
        harness.clock.advance(0)
        packets = MQTTParser(server=False).feed(transport.value())
        self.assertIsInstance(packets[0], Connack)
        self.assertEqual(proto.username, "alice")
