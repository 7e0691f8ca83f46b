"""Self-signed test certificates: a CA, a server certificate and a client certificate.

For trying TLS, WSS, mutual TLS and QUIC locally (``robustmq cert``) and for
the tests.  Never use these in production: the CA key sits next to them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the server certificate is valid for unless told otherwise.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RobustMQ test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _keyPem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuerKey: ec.EllipticCurvePrivateKey,
    days: int,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()),
            critical=False,
        ).add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


def generateTestCertificates(
    directory: str | os.PathLike[str],
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    clientName: str = "robustmq-client",
    caName: str = "RobustMQ test CA",
    days: int = 365,
) -> dict[str, Path]:
    """Write ca.pem/ca.key, server.pem/server.key and client.pem/client.key into C{directory}.

    The server certificate is valid for C{hosts} (DNS names and IP
    addresses); the client certificate's common name is C{clientName}, and it
    also carries C{clientName} as an e-mail-free DNS subject alternative name
    so either can serve as an MQTT username.

    @return: the paths written, by name (C{"ca"}, C{"server"}, C{"server_key"}, ...).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caSubject = _name(caName)
    caCert = _issue(caSubject, caKey, caSubject, caKey, days, ca=True)
    serverKey = ec.generate_private_key(ec.SECP256R1())
    serverCert = _issue(
        _name(hosts[0] if hosts else "localhost"),
        serverKey,
        caSubject,
        caKey,
        days,
        sans=[_san(h) for h in hosts],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    clientKey = ec.generate_private_key(ec.SECP256R1())
    clientCert = _issue(
        _name(clientName),
        clientKey,
        caSubject,
        caKey,
        days,
        sans=[x509.DNSName(clientName)],
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    paths = {
        "ca": out / "ca.pem",
        "ca_key": out / "ca.key",
        "server": out / "server.pem",
        "server_key": out / "server.key",
        "client": out / "client.pem",
        "client_key": out / "client.key",
    }
    pem = serialization.Encoding.PEM
    _write(paths["ca"], caCert.public_bytes(pem))
    _write(paths["ca_key"], _keyPem(caKey), private=True)
    _write(paths["server"], serverCert.public_bytes(pem))
    _write(paths["server_key"], _keyPem(serverKey), private=True)
    _write(paths["client"], clientCert.public_bytes(pem))
    _write(paths["client_key"], _keyPem(clientKey), private=True)
    return paths


__all__ = ["DEFAULT_HOSTS", "generateTestCertificates"]
