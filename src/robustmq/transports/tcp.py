"""Plain TCP listening endpoints (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from robustmq.config import ListenerSettings


def tcpEndpoint(reactor: Any, listener: ListenerSettings) -> IStreamServerEndpoint:
    """The TCP endpoint a listener accepts connections on (TLS and WebSocket wrap it)."""
    address = ipaddress.ip_address(listener.bind)
    endpointClass = TCP6ServerEndpoint if address.version == 6 else TCP4ServerEndpoint
    return endpointClass(reactor, listener.port, backlog=listener.backlog, interface=listener.bind)
