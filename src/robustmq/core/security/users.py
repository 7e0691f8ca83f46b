"""The built-in user store and its authenticator.

Passwords are hashed with Argon2id (argon2-cffi, salted, memory-hard) and
only the hash is stored.  For MQTT 5 enhanced authentication the store also
keeps SCRAM-SHA-256 keys (salted and iterated, RFC 5802), derived when the
password is set, so SCRAM never needs the password either.  Verifying a
hash takes tens of milliseconds by design, so it runs in the reactor's
thread pool, at most C{[auth] hash_concurrency} at a time.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.core.auth import ALLOW, DENY, IGNORE, Credentials
from robustmq.core.scram import ScramCredentials, deriveCredentials
from robustmq.core.security.metadata import IMetadataStore
from robustmq.interfaces import IAuthenticator, IAuthenticatorPlugin

KIND = "users"

#: SCRAM variants whose keys are kept with each user (SCRAM-SHA-256, SCRAM-SHA-512).
SCRAM_HASHES = ("sha256", "sha512")

#: User names: printable, no whitespace or control characters, 1..256 characters.
_NAME = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")


class UserError(ValueError):
    """A user operation cannot be done (bad name, unknown user, store full)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class UserStore:
    """Users with hashed passwords and a superuser flag, kept in an L{IMetadataStore}."""

    log = Logger()

    def __init__(self, metadata: IMetadataStore, maxUsers: int, concurrency: int = 2) -> None:
        self.metadata = metadata
        self.maxUsers = maxUsers
        self.hasher = PasswordHasher()
        self._semaphore = defer.DeferredSemaphore(concurrency)
        # Compared against when the user is unknown, so timing does not tell.
        self._dummy = self.hasher.hash("not a real password")

    # Management

    def add(self, username: str, password: str, superuser: bool = False) -> dict[str, Any]:
        """Create a user; raises L{UserError} if it exists or the store is full."""
        if not _NAME.match(username or ""):
            raise UserError(f"invalid user name {username!r}")
        if self.metadata.get(KIND, username) is not None:
            raise UserError(f"user {username!r} already exists")
        if self.metadata.count(KIND) >= self.maxUsers:
            raise UserError(f"the user store is full ([auth] max_users = {self.maxUsers})")
        record = self._record(username, password, superuser, time.time())
        self.metadata.put(KIND, username, record)
        self.log.info(
            "user {username} added (superuser={superuser})", username=username, superuser=superuser
        )
        return self.describe(username)

    def update(
        self, username: str, password: str | None = None, superuser: bool | None = None
    ) -> dict[str, Any]:
        """Change a user's password and/or superuser flag."""
        record = self.metadata.get(KIND, username)
        if record is None:
            raise UserError(f"no user {username!r}")
        record = dict(record)
        if password is not None:
            new = self._record(username, password, record["superuser"], record["created"])
            record.update(hash=new["hash"], scram=new["scram"])
        if superuser is not None:
            record["superuser"] = bool(superuser)
        record["updated"] = time.time()
        self.metadata.put(KIND, username, record)
        self.log.info(
            "user {username} updated (password changed={changed})",
            username=username,
            changed=password is not None,
        )
        return self.describe(username)

    def delete(self, username: str) -> bool:
        """Remove a user; False if there was none."""
        if self.metadata.get(KIND, username) is None:
            return False
        self.metadata.delete(KIND, username)
        self.log.info("user {username} deleted", username=username)
        return True

    def describe(self, username: str) -> dict[str, Any]:
        """What operators may see of a user (never the hash)."""
        record = self.metadata.get(KIND, username)
        if record is None:
            raise UserError(f"no user {username!r}")
        return {
            "username": username,
            "superuser": record["superuser"],
            "created": record["created"],
            "updated": record.get("updated", record["created"]),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every user, sorted by name."""
        return [self.describe(name) for name, _ in sorted(self.metadata.items(KIND))]

    def __contains__(self, username: object) -> bool:
        return isinstance(username, str) and self.metadata.get(KIND, username) is not None

    def _record(
        self, username: str, password: str, superuser: bool, created: float
    ) -> dict[str, Any]:
        if not isinstance(password, str) or not password:
            raise UserError("a password is required")
        scram = {}
        for hashName in SCRAM_HASHES:
            keys = deriveCredentials(password, hashName=hashName)
            scram[hashName] = {
                "salt": _b64(keys.salt),
                "iterations": keys.iterations,
                "stored_key": _b64(keys.storedKey),
                "server_key": _b64(keys.serverKey),
            }
        return {
            "hash": self.hasher.hash(password),
            "scram": scram,
            "superuser": bool(superuser),
            "created": created,
        }

    # Checking

    def isSuperuser(self, username: str | None) -> bool:
        """True for a stored superuser."""
        record = self.metadata.get(KIND, username) if username else None
        return bool(record and record["superuser"])

    async def verify(self, username: str, password: bytes) -> bool | None:
        """True if the password is right, False if wrong, None if there is no such user."""
        record = self.metadata.get(KIND, username)
        hashed = record.get("hash") if record is not None else None
        stored = hashed or self._dummy
        ok = await self._semaphore.run(threads.deferToThread, self._check, stored, password)
        if record is None:
            return None
        return ok and hashed is not None  # a SCRAM-only user has no password

    def _check(self, stored: str, password: bytes) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def setScram(
        self,
        username: str,
        hashName: str,
        salt: bytes,
        iterations: int,
        storedKey: bytes,
        serverKey: bytes,
    ) -> None:
        """Set a user's SCRAM keys for one hash, creating a SCRAM-only user if needed.

        Kafka's AlterUserScramCredentials (KIP-554) sends salted keys, never a
        password: a user created this way has no password hash, so password
        checks (MQTT CONNECT, SASL PLAIN) refuse it until a password is set.
        """
        if not _NAME.match(username or ""):
            raise UserError(f"invalid user name {username!r}")
        if hashName not in SCRAM_HASHES:
            raise UserError(f"unknown SCRAM hash {hashName!r}")
        record = self.metadata.get(KIND, username)
        now = time.time()
        if record is None:
            if self.metadata.count(KIND) >= self.maxUsers:
                raise UserError(f"the user store is full ([auth] max_users = {self.maxUsers})")
            record = {"hash": None, "scram": {}, "superuser": False, "created": now}
        record = dict(record)
        record["scram"] = dict(record.get("scram", {}))
        record["scram"][hashName] = {
            "salt": _b64(salt),
            "iterations": int(iterations),
            "stored_key": _b64(storedKey),
            "server_key": _b64(serverKey),
        }
        record["updated"] = now
        self.metadata.put(KIND, username, record)
        self.log.info("user {username}: {hash} SCRAM keys set", username=username, hash=hashName)

    def deleteScram(self, username: str, hashName: str) -> bool:
        """Remove a user's SCRAM keys for one hash; False if it had none.

        A SCRAM-only user (no password) left without any keys is removed.
        """
        record = self.metadata.get(KIND, username)
        if record is None or hashName not in record.get("scram", {}):
            return False
        record = dict(record)
        record["scram"] = {k: v for k, v in record["scram"].items() if k != hashName}
        if not record["scram"] and record.get("hash") is None:
            self.metadata.delete(KIND, username)
        else:
            record["updated"] = time.time()
            self.metadata.put(KIND, username, record)
        self.log.info(
            "user {username}: {hash} SCRAM keys removed", username=username, hash=hashName
        )
        return True

    def scramInfo(self) -> dict[str, dict[str, int]]:
        """User name -> {hash name: iterations} for every user with SCRAM keys."""
        out: dict[str, dict[str, int]] = {}
        for name, record in self.metadata.items(KIND):
            keys = record.get("scram", {})
            if keys:
                out[name] = {h: int(k["iterations"]) for h, k in keys.items()}
        return out

    def scramCredentials(self, username: str, hashName: str = "sha256") -> ScramCredentials | None:
        """A user's SCRAM keys for C{hashName}, for enhanced authentication and SASL."""
        record = self.metadata.get(KIND, username)
        s = record.get("scram", {}).get(hashName) if record is not None else None
        if s is None:
            return None
        return ScramCredentials(
            base64.b64decode(s["salt"]),
            int(s["iterations"]),
            base64.b64decode(s["stored_key"]),
            base64.b64decode(s["server_key"]),
            hashName,
        )


@implementer(IAuthenticator)
class UsersAuthenticator:
    """Checks username + password against the user store.

    A known user with the right password: ALLOW (and a stored superuser is
    marked so for authorization); a known user with a wrong or missing
    password: DENY; an unknown user or no username: IGNORE.
    """

    name = "users"
    log = Logger()

    def __init__(self, users: UserStore) -> None:
        self.users = users

    async def authenticate(self, credentials: Credentials) -> str:
        username = credentials.username
        if not username or username not in self.users:
            return IGNORE
        if credentials.password is None:
            return DENY
        ok = await self.users.verify(username, credentials.password)
        if ok is None:
            return IGNORE
        if not ok:
            self.log.info(
                "wrong password for user {username} (client {clientId})",
                username=username,
                clientId=credentials.clientId,
            )
            return DENY
        if self.users.isSuperuser(username):
            credentials.attributes["superuser"] = True
        return ALLOW


@implementer(IPlugin, IAuthenticatorPlugin)
class UsersAuthenticatorPlugin:
    """Plugin entry for L{UsersAuthenticator} (C{"users"} in C{[auth] chain})."""

    name = "users"

    def build(self, settings: Any, security: Any = None) -> IAuthenticator:
        """An authenticator over the node's user store (an empty one without C{security})."""
        if security is None:
            from robustmq.core.security.metadata import MemoryMetadataStore

            return UsersAuthenticator(UserStore(MemoryMetadataStore(), settings.auth.max_users))
        return UsersAuthenticator(security.users)


usersPlugin = UsersAuthenticatorPlugin()

__all__ = ["UserError", "UserStore", "UsersAuthenticator", "usersPlugin"]
