"""Kafka authorization: ACL bindings in Kafka's own model, and each connection's decisions.

A binding says that a principal (C{User:alice}, or C{User:*} for everyone),
from a host (an address, or C{*}), is allowed or denied an operation
(C{READ}, C{WRITE}, C{CREATE}, ... or C{ALL}) on a resource: a topic, a
consumer group, a transactional id or the cluster, named literally, by
prefix (C{PREFIXED}), or C{*} for every resource of that type.  These are
the bindings Kafka's C{AclAuthorizer}/C{StandardAuthorizer} keep, with the
same numeric codes, so Kafka's admin clients (DescribeAcls, CreateAcls,
DeleteAcls) manage them unchanged.

Decisions follow Kafka's authorizer:

1. superusers (the user store's flag) may do everything;
2. a matching DENY binding (for the operation or C{ALL}) refuses;
3. a matching ALLOW binding allows; C{DESCRIBE} is implied by C{READ},
   C{WRITE}, C{DELETE} and C{ALTER}, and C{DESCRIBE_CONFIGS} by
   C{ALTER_CONFIGS}, as in Kafka;
4. with no binding at all on the resource (for any principal), C{[acl]
   no_match} decides (Kafka's C{allow.everyone.if.no.acl.found}); once a
   resource has bindings, only what they allow is allowed.

Bindings live in the shared metadata store (kind C{kafka_acl}), next to
users, MQTT ACL rules and bans, so a cluster shares them through the
placement center.  L{KafkaAccess} is one connection's view with a bounded
decision cache, emptied whenever a binding changes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from robustmq.core.security.metadata import IMetadataStore

KIND = "kafka_acl"

# Kafka's codes (org.apache.kafka.common.resource.ResourceType, PatternType,
# org.apache.kafka.common.acl.AclOperation, AclPermissionType).
RESOURCE_TYPES = {
    "UNKNOWN": 0,
    "ANY": 1,
    "TOPIC": 2,
    "GROUP": 3,
    "CLUSTER": 4,
    "TRANSACTIONAL_ID": 5,
    "DELEGATION_TOKEN": 6,
    "USER": 7,
}
PATTERN_TYPES = {"UNKNOWN": 0, "ANY": 1, "MATCH": 2, "LITERAL": 3, "PREFIXED": 4}
OPERATIONS = {
    "UNKNOWN": 0,
    "ANY": 1,
    "ALL": 2,
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DELETE": 6,
    "ALTER": 7,
    "DESCRIBE": 8,
    "CLUSTER_ACTION": 9,
    "DESCRIBE_CONFIGS": 10,
    "ALTER_CONFIGS": 11,
    "IDEMPOTENT_WRITE": 12,
    "CREATE_TOKENS": 13,
    "DESCRIBE_TOKENS": 14,
}
PERMISSIONS = {"UNKNOWN": 0, "ANY": 1, "DENY": 2, "ALLOW": 3}

TOPIC = RESOURCE_TYPES["TOPIC"]
GROUP = RESOURCE_TYPES["GROUP"]
CLUSTER = RESOURCE_TYPES["CLUSTER"]
TRANSACTIONAL_ID = RESOURCE_TYPES["TRANSACTIONAL_ID"]
LITERAL = PATTERN_TYPES["LITERAL"]
PREFIXED = PATTERN_TYPES["PREFIXED"]
ALL = OPERATIONS["ALL"]
READ = OPERATIONS["READ"]
WRITE = OPERATIONS["WRITE"]
CREATE = OPERATIONS["CREATE"]
DELETE = OPERATIONS["DELETE"]
ALTER = OPERATIONS["ALTER"]
DESCRIBE = OPERATIONS["DESCRIBE"]
DESCRIBE_CONFIGS = OPERATIONS["DESCRIBE_CONFIGS"]
ALTER_CONFIGS = OPERATIONS["ALTER_CONFIGS"]
IDEMPOTENT_WRITE = OPERATIONS["IDEMPOTENT_WRITE"]
DENY = PERMISSIONS["DENY"]
ALLOW = PERMISSIONS["ALLOW"]

#: The cluster resource's only name.
CLUSTER_NAME = "kafka-cluster"
#: The principal of a connection that did not authenticate (loopback anonymous).
ANONYMOUS = "User:ANONYMOUS"
WILDCARD = "*"

#: operation -> the operations whose ALLOW implies it (Kafka's implied operations)
_IMPLIED = {
    DESCRIBE: (DESCRIBE, READ, WRITE, DELETE, ALTER, ALL),
    DESCRIBE_CONFIGS: (DESCRIBE_CONFIGS, ALTER_CONFIGS, ALL),
}

_NAMES = {
    "resource_type": {v: k for k, v in RESOURCE_TYPES.items()},
    "pattern_type": {v: k for k, v in PATTERN_TYPES.items()},
    "operation": {v: k for k, v in OPERATIONS.items()},
    "permission": {v: k for k, v in PERMISSIONS.items()},
}
_CODES = {
    "resource_type": RESOURCE_TYPES,
    "pattern_type": PATTERN_TYPES,
    "operation": OPERATIONS,
    "permission": PERMISSIONS,
}


class KafkaAclError(ValueError):
    """A binding or filter is malformed; the message names the field (Kafka: INVALID_REQUEST)."""


def principalOf(username: str | None) -> str:
    """The Kafka principal of a connection's user name (C{User:NAME}, or C{User:ANONYMOUS})."""
    return f"User:{username}" if username else ANONYMOUS


