"""SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) for enhanced authentication.

Protocol-neutral: MQTT 5 AUTH exchanges and Kafka SASL (KIP-84) use it.
The server keeps only salted, iterated keys (StoredKey, ServerKey), never
the password.  Every function and class takes the hash by its C{hashlib}
name (C{"sha256"}, the default, or C{"sha512"}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IAuthMechanism, IAuthMechanismPlugin

CONTINUE = "continue"
SUCCESS = "success"
FAILURE = "failure"


#: SASL mechanism name -> hashlib name
MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class ScramError(Exception):
    """The exchange failed (bad message, unknown user, wrong proof)."""


@attrs.frozen
class ScramCredentials:
    """What the server stores for one user."""

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes
    hashName: str = "sha256"


def _hmac(key: bytes, msg: bytes, hashName: str = "sha256") -> bytes:
    return hmac.new(key, msg, hashName).digest()


def _digest(data: bytes, hashName: str) -> bytes:
    return hashlib.new(hashName, data).digest()


def deriveCredentials(
    password: str, salt: bytes | None = None, iterations: int = 4096, hashName: str = "sha256"
) -> ScramCredentials:
    """Salt and iterate C{password} into the keys the server stores."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac(hashName, password.encode("utf-8"), salt, iterations)
    clientKey = _hmac(salted, b"Client Key", hashName)
    return ScramCredentials(
        salt,
        iterations,
        _digest(clientKey, hashName),
        _hmac(salted, b"Server Key", hashName),
        hashName,
    )


def verifyPassword(credentials: ScramCredentials, password: bytes) -> bool:
    """Does C{password} match the stored keys?  (For SASL PLAIN against SCRAM users.)"""
    h = credentials.hashName
    salted = hashlib.pbkdf2_hmac(h, password, credentials.salt, credentials.iterations)
    stored = _digest(_hmac(salted, b"Client Key", h), h)
    return hmac.compare_digest(stored, credentials.storedKey)


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError(f"malformed SCRAM attribute {part!r}")
        out[key] = value
    return out


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@implementer(IAuthMechanism)
class ScramServer:
    """The server side of one SCRAM exchange (two round trips).

    C{lookup} answers a user's credentials, derived with the same hash as
    this exchange's (C{hashName}), or None for an unknown user.
    """

    def __init__(
        self, lookup: Callable[[str], ScramCredentials | None], hashName: str = "sha256"
    ) -> None:
        self._lookup = lookup
        self.hashName = hashName
        self.name = f"SCRAM-{hashName.upper().replace('SHA', 'SHA-')}"
        self._state = 0
        self._clientFirstBare = ""
        self._serverFirst = ""
        self._nonce = ""
        self._credentials: ScramCredentials | None = None
        self.username: str | None = None
        #: the user name the client gave, known or not (for log lines)
        self.claimed: str | None = None

    def step(self, data: bytes) -> tuple[str, bytes]:
        """Consume the client's message; return (CONTINUE|SUCCESS|FAILURE, data to send)."""
        try:
            if self._state == 0:
                return CONTINUE, self._first(data)
            if self._state == 1:
                return SUCCESS, self._final(data)
            raise ScramError("exchange already finished")
        except (ScramError, UnicodeDecodeError, ValueError) as e:
            self._state = 2
            return FAILURE, f"e={e}".encode()

    def _first(self, data: bytes) -> bytes:
        message = data.decode("utf-8")
        gs2, sep, bare = message.partition(",,")
        if not sep or gs2 not in ("n", "y"):
            raise ScramError("channel binding is not supported")
        attrs_ = _attributes(bare)
        if "n" not in attrs_ or "r" not in attrs_:
            raise ScramError("client-first-message needs n= and r=")
        username = attrs_["n"].replace("=2C", ",").replace("=3D", "=")
        self.claimed = username
        credentials = self._lookup(username)
        if credentials is None:
            # Answer as if the user existed, and fail at the proof.
            credentials = deriveCredentials(os.urandom(8).hex(), hashName=self.hashName)
            username = ""
        self.username = username or None
        self._credentials = credentials
        self._clientFirstBare = bare
        self._nonce = attrs_["r"] + base64.b64encode(os.urandom(18)).decode()
        self._serverFirst = (
            f"r={self._nonce},s={base64.b64encode(credentials.salt).decode()},"
            f"i={credentials.iterations}"
        )
        self._state = 1
        return self._serverFirst.encode()

    def _final(self, data: bytes) -> bytes:
        message = data.decode("utf-8")
        withoutProof, sep, proofPart = message.rpartition(",p=")
        if not sep:
            raise ScramError("client-final-message needs p=")
        attrs_ = _attributes(withoutProof)
        if attrs_.get("r") != self._nonce:
            raise ScramError("nonce mismatch")
        credentials = self._credentials
        assert credentials is not None
        authMessage = f"{self._clientFirstBare},{self._serverFirst},{withoutProof}".encode()
        h = self.hashName
        proof = base64.b64decode(proofPart)
        self._state = 2
        if len(proof) != len(credentials.storedKey):
            raise ScramError("invalid proof")
        clientKey = _xor(proof, _hmac(credentials.storedKey, authMessage, h))
        if self.username is None or not hmac.compare_digest(
            _digest(clientKey, h), credentials.storedKey
        ):
            raise ScramError("invalid proof")
        signature = _hmac(credentials.serverKey, authMessage, h)
        return b"v=" + base64.b64encode(signature)


