"""Authentication: credentials, decisions, and the chain of authenticators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IAuthenticator, IAuthenticatorPlugin

ALLOW = "allow"
DENY = "deny"
IGNORE = "ignore"


@attrs.frozen
class Credentials:
    """What a connecting client presented, whatever its protocol."""

    protocol: str
    clientId: str
    username: str | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    peerHost: str | None = None
    listener: str | None = None
    #: the name a verified client certificate stands for (mutual TLS), if any
    certificateUsername: str | None = None
    #: what authenticators learned for authorization (C{"superuser"}, C{"acl"} rules)
    attributes: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


class AuthChain:
    """Tries authenticators in order; the first ALLOW or DENY wins.

    When every authenticator answers IGNORE the chain's default applies.
    """

    log = Logger()

    def __init__(self, authenticators: Sequence[IAuthenticator], default: str = DENY) -> None:
        self.authenticators = list(authenticators)
        self.default = default

    async def authenticate(self, credentials: Credentials) -> bool:
        """True when the client may connect."""
        for authenticator in self.authenticators:
            decision = await defer.maybeDeferred(authenticator.authenticate, credentials)
            if decision == ALLOW:
                return True
            if decision == DENY:
                return False
        return self.default == ALLOW


@implementer(IAuthenticator)
class AllowAll:
    """Lets every client in (tests and trusted networks only; not in the default chain)."""

    name = "allow_all"

    def authenticate(self, credentials: Credentials) -> str:
        """Always ALLOW."""
        return ALLOW


@implementer(IPlugin, IAuthenticatorPlugin)
class AllowAllPlugin:
    """Plugin entry for L{AllowAll}."""

    name = "allow_all"

    def build(self, settings: object, security: object = None) -> IAuthenticator:
        """A fresh L{AllowAll}."""
        return AllowAll()


allowAllPlugin = AllowAllPlugin()
