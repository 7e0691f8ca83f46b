"""The node's listening sockets, bound once by the node and adopted by its workers.

For a listener every worker serves (MQTT), the node binds one socket per
worker on the same address with C{SO_REUSEPORT} and hands socket I{i} to
worker I{i}; the kernel spreads new connections (TCP) and flows (UDP, for
QUIC) over the group by a hash of their addresses.  The node keeps its copy
of every socket open for as long as it runs, so:

- the group never changes while a worker restarts: connections that hash
  to the restarting worker wait in its socket's accept queue (up to the
  listener's C{backlog}) for the new process instead of being refused, and
  the flows of the other workers keep their worker (a QUIC connection's
  datagrams keep reaching the process that holds its state);
- the balance is the kernel's, by address hash, not by which process
  happens to wake first: each worker gets its share of connections and of
  file descriptors.

A listener one worker serves (L{robustmq.workers._context.servedBy}) gets
one ordinary socket, handed to that worker.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from robustmq.config import ListenerSettings, Settings
from robustmq.workers._context import servedBy


def _bind(listener: ListenerSettings, port: int, shared: bool) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(listener.bind).version == 6 else socket.AF_INET
    udp = listener.transport == "quic"
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listener.bind, port))
        if not udp:
            sock.listen(listener.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SharedSockets(Service):
    """Binds every listener's sockets at start (a failure stops the node) and closes
    them at stop, after the workers have stopped."""

    log = Logger()

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        #: listener index -> one socket per worker (shared) or a single socket
        self.sockets: dict[int, list[socket.socket]] = {}
        self.setName("sockets")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.sockets:
            self.bind()

    def startService(self) -> None:
        if not self.sockets:
            self.bind()
        super().startService()

    def bind(self) -> None:
        """Bind every listener; on a failure close what was bound and raise."""
        try:
            for i, listener in enumerate(self.settings.listeners):
                shared = servedBy(listener) is None
                first = _bind(listener, listener.port, shared)
                group = [first]
                self.sockets[i] = group
                # A listener on port 0 gets a port from the first bind; the others join it.
                port = first.getsockname()[1]
                for _ in range(self.workers - 1 if shared else 0):
                    group.append(_bind(listener, port, True))
                self.log.info(
                    "listening for {protocol} over {transport} on {host}:{port} ({how})",
                    protocol=listener.protocol,
                    transport=listener.transport,
                    host=listener.bind,
                    port=port,
                    how=f"{len(group)} sockets, one per worker"
                    if shared
                    else f"worker {servedBy(listener)} only",
                )
        except OSError as e:
            self.close()
            raise CannotListenError(listener.bind, listener.port, e) from None

    def fdsFor(self, worker: int) -> dict[int, int]:
        """Listener index -> this node's file descriptor of the socket worker C{worker} adopts."""
        out: dict[int, int] = {}
        for i, group in self.sockets.items():
            listener = self.settings.listeners[i]
            home = servedBy(listener)
            if home is None:
                out[i] = group[worker].fileno()
            elif home == worker:
                out[i] = group[0].fileno()
        return out

    def port(self, index: int) -> int:
        """The port listener C{index} is bound to."""
        return int(self.sockets[index][0].getsockname()[1])

    def close(self) -> None:
        for group in self.sockets.values():
            for sock in group:
                sock.close()
        self.sockets.clear()

    def stopService(self) -> Any:
        super().stopService()
        self.close()


__all__ = ["SharedSockets"]
