"""MQTT over TLS and mutual TLS with mosquitto's clients, hostile handshakes, SIGHUP reload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from transport_support import TIMEOUT, Certs, Node, mosquitto, startSubscriber

from robustmq.testing.process import BrokerProcess
from robustmq.transports.testcerts import generateTestCertificates

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto clients")


def _waitFor(predicate, what: str, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _subscribeAndPublish(node: Node, port: int, topic: str, auth: list[str], qos: int) -> str:
    sub = startSubscriber(port, "-t", topic, "-q", str(qos), "-C", "1", "-W", "8", *auth)
    try:
        # The subscription is in place once the broker logged the client's SUBSCRIBE handling;
        # publish repeatedly (bounded) until the subscriber has it, retained so none is missed.
        pub = mosquitto(
            "mosquitto_pub",
            port,
            "-t",
            topic,
            "-m",
            f"over tls q{qos}",
            "-q",
            str(qos),
            "-r",
            *auth,
        )
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    # Clear the retained message for tidiness.
    mosquitto("mosquitto_pub", port, "-t", topic, "-n", "-r", *auth)
    return out.strip()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquittoWithCafile(node: Node, certs: Certs, uniq: str, qos: int) -> None:
    """mosquitto_pub/sub --cafile over TLS, hostname checked against the certificate."""
    out = _subscribeAndPublish(node, node.ports["tls"], f"{uniq}/t", ["--cafile", certs.ca], qos)
    assert out == f"{uniq}/t over tls q{qos}"


def test_mosquittoMutualTLS(node: Node, certs: Certs, uniq: str) -> None:
    """A client certificate from the configured CA connects to the mutual-TLS listener."""
    auth = ["--cafile", certs.ca, "--cert", certs.client, "--key", certs.clientKey]
    out = _subscribeAndPublish(node, node.ports["mtls"], f"{uniq}/m", auth, 1)
    assert out == f"{uniq}/m over tls q1"


def test_mutualTLSRefusedWithoutCertificate(node: Node, certs: Certs, uniq: str) -> None:
    """No client certificate: the handshake fails, and the broker logs it naming the listener."""
    before = node.output().count("mtls: TLS handshake with 127.0.0.1 failed")
    result = mosquitto(
        "mosquitto_pub", node.ports["mtls"], "--cafile", certs.ca, "-t", uniq, "-m", "x", "-q", "1"
    )
    assert result.returncode != 0
    _waitFor(
        lambda: node.output().count("mtls: TLS handshake with 127.0.0.1 failed") > before,
        "handshake failure log line",
    )


def test_mutualTLSRefusedWithOtherCA(node: Node, certs: Certs, uniq: str) -> None:
    result = mosquitto(
        "mosquitto_pub",
        node.ports["mtls"],
        "--cafile",
        certs.ca,
        "--cert",
        certs.rogueClient,
        "--key",
        certs.rogueClientKey,
        "-t",
        uniq,
        "-m",
        "x",
        "-q",
        "1",
    )
    assert result.returncode != 0


def test_wrongCAIsRefusedByTheClient(node: Node, certs: Certs, uniq: str) -> None:
    """The server certificate really is checked: a client trusting another CA refuses it."""
    result = mosquitto(
        "mosquitto_pub", node.ports["tls"], "--cafile", certs.rogueCa, "-t", uniq, "-m", "x"
    )
    assert result.returncode != 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onlyTLS12AndNewer(node: Node, certs: Certs) -> None:
    """TLS 1.0/1.1 are refused; 1.2 and 1.3 are spoken, with ALPN mqtt."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", node.ports["tls"]), timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLError):
            with context.wrap_socket(raw, server_hostname="localhost"):
                pass
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    context.set_alpn_protocols(["mqtt"])
    with socket.create_connection(("127.0.0.1", node.ports["tls"]), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            assert tls.selected_alpn_protocol() == "mqtt"
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", node.ports["tls"]), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            assert tls.selected_alpn_protocol() == "mqtt"


def test_garbageHandshakeLeavesOthersServed(node: Node, certs: Certs, uniq: str) -> None:
    """Random bytes and a half-open plain-text CONNECT on the TLS port close those sockets only."""
    hostile = []
    for junk in (
        os.urandom(2048),
        b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab",
        b"\x16\x03\x01",
    ):
        s = socket.create_connection(("127.0.0.1", node.ports["tls"]), timeout=TIMEOUT)
        s.sendall(junk)
        hostile.append(s)
    for s in hostile[:2]:
        # The broker closes the connection (possibly after a TLS alert).
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
        else:
            raise AssertionError("hostile TLS connection not closed")
        s.close()
    # The third socket stalls mid-handshake; meanwhile real clients are served.
    out = _subscribeAndPublish(node, node.ports["tls"], f"{uniq}/ok", ["--cafile", certs.ca], 1)
    assert out == f"{uniq}/ok over tls q1"
    hostile[2].close()


class _Paho:
    """A paho client over TLS recording what it receives."""

    def __init__(self, port: int, ca: str, clientId: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=clientId)
        self.client.tls_set(ca_certs=ca)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.connected = False
        self.client.on_connect = lambda *a: setattr(self, "connected", True)
        self.client.on_disconnect = lambda *a: setattr(self, "connected", False)
        self.client.connect("localhost", port)
        self.client.loop_start()
        _waitFor(lambda: self.connected, "paho TLS connect")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sighupReloadsCertificatesWithoutDroppingConnections(tmp_path, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    """SIGHUP: new connections get the new certificate, open ones stay connected."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(certs.server, live / "server.pem")
    shutil.copy(certs.serverKey, live / "server.key")
    fresh = generateTestCertificates(tmp_path / "fresh", clientName="bob")
    from robustmq.testing.process import freePort

    port = freePort()
    process = BrokerProcess(
        f"""
[[listeners]]
protocol = "mqtt"
transport = "tls"
bind = "127.0.0.1"
port = {port}
certfile = "{live / "server.pem"}"
keyfile = "{live / "server.key"}"
"""
    )
    process.start()
    paho = None
    try:
        paho = _Paho(port, certs.ca, "kept-over-reload")
        paho.client.subscribe("reload/#", 1)
        time.sleep(0.2)
        # Swap in a certificate from another CA and signal.
        shutil.copy(fresh["server"], live / "server.pem")
        shutil.copy(fresh["server_key"], live / "server.key")
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        _waitFor(lambda: "reloaded TLS certificate" in process.output(), "reload log line")
        # New connections: the old CA no longer verifies, the new one does.
        old = mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "-t", "reload/x", "-m", "x")
        assert old.returncode != 0
        new = mosquitto(
            "mosquitto_pub",
            port,
            "--cafile",
            str(fresh["ca"]),
            "-t",
            "reload/a",
            "-m",
            "after",
            "-q",
            "1",
        )
        assert new.returncode == 0, new.stderr
        # The connection made before the reload is still up and receives.
        _waitFor(lambda: ("reload/a", b"after") in paho.messages, "delivery to the old connection")
        assert paho.connected
        # A broken file on the next SIGHUP keeps the current certificate.
        (live / "server.pem").write_text("not a certificate")
        process.process.send_signal(signal.SIGHUP)
        _waitFor(lambda: "certificates not reloaded" in process.output(), "reload error log line")
        again = mosquitto(
            "mosquitto_pub", port, "--cafile", str(fresh["ca"]), "-t", "reload/b", "-m", "y"
        )
        assert again.returncode == 0, again.stderr
        assert process.process.poll() is None
        assert paho.connected
    finally:
        if paho is not None:
            paho.stop()
        process.cleanup()


def test_badCertificateFileStopsStartup(tmp_path, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    """A certificate path that does not exist is a config error naming the key."""
    from robustmq.testing.process import freePort

    process = BrokerProcess(
        f"""
[[listeners]]
protocol = "mqtt"
transport = "tls"
bind = "127.0.0.1"
port = {freePort()}
certfile = "{tmp_path / "missing.pem"}"
keyfile = "{certs.serverKey}"
"""
    )
    with pytest.raises(RuntimeError) as e:
        process.start()
    process.cleanup()
    assert "listeners[1].certfile" in str(e.value)
