"""AMQP authorization in RabbitMQ's model: per user and virtual host, three regular expressions.

A permission entry gives one user, in one virtual host, a C{configure}, a
C{write} and a C{read} regular expression.  An operation on an exchange or
queue is allowed when the resource's name matches the expression of the
kind of access it needs (RabbitMQ's access-control table):

- configure: declaring (not passively) and deleting exchanges and queues;
- write: publishing to an exchange, binding to a queue or to a destination
  exchange;
- read: consuming from and getting or purging a queue, binding from an
  exchange (its source side).

As in RabbitMQ, the expressions are searched, not anchored (use C{^...$}),
the empty string matches nothing, and the default exchange is called
C{amq.default}.  A user without an entry for a virtual host may not open
it, unless C{[acl] no_match = "allow"} (the developer default), in which
case the user gets every permission there; the built-in C{[amqp]
default_user} has every permission on C{default_vhost} until an entry says
otherwise (RabbitMQ gives C{guest} the same).  Superusers have every
permission everywhere.

Entries live in the shared metadata store (kind C{amqp_permissions}), so
a cluster shares them; each connection caches its decisions (at most
C{[acl] cache_size}) and drops them when any entry changes.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote

from twisted.logger import Logger

from robustmq.core.security.metadata import IMetadataStore

KIND = "amqp_permissions"
CONFIGURE = "configure"
WRITE = "write"
READ = "read"
KINDS = (CONFIGURE, WRITE, READ)
#: every permission (RabbitMQ's ".*")
FULL = (".*", ".*", ".*")


class AMQPPermissionError(ValueError):
    """A permission entry is malformed (bad regular expression, empty names)."""


def _key(user: str, vhost: str) -> str:
    return f"{quote(vhost, safe='')}/{quote(user, safe='')}"


def _compile(field: str, text: Any) -> re.Pattern[str] | None:
    if not isinstance(text, str):
        raise AMQPPermissionError(f"{field}: a regular expression (a string) is required")
    if text == "":
        return None  # RabbitMQ: the empty string grants nothing
    try:
        return re.compile(text)
    except re.error as e:
        raise AMQPPermissionError(f"{field}: not a valid regular expression: {e}") from None


class Permissions:
    """The three compiled expressions of one user in one virtual host."""

    __slots__ = ("patterns", "texts")

    def __init__(self, configure: str, write: str, read: str) -> None:
        self.texts = (configure, write, read)
        self.patterns = {
            CONFIGURE: _compile("configure", configure),
            WRITE: _compile("write", write),
            READ: _compile("read", read),
        }

    def allows(self, permission: str, name: str) -> bool:
        """Whether C{name} matches the expression of C{permission}."""
        pattern = self.patterns[permission]
        return pattern is not None and pattern.search(name) is not None


_ALL = Permissions(*FULL)


class AMQPPermissions:
    """Every user's permissions per virtual host (see module)."""

    log = Logger()

    def __init__(self, settings: Any, metadata: IMetadataStore, users: Any = None) -> None:
        self.metadata = metadata
        self.users = users
        self.noMatch = settings.acl.no_match == "allow"
        self.defaultUser = settings.amqp.default_user
        self.defaultVhost = settings.amqp.default_vhost
        self.maxEntries = settings.acl.max_rules
        self.cacheSize = settings.acl.cache_size
        self._entries: dict[tuple[str, str], Permissions] = {}
        self.version = 0
        self._reload()
        metadata.watch(KIND, lambda kind, key, value: self._reload())

    def _reload(self) -> None:
        entries = {}
        for key, raw in self.metadata.items(KIND):
            try:
                entries[(raw["user"], raw["vhost"])] = Permissions(
                    raw["configure"], raw["write"], raw["read"]
                )
            except (KeyError, TypeError, AMQPPermissionError) as e:
                self.log.warn("stored AMQP permission {key} ignored: {why}", key=key, why=str(e))
        self._entries = entries
        self.version += 1

    # Management (robustmq ctl amqp permissions, the admin API)

    def set(self, user: str, vhost: str, configure: str, write: str, read: str) -> dict[str, Any]:
        """Give C{user} these permissions in C{vhost} (replacing earlier ones)."""
        if not isinstance(user, str) or not user:
            raise AMQPPermissionError("user: a non-empty string is required")
        if not isinstance(vhost, str) or not vhost:
            raise AMQPPermissionError("vhost: a non-empty string is required")
        Permissions(configure, write, read)  # validates
        key = _key(user, vhost)
        if self.metadata.get(KIND, key) is None and self.metadata.count(KIND) >= self.maxEntries:
            raise AMQPPermissionError(
                f"the permission table is full ([acl] max_rules = {self.maxEntries})"
            )
        record = {
            "user": user,
            "vhost": vhost,
            "configure": configure,
            "write": write,
            "read": read,
            "updated": time.time(),
        }
        self.metadata.put(KIND, key, record)
        self.log.info(
            "AMQP permissions of {user} in vhost {vhost} set: configure={c!r} write={w!r} read={r!r}",
            user=user,
            vhost=vhost,
            c=configure,
            w=write,
            r=read,
        )
        return self._public(record)

    def clear(self, user: str, vhost: str) -> bool:
        """Remove C{user}'s entry for C{vhost}; False if there was none."""
        key = _key(user, vhost)
        if self.metadata.get(KIND, key) is None:
            return False
        self.metadata.delete(KIND, key)
        self.log.info("AMQP permissions of {user} in vhost {vhost} cleared", user=user, vhost=vhost)
        return True

    def list(self, user: str | None = None, vhost: str | None = None) -> list[dict[str, Any]]:
        """Entries, optionally of one user and/or one virtual host, sorted."""
        out = [
            self._public(raw)
            for _, raw in self.metadata.items(KIND)
            if (user is None or raw.get("user") == user)
            and (vhost is None or raw.get("vhost") == vhost)
        ]
        return sorted(out, key=lambda r: (r["vhost"], r["user"]))

    @staticmethod
    def _public(raw: dict[str, Any]) -> dict[str, Any]:
        return {k: raw[k] for k in ("user", "vhost", "configure", "write", "read")}

    # Deciding

    def of(self, user: str, vhost: str, superuser: bool = False) -> Permissions | None:
        """The permissions of C{user} in C{vhost}, or None: no access to the virtual host."""
        if superuser or (self.users is not None and self.users.isSuperuser(user)):
            return _ALL
        found = self._entries.get((user, vhost))
        if found is not None:
            return found
        if user == self.defaultUser and vhost == self.defaultVhost:
            return _ALL
        return _ALL if self.noMatch else None

    def access(self, user: str, vhost: str, superuser: bool = False) -> AMQPAccess | None:
        """One connection's view, or None when C{user} may not open C{vhost}."""
        if self.of(user, vhost, superuser) is None:
            return None
        return AMQPAccess(self, user, vhost, superuser)


