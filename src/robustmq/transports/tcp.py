"""Plain TCP listening endpoints (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from robustmq.config import ConfigError, ListenerSettings


def serverEndpoint(reactor: Any, listener: ListenerSettings) -> IStreamServerEndpoint:
    """The endpoint a listener accepts connections on."""
    if listener.transport != "tcp":
        raise ConfigError(
            f"listener {listener.label}: transport {listener.transport!r} is not available yet"
        )
    address = ipaddress.ip_address(listener.bind)
    endpointClass = TCP6ServerEndpoint if address.version == 6 else TCP4ServerEndpoint
    return endpointClass(reactor, listener.port, backlog=listener.backlog, interface=listener.bind)
