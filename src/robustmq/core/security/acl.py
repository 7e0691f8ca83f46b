"""Authorization: ACL rules, their matching, and each connection's decisions.

A rule says C{allow} or C{deny} to C{publish}, C{subscribe} or C{all}, on
topic filters, for clients matched by user name, client id and IP/CIDR (all
that are given must match; none given matches everyone).  Topic filters may
carry C{%u} (user name) and C{%c} (client id); a filter written C{"eq T"}
matches the string C{T} exactly (no wildcards, no placeholders).

Decision order, first match wins: the client's own rules (JWT claims), then
the sources in C{[acl] sources} (C{store}: rules added through the admin
API; C{file}: C{[acl] file}), each in its order; then C{$SYS/...} is
readable when C{[acl] sys_readable}; then C{[acl] no_match}.  Superusers skip
the rules.  Publishing to C{$SYS/...} is refused to every client.
"""

from __future__ import annotations

import ipaddress
import tomllib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from robustmq.core.security.metadata import IMetadataStore

KIND = "acl"
PUBLISH = "publish"
SUBSCRIBE = "subscribe"
ACTIONS = (PUBLISH, SUBSCRIBE, "all")
PERMISSIONS = ("allow", "deny")


class RuleError(ValueError):
    """A rule is malformed; the message names the field."""


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError(f"ipaddress: {text!r} is not an IP address or CIDR") from None