class AMQPAccess:
    """One AMQP connection's permissions in its virtual host, with a decision cache."""

    __slots__ = ("table", "user", "vhost", "superuser", "_perms", "_cache", "_version")

    def __init__(self, table: AMQPPermissions, user: str, vhost: str, superuser: bool) -> None:
        self.table = table
        self.user = user
        self.vhost = vhost
        self.superuser = superuser
        self._version = -1
        self._perms: Permissions | None = None
        self._cache: dict[tuple[str, str], bool] = {}

    def allowed(self, permission: str, name: str) -> bool:
        """May the user have C{permission} (configure, write, read) on resource C{name}?

        The default exchange is checked under its name C{amq.default}.
        """
        table = self.table
        if table.version != self._version:
            self._version = table.version
            self._cache.clear()
            self._perms = table.of(self.user, self.vhost, self.superuser)
        key = (permission, name or "amq.default")
        decision = self._cache.get(key)
        if decision is None:
            perms = self._perms
            decision = perms is not None and perms.allows(permission, key[1])
            if table.cacheSize:
                if len(self._cache) >= table.cacheSize:
                    self._cache.clear()
                self._cache[key] = decision
        return decision


__all__ = ["AMQPAccess", "AMQPPermissions", "Permissions", "AMQPPermissionError"]
