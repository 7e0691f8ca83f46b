"""`robustmq ctl`: a command-line client of a node's admin HTTP API.

Talks to C{[http]} of a running node with the standard library's
C{urllib.request} (no reactor needed), prints tables or, with C{--json}, the
API's JSON.  C{subscribe} is a quick check over the node's MQTT port.

Exit codes: 0 success, 1 the API refused the request (4xx/5xx other than
below) or C{subscribe} got nothing in time, 2 usage error, 3 cannot reach the
admin API, 4 authentication failed (401), 5 not found (404), 6 C{storage
check} found damage or problems.

C{storage check --data-dir DIR} is the one command that needs no node: it
checks a data directory that no node has open (offline).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

#: Environment variables read for defaults (not ROBUSTMQ_*, which configure nodes).
ENV_URL = "RMQCTL_URL"
ENV_TOKEN = "RMQCTL_TOKEN"
ENV_USER = "RMQCTL_USER"
ENV_PASSWORD = "RMQCTL_PASSWORD"
DEFAULT_URL = "http://127.0.0.1:8080"

EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_NOT_FOUND = 1, 2, 3, 4, 5
EXIT_DAMAGED = 6


class CtlError(Exception):
    """A failure to report on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    """Blocking JSON calls to one node's admin API."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth: str | None = None
        if token:
            self.auth = f"Bearer {token}"
        elif user is not None:
            pair = f"{user}:{password or ''}".encode()
            self.auth = "Basic " + base64.b64encode(pair).decode()

    def call(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """One request; returns the decoded JSON or raises L{CtlError}."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        data = None
        headers = {"Accept": "application/json"}
        if self.auth:
            headers["Authorization"] = self.auth
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = Request(url, data=data, method=method, headers=headers)
        try:
            with urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except HTTPError as e:
            message = _errorMessage(e)
            if e.code == 401:
                raise CtlError(
                    f"401 unauthorized at {self.url}: {message} "
                    f"(give --token, or --user and --password)",
                    EXIT_AUTH,
                ) from None
            if e.code == 404:
                raise CtlError(f"404 not found: {message}", EXIT_NOT_FOUND) from None
            raise CtlError(f"{e.code} {e.reason}: {message}", EXIT_API) from None
        except URLError as e:
            reason = getattr(e.reason, "strerror", None) or str(e.reason)
            raise CtlError(
                f"cannot reach the admin API at {self.url}: {reason} "
                f"(is the node running with [http] enabled? see --url)",
                EXIT_UNREACHABLE,
            ) from None
        except (TimeoutError, ConnectionError) as e:
            raise CtlError(f"admin API at {self.url}: {e}", EXIT_UNREACHABLE) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise CtlError(f"{url} did not answer JSON", EXIT_API) from None


