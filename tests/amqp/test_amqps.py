"""AMQPS: pika over TLS against the listener block that etc/robustmq.toml ships commented out."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPConnectionError

from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.transports.testcerts import generateTestCertificates

TIMEOUT = 10.0
EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "robustmq.toml"


def shippedAMQPSListener() -> str:
    """The commented-out AMQPS [[listeners]] table of etc/robustmq.toml, uncommented."""
    text = EXAMPLE.read_text()
    start = text.index("# AMQPS:")
    lines = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    table = "\n".join(lines)
    table = table[table.index("[[listeners]]") :]
    assert 'protocol = "amqp"' in table and 'transport = "tls"' in table
    assert re.search(r"^port = 5671$", table, re.M)
    return table


class TLSNode:
    """A node whose only AMQP listener is the shipped AMQPS table (port and cert paths swapped)."""

    def __init__(self, certDir: Path) -> None:
        paths = generateTestCertificates(certDir)
        self.ca = str(paths["ca"])
        self.port = freePort()
        table = shippedAMQPSListener()
        table = re.sub(r"^port = 5671$", f"port = {self.port}", table, flags=re.M)
        table = table.replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
        table = table.replace('"etc/certs/server.pem"', f'"{paths["server"]}"')
        table = table.replace('"etc/certs/server.key"', f'"{paths["server_key"]}"')
        self.process = BrokerProcess(table)

    def params(self, **kw) -> pika.ConnectionParameters:
        context = ssl.create_default_context(cafile=self.ca)
        return pika.ConnectionParameters(
            "127.0.0.1",
            self.port,
            ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
            **kw,
        )


@pytest.fixture(scope="module")
def tlsNode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    node = TLSNode(tmp_path_factory.mktemp("amqps-certs"))
    node.process.start()
    waitForPort("127.0.0.1", node.port)
    try:
        yield node
    finally:
        node.process.cleanup()


def test_pikaOverTLS(tlsNode, uniq):
    conn = pika.BlockingConnection(tlsNode.params())
    try:
        assert conn.is_open
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(uniq, auto_delete=True)
        big = bytes(range(256)) * 1024  # several frames, several TLS records
        for i in range(20):
            ch.basic_publish("", uniq, str(i).encode() + big)
        ch.basic_qos(prefetch_count=5)
        got = []
        for method, _props, body in ch.consume(uniq, inactivity_timeout=TIMEOUT):
            assert method is not None, "timed out"
            assert body.endswith(big)
            got.append(body[: -len(big)])
            ch.basic_ack(method.delivery_tag)
            if len(got) == 20:
                break
        ch.cancel()
        assert got == [str(i).encode() for i in range(20)]
    finally:
        conn.close()


def test_plainAMQPOnTheTLSPortFails(tlsNode):
    # A client that skips TLS gets no AMQP from the TLS listener, and the node stays up.
    with pytest.raises(AMQPConnectionError):
        pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1", tlsNode.port, connection_attempts=1, socket_timeout=TIMEOUT
            )
        )
    conn = pika.BlockingConnection(tlsNode.params())
    conn.close()


def test_untrustedServerCertificateRefusedByClient(tlsNode, tmp_path):
    other = generateTestCertificates(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(other["ca"]))
    params = pika.ConnectionParameters(
        "127.0.0.1",
        tlsNode.port,
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        connection_attempts=1,
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        pika.BlockingConnection(params)
