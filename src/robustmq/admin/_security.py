"""Admin API endpoints for users, ACL rules, Kafka ACLs, AMQP permissions and bans
(C{robustmq ctl user|acl|kafka acls|amqp permissions|ban}).

Passwords arrive in request bodies only, are hashed at once and are never
echoed or logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web import server

from robustmq.admin._http import APIError, Route, jsonBody
from robustmq.core.security import (
    AMQPPermissionError,
    BanError,
    KafkaAclError,
    RuleError,
    UserError,
    securityOf,
)
from robustmq.core.security.kafkaacl import AclBinding, AclFilter

if TYPE_CHECKING:
    from robustmq.core.broker import Broker

Params = dict[str, str]


def _object(request: server.Request, allowed: set[str]) -> dict[str, Any]:
    body = jsonBody(request)
    if not isinstance(body, dict):
        raise APIError(400, "body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"unknown field {unknown[0]!r}; known: {sorted(allowed)}")
    return body


class SecurityAPI:
    """Handlers over the broker's L{robustmq.core.security.Security}."""

    def __init__(self, broker: Broker) -> None:
        self.security = securityOf(broker)

    def routes(self, v1: str) -> list[Route]:
        """The user, ACL and ban endpoints under C{v1}."""
        return [
            Route("GET", f"{v1}/users", self.users),
            Route("POST", f"{v1}/users", self.addUser),
            Route("GET", f"{v1}/users/{{username}}", self.user),
            Route("PUT", f"{v1}/users/{{username}}", self.updateUser),
            Route("DELETE", f"{v1}/users/{{username}}", self.deleteUser),
            Route("GET", f"{v1}/acl", self.rules),
            Route("POST", f"{v1}/acl", self.addRule),
            Route("DELETE", f"{v1}/acl/{{id}}", self.deleteRule),
            Route("GET", f"{v1}/kafka/acls", self.kafkaAcls),
            Route("POST", f"{v1}/kafka/acls", self.addKafkaAcl),
            Route("DELETE", f"{v1}/kafka/acls", self.deleteKafkaAcls),
            Route("GET", f"{v1}/amqp/permissions", self.amqpPermissions),
            Route("PUT", f"{v1}/amqp/permissions/{{vhost}}/{{user}}", self.setAmqpPermissions),
            Route("DELETE", f"{v1}/amqp/permissions/{{vhost}}/{{user}}", self.clearAmqpPermissions),
            Route("GET", f"{v1}/bans", self.bans),
            Route("POST", f"{v1}/bans", self.addBan),
            Route("DELETE", f"{v1}/bans/{{kind}}/{{value}}", self.deleteBan, greedy=True),
        ]

    # Users

    def users(self, request: server.Request, params: Params) -> Any:
        """Every user of the built-in store (no password hashes)."""
        return {"data": self.security.users.list()}

    def addUser(self, request: server.Request, params: Params) -> Any:
        """Create a user: C{{username, password, superuser}}."""
        body = _object(request, {"username", "password", "superuser"})
        username, password = body.get("username"), body.get("password")
        superuser = body.get("superuser", False)
        if not isinstance(username, str) or not isinstance(password, str):
            raise APIError(400, "fields 'username' and 'password': strings are required")
        if not isinstance(superuser, bool):
            raise APIError(400, "field 'superuser': true or false")
        try:
            return self.security.users.add(username, password, superuser)
        except UserError as e:
            raise APIError(409 if "exists" in str(e) else 400, str(e)) from None

    def user(self, request: server.Request, params: Params) -> Any:
        """One user."""
        try:
            return self.security.users.describe(params["username"])
        except UserError as e:
            raise APIError(404, str(e)) from None

    def updateUser(self, request: server.Request, params: Params) -> Any:
        """Change a user's password and/or superuser flag: C{{password, superuser}}."""
        body = _object(request, {"password", "superuser"})
        password, superuser = body.get("password"), body.get("superuser")
        if password is not None and not isinstance(password, str):
            raise APIError(400, "field 'password': a string")
        if superuser is not None and not isinstance(superuser, bool):
            raise APIError(400, "field 'superuser': true or false")
        users = self.security.users
        if params["username"] not in users:
            raise APIError(404, f"no user {params['username']!r}")
        try:
            return users.update(params["username"], password, superuser)
        except UserError as e:
            raise APIError(400, str(e)) from None

    def deleteUser(self, request: server.Request, params: Params) -> Any:
        """Delete a user (connected clients stay connected; new logins fail)."""
        if not self.security.users.delete(params["username"]):
            raise APIError(404, f"no user {params['username']!r}")
        return {"deleted": params["username"]}

    # ACL

    def rules(self, request: server.Request, params: Params) -> Any:
        """Every ACL rule in decision order, with its source, and the default policy."""
        acl = self.security.acl
        return {"data": acl.list(), "no_match": "allow" if acl.noMatch else "deny"}

    def addRule(self, request: server.Request, params: Params) -> Any:
        """Append a rule to the store source."""
        body = jsonBody(request)
        try:
            return self.security.acl.add(body).toDict()
        except RuleError as e:
            raise APIError(400, str(e)) from None

    def deleteRule(self, request: server.Request, params: Params) -> Any:
        """Delete a stored rule by id."""
        if not self.security.acl.delete(params["id"]):
            raise APIError(404, f"no stored rule {params['id']!r}")
        return {"deleted": params["id"]}

    # Kafka ACLs (the bindings Kafka's DescribeAcls/CreateAcls/DeleteAcls manage)

    def _kafkaFilter(self, request: server.Request) -> AclFilter:
        q = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        known = {
            "resource_type",
            "resource_name",
            "pattern_type",
            "principal",
            "host",
            "operation",
            "permission",
        }
        unknown = sorted(set(q) - known)
        if unknown:
            raise APIError(400, f"unknown query parameter {unknown[0]!r}; known: {sorted(known)}")
        try:
            return AclFilter.create(
                q.get("resource_type", "ANY"),
                q.get("resource_name"),
                q.get("pattern_type", "ANY"),
                q.get("principal"),
                q.get("host"),
                q.get("operation", "ANY"),
                q.get("permission", "ANY"),
            )
        except KafkaAclError as e:
            raise APIError(400, str(e)) from None

    def kafkaAcls(self, request: server.Request, params: Params) -> Any:
        """Kafka ACL bindings, filtered by the query (Kafka's names, e.g. resource_type=TOPIC)."""
        flt = self._kafkaFilter(request)
        acl = self.security.kafkaAcl
        return {
            "data": [b.toDict() for b in acl.describe(flt)],
            "no_match": "allow" if acl.noMatch else "deny",
        }

    def addKafkaAcl(self, request: server.Request, params: Params) -> Any:
        """Create one binding: C{{resource_type, resource_name, pattern_type, principal, host,
        operation, permission}}."""
        try:
            binding = AclBinding.fromDict(jsonBody(request))
            self.security.kafkaAcl.create(binding)
        except KafkaAclError as e:
            raise APIError(400, str(e)) from None
        return binding.toDict()

    def deleteKafkaAcls(self, request: server.Request, params: Params) -> Any:
        """Delete the bindings the query's filter matches (an empty filter matches every one)."""
        flt = self._kafkaFilter(request)
        return {"deleted": [b.toDict() for b in self.security.kafkaAcl.delete(flt)]}

    # AMQP permissions (RabbitMQ's set_permissions)

    def amqpPermissions(self, request: server.Request, params: Params) -> Any:
        """Permission entries, optionally of one C{user} and/or C{vhost} (query)."""
        q = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        table = self.security.amqpPermissions
        return {
            "data": table.list(q.get("user"), q.get("vhost")),
            "no_match": "allow" if table.noMatch else "deny",
        }

    def setAmqpPermissions(self, request: server.Request, params: Params) -> Any:
        """Set C{{configure, write, read}} regular expressions of a user in a vhost."""
        body = _object(request, {"configure", "write", "read"})
        try:
            return self.security.amqpPermissions.set(
                params["user"],
                params["vhost"],
                body.get("configure"),  # type: ignore[arg-type]
                body.get("write"),  # type: ignore[arg-type]
                body.get("read"),  # type: ignore[arg-type]
            )
        except AMQPPermissionError as e:
            raise APIError(400, str(e)) from None

    def clearAmqpPermissions(self, request: server.Request, params: Params) -> Any:
        """Remove a user's permissions in a vhost."""
        if not self.security.amqpPermissions.clear(params["user"], params["vhost"]):
            raise APIError(
                404, f"no permissions of {params['user']!r} in vhost {params['vhost']!r}"
            )
        return {"cleared": {"user": params["user"], "vhost": params["vhost"]}}

    # Bans

    def bans(self, request: server.Request, params: Params) -> Any:
        """Bans in force."""
        return {"data": self.security.bans.list()}

    def addBan(self, request: server.Request, params: Params) -> Any:
        """Ban C{{kind, value, duration, reason}} (duration in seconds; omitted: no expiry)."""
        body = _object(request, {"kind", "value", "duration", "reason"})
        duration = body.get("duration")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float)
        ):
            raise APIError(400, "field 'duration': seconds, a number")
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise APIError(400, "field 'reason': a string")
        try:
            kind, value = str(body.get("kind", "")), body.get("value")
            if not isinstance(value, str):
                raise BanError("value: a non-empty string is required")
            return self.security.bans.add(kind, value, duration, reason)
        except BanError as e:
            raise APIError(400, str(e)) from None

    def deleteBan(self, request: server.Request, params: Params) -> Any:
        """Lift a ban."""
        try:
            found = self.security.bans.delete(params["kind"], params["value"])
        except BanError as e:
            raise APIError(400, str(e)) from None
        if not found:
            raise APIError(404, f"no ban on {params['kind']} {params['value']!r}")
        return {"deleted": f"{params['kind']}:{params['value']}"}


__all__ = ["SecurityAPI"]
