"""Plain TCP listening endpoints (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.interfaces import IStreamServerEndpoint

from robustmq.config import ListenerSettings


def tcpEndpoint(
    reactor: Any, listener: ListenerSettings, fileno: int | None = None
) -> IStreamServerEndpoint:
    """The TCP endpoint a listener accepts connections on (TLS and WebSocket wrap it).

    @param fileno: a listening socket to adopt instead of binding one: a
        worker process accepts on a socket its node bound (docs/workers.md).
    """
    address = ipaddress.ip_address(listener.bind)
    if fileno is not None:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return AdoptedStreamServerEndpoint(reactor, fileno, family)
    endpointClass = TCP6ServerEndpoint if address.version == 6 else TCP4ServerEndpoint
    return endpointClass(reactor, listener.port, backlog=listener.backlog, interface=listener.bind)
