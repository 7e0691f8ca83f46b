"""Start-up failures a user can fix, reported as one line instead of a traceback.

A listener (or the admin API) that cannot bind its port raises L{ListenError}
from C{privilegedStartService}; C{robustmq start} prints its message alone
and exits with status 1, as it does for a bad configuration.
"""

from __future__ import annotations

import errno


class ListenError(Exception):
    """A port could not be bound; the message names the listener, the address and the fix."""


def listenFailure(what: str, bind: str, port: int, error: BaseException, fix: str) -> ListenError:
    """The L{ListenError} for C{what} (e.g. C{"listener mqtt/tcp:1883"}) failing to bind.

    @param error: what the endpoint failed with (a C{CannotListenError}, whose
        C{socketError} is the C{OSError}, or the C{OSError} itself).
    @param fix: how to give this listener another port (the config key).
    """
    cause = getattr(error, "socketError", error)
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        why = (
            f"port {port} is already in use (another broker, or `make run`, running?): "
            f"stop what holds it, or {fix}"
        )
    elif code == errno.EACCES:
        why = (
            f"permission denied for port {port} (ports below 1024 need root or "
            f"CAP_NET_BIND_SERVICE): {fix}"
        )
    elif code == errno.EADDRNOTAVAIL:
        why = f"{bind} is not an address of this host: set `bind` to one that is"
    else:
        why = f"{getattr(cause, 'strerror', None) or cause}: {fix}"
    return ListenError(f"{what} cannot listen on {bind}:{port}: {why}")


__all__ = ["ListenError", "listenFailure"]
