"""TLS listeners (and outgoing TLS) with pyOpenSSL through Twisted's memory-BIO TLS.

A TLS listener wraps any other stream endpoint: C{TLSServerEndpoint(inner,
context)} listens on C{inner} with a factory that speaks TLS around the
protocol factory it is given.  The same wrapper serves MQTT over TLS and
the TLS layer under WSS.

L{ServerTLSContext} builds the OpenSSL context from a listener's settings:
TLS 1.2 and 1.3 only, the configured TLS 1.2 cipher list, the certificate
chain and key, ALPN, and for mutual TLS a required client certificate
verified against the configured CA.  L{ServerTLSContext.reload} re-reads the
files and swaps the context; connections already open keep the context they
were made with, so a reload never drops anyone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.config import ConfigError, ListenerSettings

#: OpenSSL names of the protocol versions a listener may start from.
_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

_T = TypeVar("_T")


def _checkFile(key: str, path: str) -> None:
    if not path:
        raise ConfigError(f"{key}: required")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {path}: file not found")


def _readFile(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key}: {path}: cannot be read: {e.strerror}") from None


def loadCertificateChain(
    certfile: str, keyfile: str, certKey: str, keyKey: str
) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """A PEM certificate chain (the server's certificate first) and its private key.

    For servers that take cryptography's objects rather than an OpenSSL
    context: L{serverCertificateOptions} and the QUIC listeners.  C{keyfile}
    empty: the key is in C{certfile}.  A missing, unreadable or unparsable
    file is a L{ConfigError} naming C{certKey} or C{keyKey} (the config keys
    the paths came from).  Whether the key is the certificate's is not
    checked here.
    """
    _checkFile(certKey, certfile)
    if keyfile:
        _checkFile(keyKey, keyfile)
    keyName, keyPath = (keyKey, keyfile) if keyfile else (certKey, certfile)
    certPem = _readFile(certKey, certfile)
    keyPem = _readFile(keyName, keyPath)
    try:
        chain = x509.load_pem_x509_certificates(certPem)
    except ValueError as e:
        raise ConfigError(f"{certKey}: {certfile}: not a PEM certificate: {e}") from None
    try:
        privateKey = load_pem_private_key(keyPem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{keyName}: {keyPath}: no usable PEM private key: {e}") from None
    return chain, privateKey


def reloadedOrNone(
    build: Callable[[], _T], listener: ListenerSettings, log: Logger, kind: str
) -> _T | None:
    """C{build()} run again to reload a listener's certificate files.

    Returns what it built, or None when the files are bad now: the error is
    logged and the caller keeps what it has, so a bad reload never stops a
    listener.  C{kind} names the certificate in the log line (C{"TLS"}).
    """
    try:
        built = build()
    except ConfigError as e:
        log.error(
            "{listener}: certificates not reloaded, keeping the current ones: {error}",
            listener=listener.label,
            error=str(e),
        )
        return None
    log.info(
        "{listener}: reloaded {kind} certificate {certfile}",
        listener=listener.label,
        kind=kind,
        certfile=listener.certfile,
    )
    return built


def certificateUsername(cert: x509.Certificate, source: str) -> str | None:
    """The MQTT username a client certificate stands for, or None.

    @param source: C{"cn"} (the subject's common name) or C{"san"} (the first
        subject alternative name that is a DNS name, an e-mail address or a
        URI, in that order of preference).
    """
    if source == "cn":
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None
    if source == "san":
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        for kind in (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier):
            values = san.get_values_for_type(kind)
            if values:
                return str(values[0])
    return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSContext:
    """The current OpenSSL server context of one listener, rebuilt on reload.

    @ivar alpn: protocol names offered in ALPN, in preference order.
    """

    log = Logger()

    def __init__(self, listener: ListenerSettings, key: str) -> None:
        self.listener = listener
        self.key = key
        self.alpn = [name.encode() for name in (listener.alpn or (listener.protocol,))]
        self.context = self._build()

    def _build(self) -> SSL.Context:
        """A fresh context from the files on disk; ConfigError naming the key if they are bad."""
        listener, key = self.listener, self.key
        _checkFile(f"{key}.certfile", listener.certfile)
        _checkFile(f"{key}.keyfile", listener.keyfile)
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_MIN_VERSIONS[listener.tls_min_version])
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
        )
        try:
            ctx.set_cipher_list(listener.ciphers.encode())
        except SSL.Error as e:
            raise ConfigError(f"{key}.ciphers: OpenSSL accepts none of them: {e}") from None
        try:
            ctx.use_certificate_chain_file(listener.certfile)
        except SSL.Error as e:
            raise ConfigError(
                f"{key}.certfile: {listener.certfile}: not a PEM chain: {e}"
            ) from None
        try:
            ctx.use_privatekey_file(listener.keyfile)
            ctx.check_privatekey()
        except SSL.Error as e:
            raise ConfigError(
                f"{key}.keyfile: {listener.keyfile}: unusable or not the certificate's key: {e}"
            ) from None
        if listener.cacertfile:
            _checkFile(f"{key}.cacertfile", listener.cacertfile)
            try:
                ctx.load_verify_locations(listener.cacertfile)
            except (SSL.Error, ValueError) as e:
                raise ConfigError(
                    f"{key}.cacertfile: {listener.cacertfile}: not PEM CA certificates: {e}"
                ) from None
        if listener.verify_peer:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verified)
        # Needed when clients resume sessions on a listener that verifies them.
        ctx.set_session_id(f"robustmq:{listener.label}".encode()[:32])
        ctx.set_alpn_select_callback(self._selectALPN)
        return ctx

    def _selectALPN(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        for name in self.alpn:
            if name in offered:
                return name
        # A client offering only other protocols still gets a handshake without ALPN.
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[no-any-return]

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A new connection on the current context (IOpenSSLServerConnectionCreator)."""
        return SSL.Connection(self.context, None)

    def reload(self) -> None:
        """Re-read certificate, key and CA files; on error keep the old context and log."""
        context = reloadedOrNone(self._build, self.listener, self.log, "TLS")
        if context is not None:
            self.context = context


def _verified(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    return bool(ok)


class ServerTLSTransport(BufferingTLSTransport):
    """The TLS layer of one accepted connection.

    Adds what the protocols above need: L{certificateUsername} (mutual TLS),
    and a log line naming the listener when the handshake fails.
    """

    log = Logger()
    factory: ServerTLSFactory

    @property
    def certificateUsername(self) -> str | None:
        """The client certificate's name when the listener maps it to a username."""
        source = self.factory.listener.peer_cert_as_username
        if source == "none":
            return None
        cert = self.getPeerCertificate()
        if cert is None:
            return None
        return certificateUsername(cert.to_cryptography(), source)

    def connectionLost(self, reason: Failure) -> None:
        if not self._handshakeDone:
            self.factory.handshakeFailures += 1
            peer = self.transport.getPeer() if self.transport is not None else None
            self.log.info(
                "{listener}: TLS handshake with {peer} failed: {error}",
                listener=self.factory.listener.label,
                peer=getattr(peer, "host", peer),
                error=(self._reason or reason).getErrorMessage(),
            )
        super().connectionLost(reason)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """Wraps a protocol factory in server-side TLS.

    @ivar handshakeFailures: connections that closed before completing TLS.
    """

    protocol = ServerTLSTransport

    def __init__(
        self, context: ServerTLSContext, listener: ListenerSettings, wrapped: IProtocolFactory
    ) -> None:
        super().__init__(context, False, wrapped)
        self.listener = listener
        self.handshakeFailures = 0

    def buildProtocol(self, addr: Any) -> Any:
        # The wrapped factory may refuse (connection limit): refuse the socket too.
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listens on C{inner} with TLS around every connection."""

    def __init__(
        self, inner: IStreamServerEndpoint, context: ServerTLSContext, listener: ListenerSettings
    ) -> None:
        self.inner = inner
        self.context = context
        self.listener = listener

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.inner.listen(ServerTLSFactory(self.context, self.listener, factory))


def clientTLSOptions(
    hostname: str,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    alpn: tuple[str, ...] = (),
) -> Any:
    """Options for an outgoing TLS connection (bridges, webhooks).

    The server's certificate must chain to C{cafile} (or the system's trust
    store when None) and match C{hostname} (a DNS name or an IP address),
    checked by service-identity.  C{certfile}/C{keyfile} present a client
    certificate for mutual TLS.
    """
    trustRoot: Any = ssl.platformTrust()
    if cafile:
        with open(cafile, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
        from OpenSSL import crypto

        trustRoot = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs]
        )
    clientCertificate = None
    if certfile:
        with open(certfile, "rb") as f:
            certPem = f.read()
        with open(keyfile or certfile, "rb") as f:
            keyPem = f.read()
        clientCertificate = ssl.PrivateCertificate.loadPEM(certPem + b"\n" + keyPem)
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=trustRoot,
        clientCertificate=clientCertificate,
        acceptableProtocols=[p.encode() for p in alpn] or None,
    )


def serverCertificateOptions(
    certfile: str, keyfile: str, certKey: str, keyKey: str
) -> ssl.CertificateOptions:
    """Server TLS options from a PEM certificate chain and its key (TLS 1.2 and newer).

    For TLS listeners that are not MQTT/Kafka/AMQP listeners (the placement
    service's PB port).  C{keyfile} empty: the key is in C{certfile}.  A
    missing or unusable file, or a key that is not the certificate's, is a
    L{ConfigError} naming C{certKey} or C{keyKey} (the config keys they came from).
    """
    chain, privateKey = loadCertificateChain(certfile, keyfile, certKey, keyKey)
    # pyOpenSSL takes cryptography's objects (its own X509/PKey are deprecated).
    options = ssl.CertificateOptions(
        privateKey=privateKey,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
    )
    try:
        options.getContext()  # checks that the key is the certificate's
    except SSL.Error as e:
        keyName, keyPath = (keyKey, keyfile) if keyfile else (certKey, certfile)
        raise ConfigError(f"{keyName}: {keyPath}: not the key of {certfile}: {e}") from None
    return options


__all__ = [
    "ServerTLSContext",
    "ServerTLSFactory",
    "ServerTLSTransport",
    "TLSServerEndpoint",
    "certificateUsername",
    "clientTLSOptions",
    "loadCertificateChain",
    "reloadedOrNone",
    "serverCertificateOptions",
]