def matchTopic(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    """True if the topic name (split on '/') matches the filter C{pattern} (split)."""
    n = len(pattern)
    for i, word in enumerate(pattern):
        if word == "#":
            return not (i == 0 and topic and topic[0].startswith("$"))
        if i >= len(topic):
            return False
        if word == "+":
            if i == 0 and topic[0].startswith("$"):
                return False
            continue
        if word != topic[i]:
            return False
    return n == len(topic)


def coversFilter(pattern: Sequence[str], wanted: Sequence[str]) -> bool:
    """True if every topic the filter C{wanted} matches is matched by C{pattern}.

    A rule C{a/+} covers a subscription to C{a/b} or C{a/+}, not C{a/#}.
    """
    for i, word in enumerate(pattern):
        if word == "#":
            return not (i == 0 and wanted and wanted[0].startswith("$"))
        if i >= len(wanted):
            return False
        other = wanted[i]
        if word == "+":
            if other == "#" or (i == 0 and other.startswith("$")):
                return False
            continue
        if word != other:
            return False
    return len(pattern) == len(wanted)


def filtersOverlap(first: Sequence[str], second: Sequence[str]) -> bool:
    """True if some topic name matches both filters (split on '/')."""
    for i in range(max(len(first), len(second))):
        a = first[i] if i < len(first) else None
        b = second[i] if i < len(second) else None
        if a == "#" or b == "#":
            return True
        if a is None or b is None:
            return False
        if a != b and a != "+" and b != "+":
            return False
    return True


@attrs.frozen
class Rule:
    """One ACL rule."""

    permission: str
    action: str
    topics: tuple[str, ...]
    username: str | None = None
    clientid: str | None = None
    ipaddress: str | None = None
    id: str = ""
    network: Any = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def fromDict(cls, raw: Any, ruleId: str | None = None) -> Rule:
        """Validate a rule given as a dict (admin API, ACL file, JWT claim)."""
        if not isinstance(raw, dict):
            raise RuleError("a rule must be an object")
        known = {
            "permission",
            "action",
            "topics",
            "topic",
            "username",
            "clientid",
            "ipaddress",
            "id",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RuleError(f"{unknown[0]}: unknown field; known: {sorted(known)}")
        permission = raw.get("permission")
        if permission not in PERMISSIONS:
            raise RuleError(f"permission: {permission!r} must be 'allow' or 'deny'")
        action = raw.get("action", "all")
        if action not in ACTIONS:
            raise RuleError(f"action: {action!r} must be one of {list(ACTIONS)}")
        topics = raw.get("topics", [raw["topic"]] if "topic" in raw else None)
        if isinstance(topics, str):
            topics = [topics]
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise RuleError("topics: a non-empty list of topic filters is required")
        for field in ("username", "clientid", "ipaddress"):
            value = raw.get(field)
            if value is not None and (not isinstance(value, str) or not value):
                raise RuleError(f"{field}: a non-empty string")
        ip = raw.get("ipaddress")
        return cls(
            permission,
            action,
            tuple(topics),
            raw.get("username"),
            raw.get("clientid"),
            ip,
            ruleId or str(raw.get("id") or uuid.uuid4().hex[:12]),
            _network(ip) if ip else None,
        )

    def toDict(self) -> dict[str, Any]:
        """The rule as JSON."""
        out: dict[str, Any] = {
            "id": self.id,
            "permission": self.permission,
            "action": self.action,
            "topics": list(self.topics),
        }
        for field in ("username", "clientid", "ipaddress"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        return out

    def appliesTo(self, access: ClientAccess) -> bool:
        """Whether the client matches the rule's user name, client id and address."""
        if self.username is not None and self.username != access.username:
            return False
        if self.clientid is not None and self.clientid != access.clientId:
            return False
        if self.network is not None:
            address = access.address
            if address is None or address.version != self.network.version:
                return False
            if address not in self.network:
                return False
        return True

    def matches(self, access: ClientAccess, action: str, topic: str) -> bool:
        """Whether the rule decides C{action} on C{topic} for this client."""
        if self.action != "all" and self.action != action:
            return False
        if not self.appliesTo(access):
            return False
        words = topic.split("/")
        for pattern in self.topics:
            if pattern.startswith("eq "):
                if pattern[3:] == topic:
                    return True
                continue
            if "%u" in pattern:
                if not access.username:
                    continue
                pattern = pattern.replace("%u", access.username)
            if "%c" in pattern:
                pattern = pattern.replace("%c", access.clientId)
            split = pattern.split("/")
            if action == PUBLISH:
                if matchTopic(split, words):
                    return True
            elif coversFilter(split, words):
                return True
        return False

    def overlaps(self, access: ClientAccess, topicFilter: str) -> bool:
        """Whether this rule speaks of some topic that C{topicFilter} matches (for reading)."""
        if self.action not in ("all", SUBSCRIBE) or not self.appliesTo(access):
            return False
        words = topicFilter.split("/")
        for pattern in self.topics:
            if pattern.startswith("eq "):
                pattern = pattern[3:]
            if "%u" in pattern:
                if not access.username:
                    continue
                pattern = pattern.replace("%u", access.username)
            pattern = pattern.replace("%c", access.clientId)
            if filtersOverlap(pattern.split("/"), words):
                return True
        return False


def loadRuleFile(path: str) -> list[Rule]:
    """Rules from a TOML file of C{[[rules]]} tables, in file order."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise RuleError(f"{path}: ACL file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise RuleError(f"{path}: not valid TOML: {e}") from None
    rules = []
    for i, raw in enumerate(data.get("rules", [])):
        try:
            rules.append(Rule.fromDict(raw, f"file-{i}"))
        except RuleError as e:
            raise RuleError(f"{path}: rules[{i}].{e}") from None
    return rules


class ACL:
    """The node's rules and default policy; decides for L{ClientAccess}es.

    C{version} changes whenever the rules do: each connection's decision
    cache compares it and empties itself, so a changed rule applies to the
    next packet of every connected client.
    """

    log = Logger()

    def __init__(
        self,
        settings: Any,
        metadata: IMetadataStore,
        fileRules: Iterable[Rule] = (),
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.noMatch = settings.no_match == "allow"
        self.sysReadable = settings.sys_readable
        self.maxRules = settings.max_rules
        self.cacheSize = settings.cache_size
        self.checkDeliveries = settings.check_deliveries
        self.fileRules = list(fileRules)
        self.storeRules: list[Rule] = []
        self.version = 0
        self._reload()
        metadata.watch(KIND, self._changed)

    def _reload(self) -> None:
        rules = []
        for key, raw in self.metadata.items(KIND):
            try:
                rules.append(Rule.fromDict(raw, key))
            except RuleError as e:
                self.log.warn("stored ACL rule {id} ignored: {why}", id=key, why=str(e))
        self.storeRules = rules
        self._sources = [
            self.storeRules if name == "store" else self.fileRules for name in self.settings.sources
        ]
        self.version += 1
        self.isOpen = self.open

    def _changed(self, kind: str, key: str, value: Any) -> None:
        self._reload()

    def setFileRules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules of the file source (a re-read of C{[acl] file})."""
        self.fileRules = list(rules)
        self._reload()

    @property
    def open(self) -> bool:
        """No rules at all and a default of allow: nothing to decide."""
        return self.noMatch and not self.storeRules and not self.fileRules

    # Management (the "store" source)

    def add(self, raw: dict[str, Any]) -> Rule:
        """Append a rule to the store source; raises L{RuleError}."""
        if self.metadata.count(KIND) >= self.maxRules:
            raise RuleError(f"the ACL is full ([acl] max_rules = {self.maxRules})")
        rule = Rule.fromDict(raw)
        if self.metadata.get(KIND, rule.id) is not None:
            raise RuleError(f"id: a rule {rule.id!r} exists")
        self.metadata.put(KIND, rule.id, rule.toDict())
        self.log.info("ACL rule {id} added: {rule}", id=rule.id, rule=rule.toDict())
        return rule

    def delete(self, ruleId: str) -> bool:
        """Remove a stored rule; False if there was none."""
        if self.metadata.get(KIND, ruleId) is None:
            return False
        self.metadata.delete(KIND, ruleId)
        self.log.info("ACL rule {id} deleted", id=ruleId)
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every rule in decision order, with its source."""
        out: list[dict[str, Any]] = []
        for name in self.settings.sources:
            rules = self.storeRules if name == "store" else self.fileRules
            out.extend({**rule.toDict(), "source": name} for rule in rules)
        return out

    # Deciding

    def decide(self, access: ClientAccess, action: str, topic: str) -> bool:
        """Allow (True) or deny C{action} on C{topic} for the client."""
        if action == PUBLISH and topic.startswith("$SYS"):
            return False
        if access.superuser:
            return True
        for rule in access.rules:
            if rule.matches(access, action, topic):
                return rule.permission == "allow"
        for rules in self._sources:
            for rule in rules:
                if rule.matches(access, action, topic):
                    return rule.permission == "allow"
        if action == SUBSCRIBE and self.sysReadable and topic.startswith("$SYS/"):
            return True
        return self.noMatch

    def deniedWithin(self, access: ClientAccess, topicFilter: str) -> bool:
        """Whether a deny rule for this client reaches into C{topicFilter} (reading)."""
        for rules in (access.rules, *self._sources):
            for rule in rules:
                if rule.permission == "deny" and rule.overlaps(access, topicFilter):
                    return True
        return False


class ClientAccess:
    """One connection's identity for authorization, with its decision cache.

    The cache holds at most C{[acl] cache_size} decisions; when full it is
    emptied and refilled (cheaper than tracking recency per packet).
    """

    __slots__ = (
        "acl",
        "clientId",
        "username",
        "address",
        "superuser",
        "rules",
        "_cache",
        "_version",
        "trivial",
    )

    def __init__(
        self,
        acl: ACL,
        clientId: str,
        username: str | None,
        host: str | None,
        superuser: bool = False,
        rules: Sequence[Rule] = (),
    ) -> None:
        self.acl = acl
        self.clientId = clientId
        self.username = username
        try:
            address = ipaddress.ip_address((host or "").strip("[]"))
            mapped = getattr(address, "ipv4_mapped", None)
            self.address: Any = mapped or address
        except ValueError:
            self.address = None
        self.superuser = superuser
        self.rules = tuple(rules)
        self._cache: dict[tuple[str, str], bool] = {}
        self._version = acl.version
        #: no per-client rules and not a superuser: with an open ACL, only $SYS needs a decision
        self.trivial = not self.rules and not superuser

    def allowed(self, action: str, topic: str) -> bool:
        """The (cached) decision for C{action} on C{topic}."""
        acl = self.acl
        if acl.version != self._version:
            self._cache.clear()
            self._version = acl.version
        key = (action, topic)
        decision = self._cache.get(key)
        if decision is None:
            decision = acl.decide(self, action, topic)
            if acl.cacheSize:
                if len(self._cache) >= acl.cacheSize:
                    self._cache.clear()
                self._cache[key] = decision
        return decision

    def canPublish(self, topic: str) -> bool:
        """May this client publish to C{topic}?"""
        if not self.rules and not self.superuser and self.acl.open:
            return not topic.startswith("$SYS")
        return self.allowed(PUBLISH, topic)

    def canReceive(self, topic: str) -> bool:
        """May a message on C{topic} be delivered to this client?

        A wildcard subscription may cover topics the client may not subscribe
        to; with C{[acl] check_deliveries} (the default) such messages are
        withheld, decided per topic with the connection's cache (mosquitto's
        behaviour).  Superusers receive everything.
        """
        if self.superuser or not self.acl.checkDeliveries:
            return True
        if not self.rules and self.acl.open:
            return True
        return self.allowed(SUBSCRIBE, topic)

    def canSubscribe(self, topicFilter: str) -> bool:
        """May this client subscribe to C{topicFilter}?"""
        if not self.rules and self.acl.open:
            return True
        return self.allowed(SUBSCRIBE, topicFilter)

    def canReadAll(self, topicFilter: str) -> bool:
        """May this client read I{every} topic C{topicFilter} matches?

        For subscriptions the broker cannot filter message by message: an
        AMQP binding on the MQTT topic exchange, a Kafka topic mapped from
        MQTT topics (docs/topic-space.md).  Stricter than L{canSubscribe}:
        a deny rule for any topic under the filter refuses it.
        """
        if not self.canSubscribe(topicFilter):
            return False
        if self.superuser or (not self.rules and self.acl.open):
            return True
        key = ("read-all", topicFilter)
        if self.acl.version != self._version:
            self._cache.clear()
            self._version = self.acl.version
        decision = self._cache.get(key)
        if decision is None:
            decision = not self.acl.deniedWithin(self, topicFilter)
            if self.acl.cacheSize:
                if len(self._cache) >= self.acl.cacheSize:
                    self._cache.clear()
                self._cache[key] = decision
        return decision


__all__ = [
    "ACL",
    "ClientAccess",
    "Rule",
    "RuleError",
    "coversFilter",
    "filtersOverlap",
    "loadRuleFile",
    "matchTopic",
]
