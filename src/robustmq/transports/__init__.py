"""Transports: how a listener's bytes reach a protocol.

A listener is (protocol, transport, address, port, TLS settings).
L{serverEndpoint} turns the transport part into something with
C{listen(factory) -> Deferred[IListeningPort]}, so any protocol factory runs
unchanged over any transport:

  - C{tcp}: a TCP endpoint;
  - C{tls}: TLS (pyOpenSSL) around TCP;
  - C{ws} / C{wss}: WebSocket (autobahn) around TCP / TLS;
  - C{quic}: QUIC (aioquic) on UDP, the client's first stream is the connection.

Certificates of tls, wss and quic listeners are registered with the
L{CertificateReloader}, which re-reads them on SIGHUP.
"""

from __future__ import annotations

from typing import Any

from robustmq.config import ConfigError, ListenerSettings
from robustmq.transports.reload import CertificateReloader
from robustmq.transports.tcp import tcpEndpoint

#: Transports whose listeners need a certificate.
SECURE_TRANSPORTS = ("tls", "wss", "quic")


def serverEndpoint(
    reactor: Any,
    listener: ListenerSettings,
    reloader: CertificateReloader | None = None,
    key: str = "listeners[?]",
    openTimeout: float = 10.0,
    fileno: int | None = None,
) -> Any:
    """What a listener listens with: an endpoint-like object with C{listen(factory)}.

    @param reloader: registers the listener's certificate for SIGHUP reloads.
    @param key: the listener's config key, named in errors (C{listeners[2]}).
    @param openTimeout: seconds a WebSocket client has for its opening handshake.
    @param fileno: a socket bound by the node to adopt instead of binding one
        (TCP, or UDP for quic): how worker processes share the node's ports.
    @raise ConfigError: unknown transport, or unusable certificate files.
    """
    transport = listener.transport
    if transport == "tcp":
        return tcpEndpoint(reactor, listener, fileno)
    if transport in ("tls", "wss"):
        from robustmq.transports.tls import ServerTLSContext, TLSServerEndpoint

        context = ServerTLSContext(listener, key)
        if reloader is not None:
            reloader.register(context)
        endpoint: Any = TLSServerEndpoint(tcpEndpoint(reactor, listener, fileno), context, listener)
        if transport == "tls":
            return endpoint
        from robustmq.transports.websocket import WebSocketServerEndpoint

        return WebSocketServerEndpoint(endpoint, listener, secure=True, openTimeout=openTimeout)
    if transport == "ws":
        from robustmq.transports.websocket import WebSocketServerEndpoint

        return WebSocketServerEndpoint(
            tcpEndpoint(reactor, listener, fileno), listener, secure=False, openTimeout=openTimeout
        )
    if transport == "quic":
        from robustmq.transports.quic import QuicServerEndpoint, QuicServerSettings

        settings = QuicServerSettings(listener, key)
        if reloader is not None:
            reloader.register(settings)
        return QuicServerEndpoint(reactor, listener, settings, fileno)
    raise ConfigError(f"{key}.transport: unknown transport {transport!r}")


__all__ = ["SECURE_TRANSPORTS", "CertificateReloader", "serverEndpoint", "tcpEndpoint"]
