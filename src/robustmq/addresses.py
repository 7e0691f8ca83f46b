"""Stream addresses between a node's own processes and between nodes: C{host:port} or C{unix:PATH}.

Brokers reach the placement center and each other over TCP (C{host:port});
the worker processes of one node do the same over Unix domain sockets
(C{unix:PATH}, docs/workers.md), which cost less per message and need no
port.  The placement client, the broker links and the admin service build
their endpoints here.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
)

#: Prefix of a Unix domain socket address (C{unix:/run/robustmq/placement.sock}).
UNIX = "unix:"


def isUnix(address: str) -> bool:
    """Whether C{address} names a Unix domain socket (C{unix:PATH})."""
    return address.startswith(UNIX)


def clientEndpoint(reactor: Any, address: str) -> tuple[Any, str]:
    """A stream client endpoint for C{host:port} or C{unix:PATH}, and the host part
    (empty for a Unix socket: no TLS there, the socket file's mode guards it)."""
    if isUnix(address):
        return UNIXClientEndpoint(reactor, address[len(UNIX) :]), ""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return HostnameEndpoint(reactor, host, int(port)), host


def unixServerEndpoint(reactor: Any, address: str) -> Any:
    """A listening endpoint for C{unix:PATH}, readable and writable by this user only.

    A socket file left behind by a process that died is removed first (the
    caller owns the directory; nothing else listens there).
    """
    path = address[len(UNIX) :]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return UNIXServerEndpoint(reactor, path, mode=0o600)


__all__ = ["UNIX", "clientEndpoint", "isUnix", "unixServerEndpoint"]