def _code(field: str, value: Any) -> int:
    """A code given as its number or Kafka's name (C{"TOPIC"}, C{"read"})."""
    table = _CODES[field]
    if isinstance(value, bool):
        raise KafkaAclError(f"{field}: {value!r} is not one of {sorted(table)}")
    if isinstance(value, int):
        if value not in _NAMES[field]:
            raise KafkaAclError(f"{field}: unknown code {value}")
        return value
    if isinstance(value, str) and value.upper() in table:
        return table[value.upper()]
    raise KafkaAclError(f"{field}: {value!r} is not one of {sorted(table)}")


@attrs.frozen
class AclBinding:
    """One Kafka ACL binding (a resource pattern and an access control entry)."""

    resourceType: int
    resourceName: str
    patternType: int
    principal: str
    host: str
    operation: int
    permission: int

    @classmethod
    def create(
        cls,
        resourceType: Any,
        resourceName: str,
        patternType: Any,
        principal: str,
        host: str,
        operation: Any,
        permission: Any,
    ) -> AclBinding:
        """Validate a binding to store: concrete types only (no ANY/MATCH/UNKNOWN)."""
        rt = _code("resource_type", resourceType)
        pt = _code("pattern_type", patternType)
        op = _code("operation", operation)
        perm = _code("permission", permission)
        if rt in (0, 1):
            raise KafkaAclError("resource_type: a concrete type is required")
        if pt not in (LITERAL, PREFIXED):
            raise KafkaAclError("pattern_type: LITERAL or PREFIXED")
        if op in (0, 1):
            raise KafkaAclError("operation: a concrete operation is required")
        if perm not in (DENY, ALLOW):
            raise KafkaAclError("permission: ALLOW or DENY")
        if not isinstance(resourceName, str) or not resourceName:
            raise KafkaAclError("resource_name: a non-empty string is required")
        if pt == PREFIXED and resourceName == WILDCARD:
            raise KafkaAclError("resource_name: '*' is not a prefix (use LITERAL '*')")
        if rt == CLUSTER and resourceName != CLUSTER_NAME:
            raise KafkaAclError(f"resource_name: the cluster resource is {CLUSTER_NAME!r}")
        if not isinstance(principal, str) or ":" not in principal:
            raise KafkaAclError(f"principal: {principal!r} is not TYPE:NAME (e.g. User:alice)")
        if not isinstance(host, str) or not host:
            raise KafkaAclError("host: an IP address or '*'")
        if host != WILDCARD:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise KafkaAclError(f"host: {host!r} is not an IP address or '*'") from None
        return cls(rt, resourceName, pt, principal, host, op, perm)

    @property
    def key(self) -> str:
        """The binding's store key: the same binding created twice is stored once (as in Kafka)."""
        text = json.dumps(attrs.astuple(self), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def toDict(self) -> dict[str, Any]:
        """The binding as JSON, with Kafka's names."""
        return {
            "resource_type": _NAMES["resource_type"][self.resourceType],
            "resource_name": self.resourceName,
            "pattern_type": _NAMES["pattern_type"][self.patternType],
            "principal": self.principal,
            "host": self.host,
            "operation": _NAMES["operation"][self.operation],
            "permission": _NAMES["permission"][self.permission],
        }

    @classmethod
    def fromDict(cls, raw: Any) -> AclBinding:
        """A binding from its JSON form (names or codes)."""
        if not isinstance(raw, dict):
            raise KafkaAclError("a binding must be an object")
        known = {
            "resource_type",
            "resource_name",
            "pattern_type",
            "principal",
            "host",
            "operation",
            "permission",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KafkaAclError(f"{unknown[0]}: unknown field; known: {sorted(known)}")
        return cls.create(
            raw.get("resource_type"),
            raw.get("resource_name", ""),
            raw.get("pattern_type", "LITERAL"),
            raw.get("principal", ""),
            raw.get("host", WILDCARD),
            raw.get("operation"),
            raw.get("permission", "ALLOW"),
        )

    def covers(self, resourceType: int, name: str) -> bool:
        """Whether this binding's resource pattern matches the resource."""
        if self.resourceType != resourceType:
            return False
        if self.patternType == LITERAL:
            return self.resourceName == WILDCARD or self.resourceName == name
        return name.startswith(self.resourceName)


@attrs.frozen
class AclFilter:
    """A DescribeAcls/DeleteAcls filter: None (or ANY) fields match everything."""

    resourceType: int = 1
    resourceName: str | None = None
    patternType: int = 1
    principal: str | None = None
    host: str | None = None
    operation: int = 1
    permission: int = 1

    @classmethod
    def create(
        cls,
        resourceType: Any = 1,
        resourceName: str | None = None,
        patternType: Any = 1,
        principal: str | None = None,
        host: str | None = None,
        operation: Any = 1,
        permission: Any = 1,
    ) -> AclFilter:
        """Validate a filter (UNKNOWN codes are refused)."""
        out = cls(
            _code("resource_type", resourceType),
            resourceName,
            _code("pattern_type", patternType),
            principal,
            host,
            _code("operation", operation),
            _code("permission", permission),
        )
        for field in ("resourceType", "patternType", "operation", "permission"):
            if getattr(out, field) == 0:
                raise KafkaAclError(f"{field}: UNKNOWN does not filter anything")
        return out

    def matches(self, b: AclBinding) -> bool:
        """Whether the stored binding C{b} passes the filter (Kafka's AclBindingFilter.matches)."""
        if self.resourceType != 1 and self.resourceType != b.resourceType:
            return False
        if self.principal is not None and self.principal != b.principal:
            return False
        if self.host is not None and self.host != b.host:
            return False
        if self.operation != 1 and self.operation != b.operation:
            return False
        if self.permission != 1 and self.permission != b.permission:
            return False
        pt = self.patternType
        if pt == 2:  # MATCH: bindings that would apply to the named resource
            if self.resourceName is None:
                return True
            if b.patternType == LITERAL:
                return b.resourceName in (self.resourceName, WILDCARD)
            return self.resourceName.startswith(b.resourceName)
        if pt != 1 and pt != b.patternType:
            return False
        return self.resourceName is None or self.resourceName == b.resourceName


class KafkaACL:
    """The node's Kafka ACL bindings; decides for L{KafkaAccess}es.

    C{version} changes with every binding change: each connection's cache
    compares it and empties itself, so a new binding applies to the next
    request of every connected client.
    """

    log = Logger()

    def __init__(self, settings: Any, metadata: IMetadataStore, users: Any = None) -> None:
        self.metadata = metadata
        self.users = users
        self.noMatch = settings.acl.no_match == "allow"
        self.maxBindings = settings.acl.max_rules
        self.cacheSize = settings.acl.cache_size
        self.bindings: list[AclBinding] = []
        #: resource type -> bindings of that type (the only ones a decision reads)
        self._byType: dict[int, list[AclBinding]] = {}
        self.version = 0
        self._reload()
        metadata.watch(KIND, lambda kind, key, value: self._reload())

    def _reload(self) -> None:
        bindings = []
        for key, raw in self.metadata.items(KIND):
            try:
                bindings.append(AclBinding.fromDict(raw))
            except KafkaAclError as e:
                self.log.warn("stored Kafka ACL {key} ignored: {why}", key=key, why=str(e))
        self.bindings = bindings
        byType: dict[int, list[AclBinding]] = {}
        for b in bindings:
            byType.setdefault(b.resourceType, []).append(b)
        self._byType = byType
        self.version += 1

    # Management (the Kafka admin APIs and the admin HTTP API)

    def create(self, binding: AclBinding) -> None:
        """Store a binding (an existing identical binding is left as it is)."""
        key = binding.key
        if self.metadata.get(KIND, key) is not None:
            return
        if self.metadata.count(KIND) >= self.maxBindings:
            raise KafkaAclError(f"the Kafka ACL is full ([acl] max_rules = {self.maxBindings})")
        self.metadata.put(KIND, key, binding.toDict())
        self.log.info("Kafka ACL added: {binding}", binding=binding.toDict())

    def describe(self, flt: AclFilter) -> list[AclBinding]:
        """The stored bindings passing C{flt}."""
        return [b for b in self.bindings if flt.matches(b)]

    def delete(self, flt: AclFilter) -> list[AclBinding]:
        """Remove (and return) the bindings passing C{flt}."""
        gone = self.describe(flt)
        for b in gone:
            self.metadata.delete(KIND, b.key)
            self.log.info("Kafka ACL deleted: {binding}", binding=b.toDict())
        return gone

    # Deciding

    def decide(
        self, principal: str, host: str, operation: int, resourceType: int, name: str
    ) -> bool:
        """Kafka's decision for one (principal, host) on one resource (see module)."""
        bindings = [b for b in self._byType.get(resourceType, ()) if b.covers(resourceType, name)]
        if not bindings:
            return self.noMatch
        mine = [
            b
            for b in bindings
            if b.principal in (principal, "User:*") and b.host in (host, WILDCARD)
        ]
        for b in mine:
            if b.permission == DENY and b.operation in (operation, ALL):
                return False
        allowing = _IMPLIED.get(operation, (operation, ALL))
        return any(b.permission == ALLOW and b.operation in allowing for b in mine)

    def decideAny(self, principal: str, host: str, operation: int, resourceType: int) -> bool:
        """May the principal do C{operation} on at least one resource of the type?

        (Kafka's C{authorizeByResourceType}, used for idempotent producers:
        WRITE on any topic implies IDEMPOTENT_WRITE, KIP-679.)
        """
        bindings = self._byType.get(resourceType, ())
        if not bindings:
            return self.noMatch
        mine = [
            b
            for b in bindings
            if b.principal in (principal, "User:*") and b.host in (host, WILDCARD)
        ]
        allowing = _IMPLIED.get(operation, (operation, ALL))
        for b in mine:
            if b.permission != ALLOW or b.operation not in allowing:
                continue
            # An allow that no deny on the same pattern cancels.
            if not any(
                d.permission == DENY
                and d.operation in (operation, ALL)
                and d.covers(resourceType, b.resourceName)
                for d in mine
            ):
                return True
        return False


class KafkaAccess:
    """One Kafka connection's identity for authorization, with its decision cache.

    The cache holds at most C{[acl] cache_size} decisions and is emptied
    when it is full or when any binding changed.
    """

    __slots__ = ("acl", "principal", "host", "superuser", "_cache", "_version")

    def __init__(self, acl: KafkaACL, principal: str, host: str, superuser: bool = False) -> None:
        self.acl = acl
        self.principal = principal
        self.host = host.strip("[]")
        try:
            address: Any = ipaddress.ip_address(self.host)
            mapped = getattr(address, "ipv4_mapped", None)
            self.host = str(mapped or address)
        except ValueError:
            pass
        self.superuser = superuser
        self._cache: dict[tuple[int, int, str], bool] = {}
        self._version = acl.version

    def allowed(self, operation: int, resourceType: int, name: str) -> bool:
        """May this connection do C{operation} on the resource?"""
        if self.superuser:
            return True
        acl = self.acl
        if acl.version != self._version:
            self._cache.clear()
            self._version = acl.version
        key = (operation, resourceType, name)
        decision = self._cache.get(key)
        if decision is None:
            decision = acl.decide(self.principal, self.host, operation, resourceType, name)
            if acl.cacheSize:
                if len(self._cache) >= acl.cacheSize:
                    self._cache.clear()
                self._cache[key] = decision
        return decision

    def topic(self, operation: int, name: str) -> bool:
        """May this connection do C{operation} on topic C{name}?"""
        return self.allowed(operation, TOPIC, name)

    def group(self, operation: int, name: str) -> bool:
        """May this connection do C{operation} on consumer group C{name}?"""
        return self.allowed(operation, GROUP, name)

    def transactionalId(self, operation: int, name: str) -> bool:
        """May this connection do C{operation} on transactional id C{name}?"""
        return self.allowed(operation, TRANSACTIONAL_ID, name)

    def cluster(self, operation: int) -> bool:
        """May this connection do C{operation} on the cluster?"""
        return self.allowed(operation, CLUSTER, CLUSTER_NAME)

    def anyTopic(self, operation: int) -> bool:
        """May this connection do C{operation} on some topic (KIP-679)?"""
        if self.superuser:
            return True
        return self.acl.decideAny(self.principal, self.host, operation, TOPIC)


def bindingsFrom(raws: Iterable[Any]) -> list[AclBinding]:
    """Validate many JSON bindings (the admin API)."""
    return [AclBinding.fromDict(raw) for raw in raws]


__all__ = [
    "ANONYMOUS",
    "AclBinding",
    "AclFilter",
    "KafkaACL",
    "KafkaAccess",
    "KafkaAclError",
    "principalOf",
]
