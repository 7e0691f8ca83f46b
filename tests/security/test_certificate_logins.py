"""Client-certificate logins for Kafka and AMQP on mutual-TLS listeners.

The node runs default-deny (C{[acl] no_match = "deny"}, anonymous off) with a
Kafka and an AMQP listener that verify client certificates and map the
certificate's common name (C{robustmq-client}) to the user name.  pika logs
in with the EXTERNAL mechanism; confluent-kafka connects over SSL without
SASL and is the principal C{User:robustmq-client}.  Each may do what its
rules allow and no more; a client without a certificate is refused.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from confluent_kafka import KafkaError, Producer

from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.transports.testcerts import generateTestCertificates

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 10.0
USER = "robustmq-client"


class _Node(BrokerProcess):
    http: int
    kafka: int
    amqp: int
    certs: dict[str, Path]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Node]:
    certs = generateTestCertificates(tmp_path_factory.mktemp("mtls"))
    http, kafka, amqp = freePort(), freePort(), freePort()
    tls = f"""
certfile = "{certs["server"]}"
keyfile = "{certs["server_key"]}"
cacertfile = "{certs["ca"]}"
verify_peer = true
peer_cert_as_username = "cn"
"""
    n = _Node(
        f"""
[http]
port = {http}

[auth]
chain = ["cert", "users"]
allow_anonymous = "off"

[acl]
no_match = "deny"

[[listeners]]
protocol = "kafka"
transport = "tls"
bind = "127.0.0.1"
port = {kafka}
{tls}

[[listeners]]
protocol = "amqp"
transport = "tls"
bind = "127.0.0.1"
port = {amqp}
{tls}
"""
    )
    n.http, n.kafka, n.amqp, n.certs = http, kafka, amqp, certs
    n.start()
    try:
        waitForPort("127.0.0.1", http)
        n.api(
            "PUT",
            f"/api/v1/amqp/permissions/%2F/{USER}",
            {"configure": "^cert\\.", "write": "^cert\\.", "read": "^cert\\."},
        )
        n.api(
            "POST",
            "/api/v1/kafka/acls",
            {
                "resource_type": "TOPIC",
                "resource_name": "cert-",
                "pattern_type": "PREFIXED",
                "principal": f"User:{USER}",
                "operation": "WRITE",
            },
        )
        yield n
    finally:
        n.cleanup()


def _ssl(node: _Node, withCert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(node.certs["ca"]))
    if withCert:
        ctx.load_cert_chain(str(node.certs["client"]), str(node.certs["client_key"]))
    return ctx


def test_amqpExternal(node: _Node) -> None:
    """pika with EXTERNAL logs in as the certificate's CN; its permissions apply."""
    params = pika.ConnectionParameters(
        "127.0.0.1",
        node.amqp,
        ssl_options=pika.SSLOptions(_ssl(node), server_hostname="localhost"),
        credentials=pika.credentials.ExternalCredentials(),
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.exchange_declare("cert.ex", "fanout")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.exchange_declare("other.ex", "fanout")
        assert refused.value.reply_code == 403
        assert f"refused for user '{USER}'" in refused.value.reply_text
    finally:
        conn.close()


def _produce(node: _Node, topic: str, withCert: bool) -> Any:
    conf: dict[str, Any] = {
        "bootstrap.servers": f"localhost:{node.kafka}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(node.certs["ca"]),
        "message.timeout.ms": 6000,
    }
    if withCert:
        conf["ssl.certificate.location"] = str(node.certs["client"])
        conf["ssl.key.location"] = str(node.certs["client_key"])
    reports: list[Any] = []
    p = Producer(conf)
    p.produce(topic, value=b"c", on_delivery=lambda e, m: reports.append(e))
    p.flush(TIMEOUT)
    return reports[0] if reports else "no report"


def test_kafkaCertificatePrincipal(node: _Node) -> None:
    """confluent-kafka over mutual TLS without SASL is User:robustmq-client: it writes
    under cert- and gets TOPIC_AUTHORIZATION_FAILED elsewhere."""
    tag = uuid.uuid4().hex[:6]
    # The topic must exist: the node's admin creates it through a superuser-free path,
    # an ALLOW CREATE on the prefix for the same principal.
    node.api(
        "POST",
        "/api/v1/kafka/acls",
        {
            "resource_type": "TOPIC",
            "resource_name": "cert-",
            "pattern_type": "PREFIXED",
            "principal": f"User:{USER}",
            "operation": "CREATE",
        },
    )
    assert _produce(node, f"cert-{tag}", True) is None
    err = _produce(node, f"other-{tag}", True)
    assert err is not None and not isinstance(err, str)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_kafkaWithoutCertificateRefused(node: _Node) -> None:
    """Without a client certificate the TLS handshake fails: nothing is written."""
    err = _produce(node, f"cert-{uuid.uuid4().hex[:6]}", False)
    assert err is not None
