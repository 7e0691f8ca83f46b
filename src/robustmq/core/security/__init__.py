"""Security: who may connect, what they may touch, and how fast.

L{Security} gathers the node's user store, ACL, bans, flapping detector and
rate limits over one L{IMetadataStore} (embedded for now; the placement
center's later).  Protocols ask it three things: may this client connect at
all (L{Security.admit}: bans and flapping), what may it do once
authenticated (L{Security.access} → L{ClientAccess}), and how fast may it
publish (L{Security.publishLimiter}).  Operators manage it through the
admin API (C{robustmq ctl user|acl|ban}) or directly in Python, e.g.
C{broker.security.users.add("alice", "secret")}.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from robustmq.core.security.acl import ACL, ClientAccess, Rule, RuleError, loadRuleFile
from robustmq.core.security.amqpperms import AMQPAccess, AMQPPermissionError, AMQPPermissions
from robustmq.core.security.authenticators import isLoopback
from robustmq.core.security.bans import BanError, Bans, FlappingDetector
from robustmq.core.security.kafkaacl import KafkaAccess, KafkaACL, KafkaAclError, principalOf
from robustmq.core.security.limits import PublishLimiter, TokenBucket
from robustmq.core.security.metadata import (
    EmbeddedMetadataStore,
    IMetadataStore,
    MemoryMetadataStore,
)
from robustmq.core.security.users import UserError, UserStore


class Security:
    """The node's authentication data, authorization and overload protection."""

    log = Logger()

    def __init__(self, settings: Any, reactor: Any, metadata: IMetadataStore) -> None:
        self.settings = settings
        self.reactor = reactor
        self.metadata = metadata
        self.limits = settings.limits
        auth = settings.auth
        self.users = UserStore(metadata, auth.max_users, auth.hash_concurrency)
        fileRules: list[Rule] = []
        if settings.acl.file and "file" in settings.acl.sources:
            from robustmq.config import ConfigError

            try:
                fileRules = loadRuleFile(settings.acl.file)
            except RuleError as e:
                raise ConfigError(f"acl.file: {e}") from None
        self.acl = ACL(settings.acl, metadata, fileRules)
        #: Kafka's ACL bindings and AMQP's per-vhost permissions (docs/security.md)
        self.kafkaAcl = KafkaACL(settings, metadata, self.users)
        self.amqpPermissions = AMQPPermissions(settings, metadata, self.users)
        self.bans = Bans(metadata, settings.limits.max_bans)
        self.flapping = FlappingDetector(settings.limits, self.bans, reactor)
        limits = settings.limits
        self.acceptBucket = (
            TokenBucket(limits.connection_rate, limits.connection_burst, reactor.seconds())
            if limits.connection_rate
            else None
        )
        self.refusedByRate = 0

    @classmethod
    def forNode(cls, settings: Any, reactor: Any) -> Security:
        """The single-node setup: an embedded store under C{node.data_dir}."""
        path = os.path.join(settings.node.data_dir, "metadata", "security.sqlite3")
        return cls(settings, reactor, EmbeddedMetadataStore(path))

    @classmethod
    def inMemory(cls, settings: Any, reactor: Any) -> Security:
        """Nothing persisted (tests, in-process brokers)."""
        return cls(settings, reactor, MemoryMetadataStore())

    def reloadAclFile(self) -> None:
        """Re-read C{[acl] file} (on SIGHUP); a file that does not load keeps the old
        rules and raises, which the reloader logs."""
        path = self.settings.acl.file
        rules = loadRuleFile(path)
        self.acl.setFileRules(rules)
        self.log.info("ACL file {path} reloaded: {n} rules", path=path, n=len(rules))

    def disconnectBanned(self, connections: Any) -> int:
        """Close the connected clients a ban now covers (a ban made here or pushed
        from the cluster); returns how many.  Connections without C{kick} are skipped."""
        closed = 0
        for connection in list(connections):
            kick = getattr(connection, "kick", None)
            if kick is None:
                continue
            peer = getattr(connection, "peer", "") or ""
            why = self.bans.check(
                getattr(connection, "clientId", None),
                getattr(connection, "username", None),
                peer.rsplit(":", 1)[0],
            )
            if why is not None:
                self.log.info("disconnecting a banned client: {why}", why=why)
                kick(why)
                closed += 1
        return closed

    # What protocols ask

    def acceptConnection(self) -> bool:
        """Within C{[limits] connection_rate}? (Counts the attempt.)"""
        bucket = self.acceptBucket
        if bucket is None or bucket.tryTake(1, self.reactor.seconds()):
            return True
        self.refusedByRate += 1
        return False

    def admit(self, clientId: str | None, username: str | None, host: str | None) -> str | None:
        """Why a connecting client is refused as banned (flapping included), or None."""
        if clientId and self.flapping.connecting(clientId):
            return f"client id {clientId} is flapping"
        return self.bans.check(clientId, username, host)

    def admitPeer(self, username: str | None, host: str | None) -> str | None:
        """Kafka and AMQP: why an authenticated connection is refused (bans, flapping), or None.

        Bans by user name and address apply; flapping counts the logins of
        a user name (of an address for anonymous clients off loopback).
        """
        why = self.bans.check(None, username, host)
        if why is not None:
            return why
        if username:
            if self.flapping.connecting(username, "username"):
                return f"user {username} is flapping"
        elif host and not isLoopback(host):
            if self.flapping.connecting(host.strip("[]"), "ip"):
                return f"address {host} is flapping"
        return None

    def admitAddress(self, host: str | None) -> str | None:
        """Why a new socket from C{host} is refused (an address ban, the accept rate), or None."""
        if not self.acceptConnection():
            return "connection rate limit"
        return self.bans.check(None, None, host)

    def access(
        self,
        clientId: str,
        username: str | None,
        host: str | None,
        attributes: Mapping[str, Any] | None = None,
    ) -> ClientAccess:
        """The authorization view of one authenticated connection."""
        attributes = attributes or {}
        superuser = bool(attributes.get("superuser")) or self.users.isSuperuser(username)
        return ClientAccess(
            self.acl, clientId, username, host, superuser, attributes.get("acl") or ()
        )

    def kafkaAccess(
        self, username: str | None, host: str, attributes: Mapping[str, Any] | None = None
    ) -> KafkaAccess:
        """The Kafka authorization view of one connection (C{username} None: anonymous)."""
        attributes = attributes or {}
        superuser = bool(attributes.get("superuser")) or self.users.isSuperuser(username)
        return KafkaAccess(self.kafkaAcl, principalOf(username), host, superuser)

    def amqpAccess(
        self, username: str, vhost: str, attributes: Mapping[str, Any] | None = None
    ) -> AMQPAccess | None:
        """The AMQP permissions of one connection in C{vhost}, or None: it may not open it."""
        superuser = bool((attributes or {}).get("superuser"))
        return self.amqpPermissions.access(username, vhost, superuser)

    def publishLimiter(self) -> PublishLimiter | None:
        """A new connection's rate limiter, or None when no rate is configured."""
        if not (self.limits.message_rate or self.limits.byte_rate):
            return None
        return PublishLimiter(self.limits, self.reactor.seconds())


def securityOf(broker: Any) -> Security:
    """The broker's L{Security}; a broker built without one gets an in-memory one."""
    security = getattr(broker, "security", None)
    if security is None:
        security = broker.security = Security.inMemory(broker.settings, broker.reactor)
    return security  # type: ignore[no-any-return]


__all__ = [
    "ACL",
    "AMQPAccess",
    "AMQPPermissionError",
    "AMQPPermissions",
    "KafkaACL",
    "KafkaAccess",
    "KafkaAclError",
    "BanError",
    "Bans",
    "ClientAccess",
    "EmbeddedMetadataStore",
    "IMetadataStore",
    "MemoryMetadataStore",
    "Rule",
    "RuleError",
    "Security",
    "UserError",
    "UserStore",
    "securityOf",
]
