"""Certificate reload on SIGHUP.

L{CertificateReloader} is a service that, while running, turns SIGHUP into a
call of every registered C{reload()} (TLS contexts, QUIC configurations).
Each re-reads its files and swaps them in for new connections only, so open
connections are never dropped; a file that cannot be used is logged and the
certificate in use is kept.  The signal handler only schedules the work with
C{reactor.callFromThread}, the one reactor call that is safe there.  A
previous Python-level SIGHUP handler is called too and put back on stop;
twistd's own handlers (SIGINT, SIGTERM, SIGUSR1 for log rotation) are not
touched.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger


class Reloadable(Protocol):
    """Something that re-reads its certificate files."""

    def reload(self) -> None: ...


class CertificateReloader(Service):
    """Reloads registered certificates on SIGHUP (and on L{reloadAll})."""

    log = Logger()
    name = "certificate-reloader"

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.reloadables: list[Reloadable] = []
        self._previous: Any = None
        self._installed = False

    def register(self, reloadable: Reloadable) -> None:
        """Reload C{reloadable} on every SIGHUP from now on."""
        self.reloadables.append(reloadable)

    def reloadAll(self) -> None:
        """Re-read every registered certificate (errors are logged, not raised)."""
        self.log.info(
            "SIGHUP: reloading {count} certificate or rule file(s)", count=len(self.reloadables)
        )
        for reloadable in self.reloadables:
            try:
                reloadable.reload()
            except Exception:
                self.log.failure("reload failed (the previous files stay in use)")

    def _onSignal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reloadAll)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def startService(self) -> None:
        super().startService()
        if not hasattr(signal, "SIGHUP"):
            return
        try:
            self._previous = signal.signal(signal.SIGHUP, self._onSignal)
        except ValueError:
            # Not the main thread (embedded use): no signal, reloadAll() still works.
            return
        self._installed = True

    def stopService(self) -> None:
        super().stopService()
        if self._installed:
            self._installed = False
            previous = self._previous
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)


__all__ = ["CertificateReloader", "Reloadable"]
