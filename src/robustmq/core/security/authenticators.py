"""Small authenticators: anonymous access and client-certificate identity."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.core.auth import ALLOW, IGNORE, Credentials
from robustmq.interfaces import IAuthenticator, IAuthenticatorPlugin


def isLoopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


@implementer(IAuthenticator)
class AnonymousAuthenticator:
    """Lets in clients that present no password, as C{[auth] allow_anonymous} says.

    C{"on"}: from anywhere; C{"loopback"}: only from this machine; C{"off"}:
    never (IGNORE, so the chain's default, deny, applies).  Put it last in the
    chain: a client that sends a password is for the other sources to judge.

    With C{unknownAsAnonymous} (C{[auth] unknown_users_as_anonymous}) an MQTT
    client whose user name and password no earlier authenticator decided on
    (an unknown user: a known user with a wrong password is denied before it
    gets here) is let in as an anonymous client wherever an anonymous one
    would be, as mosquitto's default local mode does.  Its user name then
    carries no rights: C{attributes["anonymous"]} tells the protocol to drop it.
    """

    name = "anonymous"

    def __init__(self, mode: str, unknownAsAnonymous: bool = False) -> None:
        self.mode = mode
        self.unknownAsAnonymous = unknownAsAnonymous

    def authenticate(self, credentials: Credentials) -> str:
        if self.mode == "off":
            return IGNORE
        unknown = credentials.password is not None
        if unknown and not (self.unknownAsAnonymous and credentials.protocol == "mqtt"):
            return IGNORE
        if self.mode == "on" or isLoopback(credentials.peerHost):
            if unknown:
                credentials.attributes["anonymous"] = True
            return ALLOW
        return IGNORE


@implementer(IAuthenticator)
class CertificateAuthenticator:
    """ALLOW a client whose verified client certificate names it (mutual TLS).

    The listener verifies the chain (C{verify_peer}) and maps the certificate
    to a name (C{peer_cert_as_username}); that name becomes the username.
    Without such a certificate: IGNORE.
    """

    name = "cert"

    def authenticate(self, credentials: Credentials) -> str:
        return ALLOW if credentials.certificateUsername else IGNORE


@implementer(IPlugin, IAuthenticatorPlugin)
class AnonymousPlugin:
    """Plugin entry for L{AnonymousAuthenticator}."""

    name = "anonymous"

    def build(self, settings: Any, security: Any = None) -> IAuthenticator:
        """Configured from C{[auth] allow_anonymous} and C{unknown_users_as_anonymous}."""
        auth = settings.auth
        return AnonymousAuthenticator(auth.allow_anonymous, auth.unknown_users_as_anonymous)


@implementer(IPlugin, IAuthenticatorPlugin)
class CertificatePlugin:
    """Plugin entry for L{CertificateAuthenticator}."""

    name = "cert"

    def build(self, settings: Any, security: Any = None) -> IAuthenticator:
        """A certificate-identity authenticator."""
        return CertificateAuthenticator()


anonymousPlugin = AnonymousPlugin()
certPlugin = CertificatePlugin()

__all__ = [
    "AnonymousAuthenticator",
    "CertificateAuthenticator",
    "anonymousPlugin",
    "certPlugin",
    "isLoopback",
]
