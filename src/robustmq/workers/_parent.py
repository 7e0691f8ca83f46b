"""A worker stops when its node is gone.

The node keeps the write end of each worker's standard input open and never
writes to it; when the node's process ends for any reason (SIGKILL
included) the worker reads end-of-file there and stops cleanly, instead of
serving on as an orphan that nobody supervises.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.logger import Logger


class _StdinReader:
    """An C{IReadDescriptor} over file descriptor 0 that reports end-of-file."""

    def __init__(self, gone: Any) -> None:
        self.gone = gone

    def fileno(self) -> int:
        return 0

    def doRead(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.gone()

    def connectionLost(self, reason: Any) -> None:
        # epoll reports the closed pipe as a hang-up, which the reactor turns into this.
        self.gone()

    def logPrefix(self) -> str:
        return "node"


class ParentWatch(Service):
    """Stops the reactor when the node's end of standard input closes."""

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.reader = _StdinReader(self._gone)
        self._done = False

    def startService(self) -> None:
        super().startService()
        fdesc.setNonBlocking(0)
        self.reactor.addReader(self.reader)

    def _gone(self) -> None:
        if self._done:
            return
        self.reactor.removeReader(self.reader)
        self._done = True
        self.log.warn("the node process is gone; this worker stops")
        self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if not self._done:
            self.reactor.removeReader(self.reader)


__all__ = ["ParentWatch"]