def _errorMessage(e: HTTPError) -> str:
    try:
        return str(json.loads(e.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(e.reason)


# Output


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def formatTable(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned text columns: C{columns} is (header, key) pairs."""
    cells = [[h for h, _ in columns]] + [[_cell(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def formatRecord(record: dict[str, Any]) -> str:
    """One object as `key: value` lines."""
    width = max((len(k) for k in record), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in record.items())


class Output:
    """Prints results as tables (default) or JSON (--json)."""

    def __init__(self, asJSON: bool, out: Any = None) -> None:
        self.asJSON = asJSON
        self.out = out or sys.stdout

    def emit(self, data: Any, render: Callable[[Any], str]) -> None:
        if self.asJSON:
            print(json.dumps(data, indent=2), file=self.out)
        else:
            print(render(data), file=self.out)

    def page(self, result: dict[str, Any], columns: Sequence[tuple[str, str]]) -> None:
        def render(r: dict[str, Any]) -> str:
            meta = r["meta"]
            shown = list(columns)
            if any("worker" in row for row in r["data"]):
                # A node with several worker processes names the one holding each entry.
                shown.append(("WORKER", "worker"))
            text = formatTable(r["data"], shown)
            footer = f"({len(r['data'])} of {meta['count']}, page {meta['page']}"
            footer += ", more: --page {})".format(meta["page"] + 1) if meta["hasnext"] else ")"
            return f"{text}\n{footer}"

        self.emit(result, render)


# Commands

CLIENT_COLUMNS = [
    ("CLIENT ID", "client_id"),
    ("USER", "username"),
    ("PEER", "peer"),
    ("LISTENER", "listener"),
    ("VER", "protocol_level"),
    ("KEEPALIVE", "keepalive"),
    ("SUBS", "subscriptions"),
    ("INFLIGHT", "inflight"),
    ("QUEUED", "queued"),
]
SESSION_COLUMNS = [
    ("CLIENT ID", "client_id"),
    ("ONLINE", "online"),
    ("CLEAN", "clean_session"),
    ("SUBS", "subscriptions"),
    ("INFLIGHT", "inflight"),
    ("QUEUED", "queued"),
    ("QUEUED BYTES", "queued_bytes"),
    ("CONGESTED", "congested"),
]


def _status(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    st = api.call("GET", "/api/v1/status")

    def render(st: dict[str, Any]) -> str:
        node = st["node"]
        head = (
            f"node {node['id']} ({node['status']}), RobustMQ {node['version']}, "
            f"roles {', '.join(node['roles'])}, up {_duration(node['uptime_seconds'])}\n"
            f"cluster: {st['cluster']['mode']}, {len(st['cluster']['nodes'])} node(s)\n"
        )
        workers = st.get("workers") or []
        table = f"{renderWorkers(workers)}\n" if workers else ""
        return head + table + formatRecord(st["stats"])

    out.emit(st, render)
    return 0


WORKER_COLUMNS = [
    ("WORKER", "worker"),
    ("PID", "pid"),
    ("STATE", "state"),
    ("CONNECTIONS", "connections"),
    ("CPU %", "cpu_percent"),
    ("RSS MiB", "rss_mib"),
    ("RESTARTS", "restarts"),
    ("UPTIME", "uptime"),
]


def renderWorkers(workers: Sequence[dict[str, Any]]) -> str:
    """The workers table of C{status} and C{workers}: one row per worker process."""
    rows = [
        {
            **w,
            "rss_mib": None if w.get("rss_bytes") is None else round(w["rss_bytes"] / 2**20, 1),
            "uptime": None if w.get("uptime_seconds") is None else _duration(w["uptime_seconds"]),
        }
        for w in workers
    ]
    return formatTable(rows, WORKER_COLUMNS)


def _workers(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    result = api.call("GET", "/api/v1/workers")
    out.emit(result, lambda r: renderWorkers(r["data"]))
    return 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {s % 60}s" if h else f"{m}m {s % 60}s"


CLUSTER_COLUMNS = [
    ("NODE", "node"),
    ("ROLES", "roles"),
    ("STATE", "state"),
    ("ADDRESS", "address"),
    ("UPTIME", "uptime"),
    ("CLIENTS", "clients"),
]


def renderCluster(members: Sequence[dict[str, Any]]) -> str:
    """The C{cluster status} table: one row per member, then a count of alive and dead."""
    rows = [
        {
            **m,
            "roles": ",".join(m.get("roles") or []),
            "uptime": None if m.get("uptime") is None else _duration(m["uptime"]),
        }
        for m in members
    ]
    alive = sum(1 for m in members if m.get("state") == "alive")
    footer = f"({len(members)} node(s): {alive} alive, {len(members) - alive} dead)"
    return f"{formatTable(rows, CLUSTER_COLUMNS)}\n{footer}"


def _cluster(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    try:
        result = api.call("GET", "/api/v1/cluster")
    except CtlError as e:
        if e.code != EXIT_NOT_FOUND:
            raise
        if "no such endpoint" in str(e):
            why = f"the node at {api.url} has no cluster API (an older RobustMQ?)"
        else:
            why = f"{e} (the node at {api.url} runs with [cluster] enabled = false)"
        raise CtlError(why, EXIT_NOT_FOUND) from None
    out.emit(result, lambda r: renderCluster(r["data"]))
    return 0


def _listeners(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    r = api.call("GET", "/api/v1/listeners")
    columns = [
        ("NAME", "name"),
        ("PROTOCOL", "protocol"),
        ("TRANSPORT", "transport"),
        ("BIND", "bind"),
        ("PORT", "port"),
        ("RUNNING", "running"),
        ("SOCKETS", "sockets"),
    ]
    out.emit(r, lambda r: formatTable(r["data"], columns))
    return 0


def _paging(args: argparse.Namespace) -> dict[str, Any]:
    return {"page": args.page, "limit": args.limit}


def _clients(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        query = {"client_id": args.client_id, "username": args.username, **_paging(args)}
        out.page(api.call("GET", "/api/v1/clients", query), CLIENT_COLUMNS)
        return 0
    if not args.client:
        raise CtlError(f"clients {args.action}: give a client id", EXIT_USAGE)
    path = "/api/v1/clients/" + quote(args.client, safe="")
    if args.action == "show":
        out.emit(api.call("GET", path), _renderClient)
    else:
        out.emit(api.call("DELETE", path), lambda r: f"kicked {r['kicked']}")
    return 0


def _renderClient(c: dict[str, Any]) -> str:
    flat = {k: v for k, v in c.items() if k != "session"}
    text = formatRecord(flat)
    session = c.get("session")
    if session and session.get("subscriptions"):
        text += "\n\n" + formatTable(session["subscriptions"], [("TOPIC", "topic"), ("QOS", "qos")])
    return text


def _sessions(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        online = None if args.online is None else str(args.online).lower()
        query = {"client_id": args.client_id, "online": online, **_paging(args)}
        out.page(api.call("GET", "/api/v1/sessions", query), SESSION_COLUMNS)
        return 0
    if not args.client:
        raise CtlError(f"sessions {args.action}: give a client id", EXIT_USAGE)
    path = "/api/v1/sessions/" + quote(args.client, safe="")
    if args.action == "show":
        out.emit(api.call("GET", path), _renderClient)
    else:
        out.emit(api.call("DELETE", path), lambda r: f"discarded session {r['discarded']}")
    return 0


def _subscriptions(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    query = {"client_id": args.client_id, "topic": args.topic, **_paging(args)}
    columns = [("TOPIC", "topic"), ("CLIENT ID", "client_id"), ("QOS", "qos")]
    out.page(api.call("GET", "/api/v1/subscriptions", query), columns)
    return 0


def _topics(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    query = {"topic": args.topic, **_paging(args)}
    out.page(
        api.call("GET", "/api/v1/topics", query),
        [("TOPIC", "topic"), ("SUBSCRIBERS", "subscribers")],
    )
    return 0


def _retained(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.filter and args.topic and args.filter != args.topic:
            raise CtlError("retained list: give the filter once (--topic FILTER)", EXIT_USAGE)
        query = {"topic": args.filter or args.topic, **_paging(args)}
        columns = [("TOPIC", "topic"), ("QOS", "qos"), ("SIZE", "size"), ("FROM", "from")]
        out.page(api.call("GET", "/api/v1/retained", query), columns)
        return 0
    if args.filter:
        raise CtlError(f"retained {args.action}: --topic is for list; give the topic", EXIT_USAGE)
    if not args.topic:
        raise CtlError(f"retained {args.action}: give a topic", EXIT_USAGE)
    path = "/api/v1/retained/" + quote(args.topic, safe="")
    if args.action == "get":

        def render(m: dict[str, Any]) -> str:
            payload = m["payload"] if m["payload"] is not None else "base64:" + m["payload_base64"]
            return f"{m['topic']} (qos {m['qos']}, {m['size']} bytes)\n{payload}"

        out.emit(api.call("GET", path), render)
    else:
        out.emit(api.call("DELETE", path), lambda r: f"deleted retained message on {r['deleted']}")
    return 0


def _publish(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    payload = args.payload
    if payload == "-":
        payload = sys.stdin.read()
    body = {
        "topic": args.topic,
        "payload": payload,
        "qos": args.qos,
        "retain": args.retain,
        "encoding": "base64" if args.base64 else "plain",
    }
    result = api.call("POST", "/api/v1/publish", body=body)
    out.emit(
        result,
        lambda r: (
            f"published {r['size']} bytes to {r['topic']} (qos {r['qos']}"
            f"{', retained' if r['retain'] else ''}): reached {r['reached']} subscriber(s)"
        ),
    )
    return 0


def _config(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    def render(cfg: dict[str, Any]) -> str:
        parts = []
        for section, values in cfg.items():
            if isinstance(values, list):
                for item in values:
                    parts.append(f"[[{section}]]\n" + formatRecord(item))
            else:
                parts.append(f"[{section}]\n" + formatRecord(values))
        return "\n\n".join(parts)

    out.emit(api.call("GET", "/api/v1/config"), render)
    return 0


def _mqttAddress(api: AdminClient, override: str | None) -> tuple[str, int]:
    if override:
        host, _, port = override.rpartition(":")
        if not port.isdigit():
            raise CtlError(f"--mqtt: expected HOST:PORT, got {override!r}", EXIT_USAGE)
        return host or "127.0.0.1", int(port)
    for listener in api.call("GET", "/api/v1/listeners")["data"]:
        if (
            listener["protocol"] == "mqtt"
            and listener["transport"] == "tcp"
            and listener["running"]
        ):
            host = listener["bind"]
            if host in ("0.0.0.0", "::"):
                host = urlsplit(api.url).hostname or "127.0.0.1"
            return host, int(listener["port"])
    raise CtlError("the node has no running MQTT/TCP listener (give --mqtt HOST:PORT)")


def _subscribe(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    from robustmq.protocols.mqtt._packets import Publish
    from robustmq.testing.rawclient import ConnectionClosed, RawClient

    host, port = _mqttAddress(api, args.mqtt)
    clientId = f"robustmq-ctl-{uuid.uuid4().hex[:8]}"
    try:
        client = RawClient(port, host, timeout=args.timeout or 10.0)
    except OSError as e:
        raise CtlError(f"cannot connect to MQTT at {host}:{port}: {e}", EXIT_UNREACHABLE) from None
    received = 0
    with client:
        connack = client.connect(clientId, keepAlive=0, username=args.mqtt_user)
        if connack.returnCode != 0:
            raise CtlError(f"MQTT {host}:{port} refused CONNECT (return code {connack.returnCode})")
        suback = client.subscribe([(args.filter, args.qos)])
        if suback.returnCodes[0] == 0x80:
            raise CtlError(f"MQTT {host}:{port} refused the subscription to {args.filter!r}")
        if not out.asJSON:
            print(f"subscribed to {args.filter} at {host}:{port}", file=sys.stderr)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while args.count == 0 or received < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                packet = client.expect(Publish, timeout=remaining or 3600.0, keepOthers=True)
            except TimeoutError:
                continue
            except ConnectionClosed:
                raise CtlError(f"MQTT {host}:{port} closed the connection") from None
            if packet.qos:
                client.ack(packet)
            received += 1
            _printMessage(out, packet)
        client.disconnect()
    if received == 0 or (args.count and received < args.count):
        raise CtlError(f"received {received} message(s) on {args.filter!r} within {args.timeout}s")
    return 0


def _printMessage(out: Output, packet: Any) -> None:
    payload: bytes = bytes(packet.payload)
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if out.asJSON:
        record = {
            "topic": packet.topic,
            "qos": packet.qos,
            "retain": bool(packet.retain),
            "payload": text,
            "payload_base64": base64.b64encode(payload).decode(),
        }
        print(json.dumps(record), file=out.out, flush=True)
    else:
        shown = text if text is not None else "base64:" + base64.b64encode(payload).decode()
        print(f"{packet.topic} {shown}", file=out.out, flush=True)


# Users, ACL rules and bans (docs/security.md)


def _readPassword(args: argparse.Namespace) -> str:
    """The new password: C{--password} (or the positional argument), else a prompt on a
    terminal, else the first line of standard input (a pipe, a file, a here-string)."""
    if args.secret is not None and args.new_password is not None:
        raise CtlError(f"user {args.action}: give the password once (--password)", EXIT_USAGE)
    given = args.new_password if args.new_password is not None else args.secret
    if given is not None:
        return str(given)
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        import getpass

        first = getpass.getpass(f"password for {args.name}: ")
        if first != getpass.getpass("again: "):
            raise CtlError("the passwords differ", EXIT_USAGE)
        return first
    line = stdin.readline() if stdin is not None else ""
    password = line.rstrip("\r\n")
    if not password:
        raise CtlError(
            f"user {args.action}: no password: give --password PASSWORD, type it at the "
            "prompt of a terminal, or send it on standard input (echo PASSWORD | robustmq ctl "
            f"user {args.action} {args.name})",
            EXIT_USAGE,
        )
    return password


def _user(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    columns = [("USER", "username"), ("SUPERUSER", "superuser")]
    if args.action == "list":
        out.emit(api.call("GET", "/api/v1/users"), lambda r: formatTable(r["data"], columns))
        return 0
    if not args.name:
        raise CtlError(f"user {args.action}: give a user name", EXIT_USAGE)
    path = "/api/v1/users/" + quote(args.name, safe="")
    if args.action == "add":
        body = {"username": args.name, "password": _readPassword(args), "superuser": args.superuser}
        result = api.call("POST", "/api/v1/users", body=body)
        out.emit(result, lambda r: f"added user {r['username']}")
    elif args.action == "passwd":
        result = api.call("PUT", path, body={"password": _readPassword(args)})
        out.emit(result, lambda r: f"changed the password of {r['username']}")
    else:
        out.emit(api.call("DELETE", path), lambda r: f"deleted user {r['deleted']}")
    return 0


ACL_COLUMNS = [
    ("ID", "id"),
    ("SOURCE", "source"),
    ("PERMISSION", "permission"),
    ("ACTION", "action"),
    ("TOPICS", "topics"),
    ("USER", "username"),
    ("CLIENT ID", "clientid"),
    ("ADDRESS", "ipaddress"),
]


def _acl(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":

        def render(r: dict[str, Any]) -> str:
            rows = [{**rule, "topics": " ".join(rule["topics"])} for rule in r["data"]]
            return f"{formatTable(rows, ACL_COLUMNS)}\n(no match: {r['no_match']})"

        out.emit(api.call("GET", "/api/v1/acl"), render)
        return 0
    if args.action == "del":
        if not args.permission:
            raise CtlError("acl del: give the rule id", EXIT_USAGE)
        path = "/api/v1/acl/" + quote(args.permission, safe="")
        out.emit(api.call("DELETE", path), lambda r: f"deleted rule {r['deleted']}")
        return 0
    if args.permission not in ("allow", "deny") or not args.topics:
        raise CtlError("acl add: give allow|deny and at least one --topic", EXIT_USAGE)
    rule: dict[str, Any] = {
        "permission": args.permission,
        "action": args.rule_action,
        "topics": args.topics,
    }
    for field in ("username", "clientid", "ipaddress"):
        if getattr(args, field):
            rule[field] = getattr(args, field)
    out.emit(api.call("POST", "/api/v1/acl", body=rule), lambda r: f"added rule {r['id']}")
    return 0


AMQP_PERMISSION_COLUMNS = [
    ("VHOST", "vhost"),
    ("USER", "user"),
    ("CONFIGURE", "configure"),
    ("WRITE", "write"),
    ("READ", "read"),
]


def _amqpPermissions(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    """C{amqp permissions list [USER]|set USER VHOST CONF WRITE READ|clear USER VHOST}."""
    words = list(args.words)
    action = words.pop(0) if words else "list"
    if action == "list":
        query = {"user": words[0] if words else None, "vhost": args.vhost}

        def render(r: dict[str, Any]) -> str:
            return f"{formatTable(r['data'], AMQP_PERMISSION_COLUMNS)}\n(no match: {r['no_match']})"

        out.emit(api.call("GET", "/api/v1/amqp/permissions", query), render)
        return 0
    if action == "set":
        if len(words) != 5:
            raise CtlError("amqp permissions set: give USER VHOST CONF WRITE READ", EXIT_USAGE)
        user, vhost, conf, write, read = words
        path = f"/api/v1/amqp/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
        body = {"configure": conf, "write": write, "read": read}
        out.emit(
            api.call("PUT", path, body=body),
            lambda r: f"set permissions of {r['user']} in vhost {r['vhost']}",
        )
        return 0
    if action == "clear":
        if len(words) != 2:
            raise CtlError("amqp permissions clear: give USER VHOST", EXIT_USAGE)
        user, vhost = words
        path = f"/api/v1/amqp/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
        out.emit(
            api.call("DELETE", path),
            lambda r: (
                f"cleared permissions of {r['cleared']['user']} in vhost {r['cleared']['vhost']}"
            ),
        )
        return 0
    raise CtlError(f"amqp permissions: unknown action {action!r} (list, set, clear)", EXIT_USAGE)


KAFKA_ACL_COLUMNS = [
    ("RESOURCE", "resource_type"),
    ("NAME", "resource_name"),
    ("PATTERN", "pattern_type"),
    ("PRINCIPAL", "principal"),
    ("HOST", "host"),
    ("OPERATION", "operation"),
    ("PERMISSION", "permission"),
]


def _kafkaAcls(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    """C{kafka acls list}: the Kafka ACL bindings (managed with Kafka's AdminClient or the API)."""
    if args.name not in (None, "list"):
        raise CtlError(f"kafka acls: unknown action {args.name!r} (list)", EXIT_USAGE)

    def render(r: dict[str, Any]) -> str:
        return f"{formatTable(r['data'], KAFKA_ACL_COLUMNS)}\n(no match: {r['no_match']})"

    out.emit(api.call("GET", "/api/v1/kafka/acls", {"principal": args.principal}), render)
    return 0


def _ban(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "list":
        columns = [
            ("KIND", "kind"),
            ("VALUE", "value"),
            ("UNTIL", "until"),
            ("REASON", "reason"),
            ("BY", "by"),
        ]

        def render(r: dict[str, Any]) -> str:
            rows = [
                {
                    **b,
                    "until": "never"
                    if b["until"] is None
                    else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["until"])),
                }
                for b in r["data"]
            ]
            return formatTable(rows, columns)

        out.emit(api.call("GET", "/api/v1/bans"), render)
        return 0
    if not args.kind or not args.value:
        raise CtlError(f"ban {args.action}: give KIND (clientid|username|ip) and VALUE", EXIT_USAGE)
    if args.action == "add":
        body: dict[str, Any] = {"kind": args.kind, "value": args.value, "reason": args.reason}
        if args.duration is not None:
            body["duration"] = args.duration
        out.emit(
            api.call("POST", "/api/v1/bans", body=body),
            lambda r: f"banned {r['kind']} {r['value']}",
        )
    else:
        path = f"/api/v1/bans/{quote(args.kind, safe='')}/{quote(args.value, safe='/')}"
        out.emit(api.call("DELETE", path), lambda r: f"lifted ban on {r['deleted']}")
    return 0


# Kafka (docs/kafka.md)

KAFKA_TOPIC_COLUMNS = [
    ("TOPIC", "name"),
    ("PARTITIONS", "partitions"),
    ("MESSAGES", "messages"),
    ("BYTES", "bytes"),
    ("OVERRIDES", "overrides"),
]
PARTITION_COLUMNS = [
    ("PARTITION", "partition"),
    ("LOG START", "log_start_offset"),
    ("LOG END", "log_end_offset"),
    ("LAST STABLE", "last_stable_offset"),
    ("MESSAGES", "messages"),
    ("BYTES", "bytes"),
]
GROUP_COLUMNS = [
    ("GROUP", "group_id"),
    ("STATE", "state"),
    ("PROTOCOL", "protocol"),
    ("MEMBERS", "members"),
    ("LAG", "lag"),
]
#: kafka-consumer-groups.sh --describe's columns
LAG_COLUMNS = [
    ("GROUP", "group"),
    ("TOPIC", "topic"),
    ("PARTITION", "partition"),
    ("CURRENT-OFFSET", "committed_offset"),
    ("LOG-END-OFFSET", "log_end_offset"),
    ("LAG", "lag"),
    ("CONSUMER-ID", "member_id"),
]


def _all(api: AdminClient, path: str, query: dict[str, Any] | None = None) -> list[Any]:
    """Every row of a paged list (pages of the server's largest size, bounded)."""
    rows: list[Any] = []
    page = 1
    while page <= 1000:
        r = api.call("GET", path, {**(query or {}), "page": page, "limit": 1000})
        rows.extend(r["data"])
        if not r["meta"]["hasnext"]:
            break
        page += 1
    return rows


def _kafka(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    what = args.what
    if what == "acls":
        return _kafkaAcls(api, out, args)
    if args.principal is not None:
        raise CtlError("kafka: --principal is for acls", EXIT_USAGE)
    if what == "topics":
        query = {"topic": args.name, **_paging(args)}
        result = api.call("GET", "/api/v1/kafka/topics", query)
        rows = [{**t, "overrides": ",".join(t["overrides"])} for t in result["data"]]
        out.page({**result, "data": rows} if not out.asJSON else result, KAFKA_TOPIC_COLUMNS)
        return 0
    if what == "topic":
        if not args.name:
            raise CtlError("kafka topic: give a topic name", EXIT_USAGE)
        t = api.call("GET", "/api/v1/kafka/topics/" + quote(args.name, safe=""))

        def render(t: dict[str, Any]) -> str:
            head = (
                f"topic {t['name']}: {t['partitions']} partition(s), {t['messages']} messages, "
                f"{_cell(t['bytes'])} bytes"
            )
            configs = formatRecord(t["configs"])
            return (
                f"{head}\n\n{formatTable(t['partition_details'], PARTITION_COLUMNS)}\n\n{configs}"
            )

        out.emit(t, render)
        return 0
    if what == "groups":
        query = {"group": args.name, **_paging(args)}
        result = api.call("GET", "/api/v1/kafka/groups", query)
        rows = [{**g, "members": len(g["members"])} for g in result["data"]]
        out.page({**result, "data": rows} if not out.asJSON else result, GROUP_COLUMNS)
        return 0
    # lag [GROUP]: one row per partition, as kafka-consumer-groups.sh --describe
    if args.name:
        groups = [api.call("GET", "/api/v1/kafka/groups/" + quote(args.name, safe=""))]
    else:
        groups = _all(api, "/api/v1/kafka/groups")
    rows = [{"group": g["group_id"], **o} for g in groups for o in g["offsets"]]
    out.emit(
        {"data": rows},
        lambda r: (
            formatTable(r["data"], LAG_COLUMNS)
            + f"\n(total lag: {sum(x['lag'] or 0 for x in r['data'])})"
        ),
    )
    return 0


# AMQP (docs/amqp.md)

QUEUE_COLUMNS = [
    ("NAME", "name"),
    ("MESSAGES", "messages"),
    ("READY", "messages_ready"),
    ("UNACKED", "messages_unacknowledged"),
    ("CONSUMERS", "consumers"),
    ("PUBLISH/S", "publish_rate"),
    ("DELIVER/S", "deliver_rate"),
    ("DURABLE", "durable"),
    ("DROPPED", "dropped"),
]
EXCHANGE_COLUMNS = [
    ("NAME", "name"),
    ("TYPE", "type"),
    ("DURABLE", "durable"),
    ("AUTO DELETE", "auto_delete"),
    ("INTERNAL", "internal"),
    ("BINDINGS", "bindings"),
]
BINDING_COLUMNS = [
    ("SOURCE", "source"),
    ("DESTINATION", "destination"),
    ("TYPE", "destination_type"),
    ("ROUTING KEY", "routing_key"),
    ("ARGUMENTS", "arguments"),
]
AMQP_CONNECTION_COLUMNS = [
    ("PEER", "peer"),
    ("USER", "user"),
    ("VHOST", "vhost"),
    ("CHANNELS", "channels"),
    ("PRODUCT", "product"),
    ("BLOCKED", "blocked"),
]
CHANNEL_COLUMNS = [
    ("CHANNEL", "name"),
    ("USER", "user"),
    ("CONSUMERS", "consumers"),
    ("UNACKED", "messages_unacknowledged"),
    ("PREFETCH", "prefetch_count"),
    ("CONFIRM", "confirm"),
]
VHOST_COLUMNS = [
    ("NAME", "name"),
    ("QUEUES", "queues"),
    ("EXCHANGES", "exchanges"),
    ("MESSAGES", "messages"),
    ("CONNECTIONS", "connections"),
]


def _dropped(d: dict[str, int]) -> str:
    return ",".join(f"{reason}:{n}" for reason, n in d.items())


def _amqp(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    what = args.what
    if what == "permissions":
        return _amqpPermissions(api, out, args)
    if len(args.words) > 1:
        raise CtlError(f"amqp {what}: one name at most, got {args.words}", EXIT_USAGE)
    # As rabbitmqctl: the default virtual host unless -p/--vhost names another.
    vhost = args.vhost or "/"
    args.name = args.words[0] if args.words else None
    if what == "purge":
        if not args.name:
            raise CtlError("amqp purge: give a queue name", EXIT_USAGE)
        path = f"/api/v1/amqp/queues/{quote(vhost, safe='')}/{quote(args.name, safe='')}/contents"
        out.emit(
            api.call("DELETE", path),
            lambda r: f"purged {r['messages']} message(s) from {r['purged']} in vhost {r['vhost']}",
        )
        return 0
    if what == "vhosts":
        out.emit(
            api.call("GET", "/api/v1/amqp/vhosts"), lambda r: formatTable(r["data"], VHOST_COLUMNS)
        )
        return 0
    if what in ("connections", "channels"):
        columns = AMQP_CONNECTION_COLUMNS if what == "connections" else CHANNEL_COLUMNS
        out.page(api.call("GET", f"/api/v1/amqp/{what}", _paging(args)), columns)
        return 0
    query = {"vhost": vhost, **_paging(args)}
    if what == "queues":
        if args.name:
            query["name"] = args.name
        result = api.call("GET", "/api/v1/amqp/queues", query)
        columns = QUEUE_COLUMNS
    elif what == "exchanges":
        result = api.call("GET", "/api/v1/amqp/exchanges", query)
        columns = EXCHANGE_COLUMNS
    else:
        result = api.call("GET", "/api/v1/amqp/bindings", query)
        columns = BINDING_COLUMNS
    if out.asJSON:
        out.emit(result, str)
        return 0
    rows = []
    for row in result["data"]:
        row = dict(row)
        if what == "queues":
            row["dropped"] = _dropped(row["dropped"])
        if what == "exchanges" and row["name"] == "":
            row["name"] = "(AMQP default)"
        if what == "bindings" and row["source"] == "":
            row["source"] = "(AMQP default)"
        if what == "bindings":
            row["arguments"] = row["arguments"] or None
        rows.append(row)
    print(f"Listing {what} for vhost {vhost} ...", file=out.out)
    out.page({**result, "data": rows}, columns)
    return 0


# Argument parsing


def renderCheck(report: dict[str, Any]) -> str:
    """A storage check report as text: a summary line, then every damaged range and problem."""
    head = (
        f"{report['data_dir']}: {report['shards']} shards, {report['segments']} segments, "
        f"{report['records']} records, {report['bytes']} bytes: "
        + ("ok" if report["ok"] else "DAMAGED" if report["damaged"] else "problems")
    )
    lines = [head]
    if report["damaged"]:
        lines += ["", "damaged ranges:"]
        lines.append(
            formatTable(
                report["damaged"],
                [
                    ("SHARD", "shard"),
                    ("SEGMENT", "segment"),
                    ("FIRST OFFSET", "first_offset"),
                    ("LAST OFFSET", "last_offset"),
                    ("START BYTE", "start_byte"),
                    ("END BYTE", "end_byte"),
                ],
            )
        )
    if report["problems"]:
        lines += ["", "problems:"]
        lines.append(
            formatTable(
                report["problems"], [("SHARD", "shard"), ("KIND", "kind"), ("DETAIL", "detail")]
            )
        )
    return "\n".join(lines)


def _storage(api: AdminClient, out: Output, args: argparse.Namespace) -> int:
    if args.action == "status":
        if args.data_dir:
            raise CtlError("storage status needs a running node (no --data-dir)", EXIT_USAGE)
        st = api.call("GET", "/api/v1/storage")
        out.emit(
            st,
            lambda s: (
                formatRecord({"backend": s["backend"], **s["health"]})
                + ("\n\n" + formatRecord(s["counters"]) if s["counters"] else "")
            ),
        )
        return 0
    if args.data_dir:
        from robustmq.storage.check import StoreInUseError, checkDataDir

        try:
            report = checkDataDir(args.data_dir, args.index_interval, args.force)
        except StoreInUseError as e:
            raise CtlError(str(e), EXIT_API) from None
        except OSError as e:
            raise CtlError(str(e), EXIT_USAGE) from None
    else:
        report = api.call("GET", "/api/v1/storage/check")
    out.emit(report, renderCheck)
    return 0 if report["ok"] else EXIT_DAMAGED


def _addPaging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page", type=int, default=None, help="page number (from 1)")
    p.add_argument("--limit", type=int, default=None, help="rows per page (server default 100)")


#: Every command's examples, shown by C{robustmq ctl COMMAND --help}; a test
#: (tests/admin/test_ctl_examples.py) runs each of them against a live node.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "status": ("robustmq ctl status", "robustmq ctl --json status"),
    "workers": ("robustmq ctl workers",),
    "listeners": ("robustmq ctl listeners",),
    "cluster": ("robustmq ctl cluster status",),
    "config": ("robustmq ctl config", "robustmq ctl --json config"),
    # (`storage check` needs a segment store: the examples' node keeps memory only)
    "storage": ("robustmq ctl storage status",),
    "clients": (
        "robustmq ctl clients",
        "robustmq ctl clients list --client-id sensor",
        "robustmq ctl clients show sensor-1",
        "robustmq ctl clients kick sensor-1",
    ),
    "sessions": (
        "robustmq ctl sessions --offline",
        "robustmq ctl sessions show sensor-1",
        "robustmq ctl sessions delete sensor-1",
    ),
    "subscriptions": ("robustmq ctl subscriptions --topic 'sensors/#'",),
    "topics": ("robustmq ctl topics", "robustmq ctl topics --topic sensors"),
    "retained": (
        "robustmq ctl retained list --topic 'sensors/#'",
        "robustmq ctl retained get sensors/kitchen/temp",
        "robustmq ctl retained delete sensors/kitchen/temp",
    ),
    "publish": (
        "robustmq ctl publish sensors/kitchen/temp 21.5 --qos 1 --retain",
        "echo hello | robustmq ctl publish greetings -",
    ),
    "subscribe": ("robustmq ctl subscribe 'sensors/#' --count 1 --timeout 5",),
    "user": (
        "robustmq ctl user add alice --password s3cret",
        "echo s3cret | robustmq ctl user add bob --superuser",
        "robustmq ctl user passwd alice --password n3w-s3cret",
        "robustmq ctl user list",
        "robustmq ctl user del bob",
    ),
    "acl": (
        "robustmq ctl acl add allow --topic 'sensors/%u/#' --username alice",
        "robustmq ctl acl add deny --action publish --topic '$SYS/#'",
        "robustmq ctl acl list",
    ),
    "ban": (
        "robustmq ctl ban add clientid bad-client --duration 3600 --reason spam",
        "robustmq ctl ban list",
        "robustmq ctl ban del clientid bad-client",
    ),
    "kafka": (
        "robustmq ctl kafka topics",
        "robustmq ctl kafka topic orders",
        "robustmq ctl kafka groups",
        "robustmq ctl kafka lag billing",
        "robustmq ctl --json kafka lag",
        "robustmq ctl kafka acls --principal User:alice",
    ),
    "amqp": (
        "robustmq ctl amqp queues",
        "robustmq ctl amqp queues tasks --vhost /",
        "robustmq ctl amqp exchanges",
        "robustmq ctl amqp bindings",
        "robustmq ctl amqp connections",
        "robustmq ctl amqp channels",
        "robustmq ctl amqp vhosts",
        "robustmq ctl amqp purge tasks",
        "robustmq ctl amqp permissions set alice / '^alice\\.' '.*' '.*'",
        "robustmq ctl amqp permissions list alice",
        "robustmq ctl amqp permissions clear alice /",
    ),
}


def _command(
    sub: Any, name: str, help: str, run: Callable[..., int], description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its L{EXAMPLES}."""
    examples = EXAMPLES.get(name, ())
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    return p


def buildParser() -> argparse.ArgumentParser:
    """The `robustmq ctl` argument parser."""
    parser = argparse.ArgumentParser(
        prog="robustmq ctl",
        description="Inspect and manage a running RobustMQ node through its admin HTTP API. "
        "Options before COMMAND are global; `robustmq ctl COMMAND --help` shows examples.",
        epilog="exit codes: 0 ok, 1 API error or nothing received, 2 usage, "
        "3 cannot reach the node, 4 unauthorized (401), 5 not found (404), "
        "6 storage check found damage",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(ENV_URL, DEFAULT_URL),
        help=f"admin API (${ENV_URL}, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=os.environ.get(ENV_TOKEN), help=f"bearer token (${ENV_TOKEN})"
    )
    parser.add_argument(
        "--user", default=os.environ.get(ENV_USER), help=f"basic auth user (${ENV_USER})"
    )
    parser.add_argument(
        "--password",
        default=os.environ.get(ENV_PASSWORD),
        help=f"basic auth password for the admin API (${ENV_PASSWORD}); "
        "before COMMAND (`user add NAME --password P` sets NAME's password)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of tables"
    )
    parser.add_argument("--http-timeout", type=float, default=10.0, help="seconds per HTTP request")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(sub, "status", "node, workers, cluster and counters", _status)
    _command(
        sub, "workers", "the node's worker processes: connections, CPU, memory, restarts", _workers
    )
    _command(sub, "listeners", "listeners and their sockets", _listeners)
    p = _command(
        sub,
        "cluster",
        "cluster status: every node, its roles, state and uptime",
        _cluster,
        "Every broker of the cluster as this node sees it (exit 5 on a node not in a cluster).",
    )
    p.add_argument("action", choices=("status",), nargs="?", default="status")
    _command(sub, "config", "effective configuration (secrets hidden)", _config)
    p = _command(
        sub,
        "storage",
        "storage: status (health, fault counters), check (every damaged record range)",
        _storage,
        "status: whether the node's store takes writes, and its fault counters.  check: "
        "verify every record's CRC and list every damaged range (exit 6 if any), through "
        "the running node, or offline with --data-dir on a directory no node has open.",
    )
    p.add_argument("action", choices=("check", "status"), nargs="?", default="check")
    p.add_argument(
        "--data-dir",
        help="check this data directory offline (no node may have it open) instead of "
        "asking the running node",
    )
    p.add_argument(
        "--force", action="store_true", help="offline check of a directory a node has open"
    )
    p.add_argument(
        "--index-interval",
        type=int,
        default=4096,
        help="[storage] index_interval_bytes of the data directory (offline check)",
    )

    p = _command(sub, "clients", "connected clients: list, show ID, kick ID", _clients)
    p.add_argument("action", choices=("list", "show", "kick"), nargs="?", default="list")
    p.add_argument("client", nargs="?", help="client id (show, kick)")
    p.add_argument("--client-id", help="filter: substring of the client id")
    p.add_argument("--username", help="filter: exact user name")
    _addPaging(p)

    p = _command(sub, "sessions", "sessions: list, show ID, delete ID", _sessions)
    p.add_argument("action", choices=("list", "show", "delete"), nargs="?", default="list")
    p.add_argument("client", nargs="?", help="client id (show, delete)")
    p.add_argument("--client-id", help="filter: substring of the client id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--online", dest="online", action="store_const", const=True, default=None)
    group.add_argument("--offline", dest="online", action="store_const", const=False)
    _addPaging(p)

    p = _command(sub, "subscriptions", "subscriptions", _subscriptions)
    p.add_argument("--client-id", help="filter: substring of the client id")
    p.add_argument("--topic", help="filter: exact topic filter")
    _addPaging(p)

    p = _command(sub, "topics", "subscribed topic filters and subscriber counts", _topics)
    p.add_argument("--topic", help="filter: substring of the topic filter")
    _addPaging(p)

    p = _command(
        sub,
        "retained",
        "retained messages: list [--topic FILTER], get TOPIC, delete TOPIC",
        _retained,
    )
    p.add_argument("action", choices=("list", "get", "delete"), nargs="?", default="list")
    p.add_argument("topic", nargs="?", help="topic (get, delete); list also takes the filter here")
    p.add_argument("--topic", dest="filter", help="list: an MQTT filter, e.g. 'sensors/#'")
    _addPaging(p)

    p = _command(sub, "publish", "publish a message through the admin API", _publish)
    p.add_argument("topic")
    p.add_argument("payload", nargs="?", default="", help="text payload; '-' reads standard input")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    p.add_argument("--retain", action="store_true")
    p.add_argument("--base64", action="store_true", help="the payload argument is base64")

    p = _command(
        sub, "subscribe", "quick check: subscribe over MQTT and print messages", _subscribe
    )
    p.add_argument("filter", help="topic filter, e.g. 'sensors/#'")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    p.add_argument("--count", type=int, default=1, help="stop after N messages (0: until timeout)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (0: forever)")
    p.add_argument("--mqtt", help="HOST:PORT of the MQTT listener (default: asked from the API)")
    p.add_argument("--mqtt-user", help="MQTT user name to connect with")

    p = _command(
        sub,
        "user",
        "built-in users: list, add NAME [--superuser], passwd NAME, del NAME",
        _user,
        "Built-in users. The password of add and passwd comes from --password, else a prompt "
        "on a terminal, else the first line of standard input.",
    )
    p.add_argument("action", choices=("list", "add", "passwd", "del"), nargs="?", default="list")
    p.add_argument("name", nargs="?", help="user name")
    p.add_argument("secret", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "--password",
        dest="new_password",
        metavar="PASSWORD",
        help="add, passwd: the user's password (visible to other local users in the process "
        "list: prefer the prompt, or pipe it on standard input)",
    )
    p.add_argument("--superuser", action="store_true", help="add: the user skips ACL checks")

    p = _command(sub, "acl", "ACL rules: list, add allow|deny --topic T [...], del ID", _acl)
    p.add_argument("action", choices=("list", "add", "del"), nargs="?", default="list")
    p.add_argument("permission", nargs="?", help="add: allow or deny; del: the rule id")
    p.add_argument(
        "--action",
        dest="rule_action",
        choices=("publish", "subscribe", "all"),
        default="all",
        help="what the rule covers (default all)",
    )
    p.add_argument(
        "--topic",
        dest="topics",
        action="append",
        default=[],
        help="topic filter (repeatable); %%u = user name, %%c = client id, 'eq T' = exactly T",
    )
    p.add_argument("--username", help="only for this user")
    p.add_argument("--clientid", help="only for this client id")
    p.add_argument("--ipaddress", help="only for this IP address or CIDR")

    p = _command(sub, "ban", "bans: list, add KIND VALUE [--duration S], del KIND VALUE", _ban)
    p.add_argument("action", choices=("list", "add", "del"), nargs="?", default="list")
    p.add_argument("kind", nargs="?", choices=("clientid", "username", "ip"))
    p.add_argument("value", nargs="?", help="client id, user name, or IP address / CIDR")
    p.add_argument("--duration", type=float, help="seconds (default: until lifted)")
    p.add_argument("--reason", default="", help="why (shown in the list and the log)")

    p = _command(
        sub,
        "kafka",
        "Kafka: topics [FILTER], topic NAME, groups [FILTER], lag [GROUP], acls",
        _kafka,
        "Kafka topics (partitions, offsets, sizes) and consumer groups (members, committed "
        "offsets and lag per partition, as kafka-consumer-groups.sh --describe).",
    )
    p.add_argument(
        "what",
        choices=("topics", "topic", "groups", "lag", "acls"),
        metavar="WHAT",
        help="topics, topic, groups, lag or acls",
    )
    p.add_argument(
        "name",
        nargs="?",
        help="topic or group (a substring for topics and groups); acls: list (the default)",
    )
    p.add_argument("--principal", help="acls: only bindings of this principal (User:NAME)")
    _addPaging(p)

    p = _command(
        sub,
        "amqp",
        "AMQP: queues, exchanges, bindings, connections, channels, vhosts, purge QUEUE, "
        "permissions list|set|clear",
        _amqp,
        "AMQP 0-9-1 state, as rabbitmqctl list_queues / list_exchanges / list_bindings show it; "
        "purge drops a queue's ready messages.",
    )
    p.add_argument(
        "what",
        choices=(
            "queues",
            "exchanges",
            "bindings",
            "connections",
            "channels",
            "vhosts",
            "purge",
            "permissions",
        ),
        metavar="WHAT",
        help="queues, exchanges, bindings, connections, channels, vhosts, purge or permissions",
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="ARG",
        help="queues: substring of the name; purge: the queue; permissions: list [USER] | "
        "set USER VHOST CONF WRITE READ | clear USER VHOST",
    )
    p.add_argument(
        "--vhost",
        "-p",
        default=None,
        help="virtual host (default /; permissions list: all of them)",
    )
    _addPaging(p)
    return parser


def main(argv: list[str]) -> int:
    """Run one `robustmq ctl` command; returns the exit code."""
    parser = buildParser()
    args = parser.parse_args(argv)
    api = AdminClient(args.url, args.token, args.user, args.password, args.http_timeout)
    out = Output(args.json)
    try:
        return int(args.run(api, out, args))
    except CtlError as e:
        print(f"robustmq ctl: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


__all__ = [
    "AdminClient",
    "CtlError",
    "buildParser",
    "formatTable",
    "main",
    "renderCheck",
    "renderCluster",
]
