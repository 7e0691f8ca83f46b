"""Errors of the placement center.

The ones a remote caller may see subclass L{twisted.spread.pb.Error}, so
Perspective Broker sends them to the caller by name (the caller checks
C{failure.check("robustmq.placement.errors.NotLeaderError")}) instead of as
an opaque remote traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.python import reflect
from twisted.spread import pb


class PlacementError(pb.Error):
    """Base of the errors a placement caller may receive."""


class LoginRefusedError(PlacementError, UnauthorizedLogin):
    """Wrong cluster secret or malformed node id (a PB error, so the caller
    sees it by name and the service does not log it as unexpected)."""


class NotLeaderError(PlacementError):
    """This placement node is not the leader; C{args[0]} is the leader's
    C{"host:port"} (empty when no leader is known yet)."""

    @property
    def leader(self) -> str:
        return str(self.args[0]) if self.args else ""


class PermissionDeniedError(PlacementError):
    """The caller's node id does not own what it tried to change."""


class NotRegisteredError(PlacementError):
    """The caller must C{register} (again) before this call: it never did,
    or it was declared dead since."""


class InvalidRecordError(PlacementError, ValueError):
    """A record's fields are out of their documented domain."""


class LimitError(PlacementError):
    """A configured bound was reached (nodes, pending backend operations)."""


class LeaseNotFoundError(KeyError):
    """The lease expired or was revoked (backend level)."""


class BackendUnavailableError(Exception):
    """The backend could not be reached (etcd down, store closed)."""


def isRemote(error: Any, cls: type[Exception]) -> bool:
    """Whether C{error} (an exception or failure value from a PB call) is a remote C{cls}."""
    if isinstance(error, cls):
        return True
    remoteType = getattr(error, "remoteType", None) or getattr(error, "type", None)
    if isinstance(remoteType, bytes):
        remoteType = remoteType.decode()
    return remoteType == reflect.qual(cls)


__all__ = [
    "isRemote",
    "BackendUnavailableError",
    "InvalidRecordError",
    "LeaseNotFoundError",
    "LimitError",
    "LoginRefusedError",
    "NotLeaderError",
    "NotRegisteredError",
    "PermissionDeniedError",
    "PlacementError",
]
