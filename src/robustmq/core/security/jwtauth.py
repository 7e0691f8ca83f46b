"""JWT authentication (PyJWT): HS256 with a secret, RS256/ES256 with a public key or JWKS file.

The token comes in the CONNECT password (or the username, with C{[auth]
jwt_from = "username"}).  A token that verifies is ALLOWed; a bad
signature, a wrong algorithm, an expired token (C{exp} is required unless
C{jwt_require_exp = false}) or a C{username}/C{clientid} claim that differs
from what the client sent is DENYed; a password that is not a JWT at all is
left to the next authenticator (IGNORE).

Claims may carry authorization: C{"superuser": true}, and C{"acl"}, a list
of rules as in L{robustmq.core.security.acl.Rule} (C{permission},
C{action}, C{topics}); they are checked before the node's rules.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.core.auth import ALLOW, DENY, IGNORE, Credentials
from robustmq.core.security.acl import Rule, RuleError
from robustmq.interfaces import IAuthenticator, IAuthenticatorPlugin

_ASYMMETRIC = ("RS256", "ES256")


def _looksLikeJWT(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


@implementer(IAuthenticator)
class JWTAuthenticator:
    """Verifies JWTs with one secret or one set of public keys, fixed at start."""

    name = "jwt"
    log = Logger()

    def __init__(self, settings: Any) -> None:
        self.source = settings.jwt_from
        self.leeway = settings.jwt_leeway
        self.requireExp = settings.jwt_require_exp
        #: (algorithms, key) pairs to try; a JWKS file contributes one per key id
        self.secret: bytes | None = settings.jwt_secret.encode() if settings.jwt_secret else None
        self.publicKey: Any = None
        self.jwks: dict[str | None, Any] = {}
        if settings.jwt_public_key_file:
            with open(settings.jwt_public_key_file, "rb") as f:
                pem = f.read()
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self.publicKey = load_pem_public_key(pem)
        if settings.jwt_jwks_file:
            with open(settings.jwt_jwks_file, "rb") as f:
                keySet = jwt.PyJWKSet.from_dict(json.load(f))
            for key in keySet.keys:
                self.jwks[key.key_id] = key

    def _key(self, header: dict[str, Any]) -> tuple[Any, list[str]] | None:
        alg = header.get("alg")
        if alg == "HS256" and self.secret is not None:
            return self.secret, ["HS256"]
        if alg in _ASYMMETRIC:
            if self.jwks:
                key = self.jwks.get(header.get("kid"))
                if key is None and len(self.jwks) == 1 and header.get("kid") is None:
                    key = next(iter(self.jwks.values()))
                if key is not None:
                    return key.key, [alg]
            if self.publicKey is not None:
                return self.publicKey, [alg]
        return None

    def authenticate(self, credentials: Credentials) -> str:
        if self.source == "password":
            raw = credentials.password
            token = raw.decode("utf-8", "replace") if raw is not None else ""
        else:
            token = credentials.username or ""
        if not _looksLikeJWT(token):
            return IGNORE
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return self._deny(credentials, "malformed token")
        found = self._key(header)
        if found is None:
            return self._deny(credentials, f"no key for algorithm {header.get('alg')!r}")
        key, algorithms = found
        options: Any = {"require": ["exp"]} if self.requireExp else {}
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, leeway=self.leeway, options=options
            )
        except jwt.ExpiredSignatureError:
            return self._deny(credentials, "token expired")
        except jwt.InvalidTokenError as e:
            return self._deny(credentials, f"invalid token: {type(e).__name__}")
        for claim, value in (
            ("username", credentials.username),
            ("clientid", credentials.clientId),
        ):
            if claim in claims and self.source == "password" and claims[claim] != value:
                return self._deny(credentials, f"claim {claim!r} does not match")
        rules = claims.get("acl")
        if rules is not None:
            try:
                credentials.attributes["acl"] = [
                    Rule.fromDict(raw, f"jwt-{i}") for i, raw in enumerate(rules)
                ]
            except (RuleError, TypeError) as e:
                return self._deny(credentials, f"bad acl claim: {e}")
        if claims.get("superuser") is True:
            credentials.attributes["superuser"] = True
        if isinstance(claims.get("exp"), int | float):
            # The connection ends when the token does (see the MQTT protocol).
            credentials.attributes["expires_at"] = float(claims["exp"]) + self.leeway
        return ALLOW

    def _deny(self, credentials: Credentials, why: str) -> str:
        self.log.info(
            "JWT of client {clientId} refused: {why}", clientId=credentials.clientId, why=why
        )
        return DENY


@implementer(IPlugin, IAuthenticatorPlugin)
class JWTPlugin:
    """Plugin entry for L{JWTAuthenticator} (C{"jwt"} in C{[auth] chain})."""

    name = "jwt"

    def build(self, settings: Any, security: Any = None) -> IAuthenticator:
        """Configured from the C{jwt_*} keys of C{[auth]}."""
        from robustmq.config import ConfigError

        try:
            return JWTAuthenticator(settings.auth)
        except (OSError, ValueError, jwt.PyJWTError) as e:
            key = "jwt_jwks_file" if settings.auth.jwt_jwks_file else "jwt_public_key_file"
            raise ConfigError(f"auth.{key}: cannot load the key: {e}") from None


jwtPlugin = JWTPlugin()

__all__ = ["JWTAuthenticator", "jwtPlugin"]