class ScramClient:
    """The client side, for tests, tools and bridges."""

    def __init__(self, username: str, password: str, hashName: str = "sha256") -> None:
        self.username = username
        self.password = password
        self.hashName = hashName
        self._nonce = base64.b64encode(os.urandom(18)).decode()
        self._bare = f"n={username.replace('=', '=3D').replace(',', '=2C')},r={self._nonce}"
        self._serverSignature = b""

    def first(self) -> bytes:
        """The client-first-message."""
        return f"n,,{self._bare}".encode()

    def final(self, serverFirst: bytes) -> bytes:
        """The client-final-message for the server-first-message."""
        text = serverFirst.decode()
        attrs_ = _attributes(text)
        if not attrs_["r"].startswith(self._nonce):
            raise ScramError("server nonce does not extend ours")
        salt = base64.b64decode(attrs_["s"])
        h = self.hashName
        salted = hashlib.pbkdf2_hmac(h, self.password.encode(), salt, int(attrs_["i"]))
        clientKey = _hmac(salted, b"Client Key", h)
        storedKey = _digest(clientKey, h)
        withoutProof = f"c=biws,r={attrs_['r']}"
        authMessage = f"{self._bare},{text},{withoutProof}".encode()
        proof = _xor(clientKey, _hmac(storedKey, authMessage, h))
        self._serverSignature = _hmac(_hmac(salted, b"Server Key", h), authMessage, h)
        return f"{withoutProof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, serverFinal: bytes) -> bool:
        """Check the server's signature (mutual authentication)."""
        return serverFinal == b"v=" + base64.b64encode(self._serverSignature)


class ScramMechanism:
    """A factory of per-connection SCRAM exchanges over one table of users.

    Calling it makes a fresh L{ScramServer}; L{lookup} answers a user's
    stored credentials (so SASL PLAIN can check a password against the
    same users).
    """

    def __init__(
        self, table: dict[str, ScramCredentials], hashName: str, users: Any = None
    ) -> None:
        self._table = table
        self.hashName = hashName
        #: the node's user store (L{robustmq.core.security.users.UserStore}), asked first
        self._users = users

    def __call__(self) -> ScramServer:
        return ScramServer(self.lookup, self.hashName)

    def lookup(self, username: str) -> ScramCredentials | None:
        """The stored credentials of C{username}, or None."""
        if self._users is not None:
            found = self._users.scramCredentials(username, self.hashName)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return self._table.get(username)


@implementer(IPlugin, IAuthMechanismPlugin)
class ScramPlugin:
    """Builds SCRAM exchanges over the node's user store.

    The user store (C{robustmq ctl user add}) keeps SCRAM keys next to each
    password hash.  C{[[mqtt.scram_users]]}, the older stop-gap, still
    answers for names the store does not have.  MQTT 5 enhanced
    authentication and Kafka SASL both use it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.hashName = MECHANISMS[name]

    def build(self, settings: Any, security: Any = None) -> ScramMechanism:
        """A factory of per-connection exchanges (see L{ScramMechanism})."""
        table = {
            u.username: deriveCredentials(u.password, hashName=self.hashName)
            for u in settings.mqtt.scram_users
        }
        return ScramMechanism(table, self.hashName, getattr(security, "users", None))


scramSha256Plugin = ScramPlugin("SCRAM-SHA-256")
scramSha512Plugin = ScramPlugin("SCRAM-SHA-512")
