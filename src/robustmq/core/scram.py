"""SCRAM-SHA-256 (RFC 5802, RFC 7677) for enhanced authentication.

Protocol-neutral: MQTT 5 AUTH exchanges use it now; Kafka SASL can too.
The server keeps only salted, iterated keys (StoredKey, ServerKey), never
the password.
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


class ScramError(Exception):
    """The exchange failed (bad message, unknown user, wrong proof)."""


@attrs.frozen
class ScramCredentials:
    """What the server stores for one user."""

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def deriveCredentials(
    password: str, salt: bytes | None = None, iterations: int = 4096
) -> ScramCredentials:
    """Salt and iterate C{password} into the keys the server stores."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    clientKey = _hmac(salted, b"Client Key")
    return ScramCredentials(
        salt, iterations, hashlib.sha256(clientKey).digest(), _hmac(salted, b"Server Key")
    )


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
    """The server side of one SCRAM-SHA-256 exchange (two round trips)."""

    name = "SCRAM-SHA-256"

    def __init__(self, lookup: Callable[[str], ScramCredentials | None]) -> None:
        self._lookup = lookup
        self._state = 0
        self._clientFirstBare = ""
        self._serverFirst = ""
        self._nonce = ""
        self._credentials: ScramCredentials | None = None
        self.username: str | None = None

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
        credentials = self._lookup(username)
        if credentials is None:
            # Answer as if the user existed, and fail at the proof.
            credentials = deriveCredentials(os.urandom(8).hex())
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
        proof = base64.b64decode(proofPart)
        clientKey = _xor(proof, _hmac(credentials.storedKey, authMessage))
        self._state = 2
        if self.username is None or not hmac.compare_digest(
            hashlib.sha256(clientKey).digest(), credentials.storedKey
        ):
            raise ScramError("invalid proof")
        signature = _hmac(credentials.serverKey, authMessage)
        return b"v=" + base64.b64encode(signature)


class ScramClient:
    """The client side, for tests, tools and bridges."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
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
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, int(attrs_["i"]))
        clientKey = _hmac(salted, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        withoutProof = f"c=biws,r={attrs_['r']}"
        authMessage = f"{self._bare},{text},{withoutProof}".encode()
        proof = _xor(clientKey, _hmac(storedKey, authMessage))
        self._serverSignature = _hmac(_hmac(salted, b"Server Key"), authMessage)
        return f"{withoutProof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, serverFinal: bytes) -> bool:
        """Check the server's signature (mutual authentication)."""
        return serverFinal == b"v=" + base64.b64encode(self._serverSignature)


@implementer(IPlugin, IAuthMechanismPlugin)
class ScramSha256Plugin:
    """Builds SCRAM-SHA-256 exchanges over the users in C{[[mqtt.scram_users]]}."""

    name = "SCRAM-SHA-256"

    def build(self, settings: Any) -> Callable[[], IAuthMechanism]:
        """A factory of per-connection exchanges."""
        table = {u.username: deriveCredentials(u.password) for u in settings.mqtt.scram_users}
        return lambda: ScramServer(table.get)


scramSha256Plugin = ScramSha256Plugin()
