"""Transports: how a listener's bytes reach a protocol (tcp now; tls, ws, quic next)."""

from robustmq.transports.tcp import serverEndpoint

__all__ = ["serverEndpoint"]
