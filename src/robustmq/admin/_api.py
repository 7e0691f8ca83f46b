"""The admin API's endpoints: JSON views of the broker and the few actions on it.

Every route is listed in L{AdminAPI.routes}; C{openapi.json} (next to this
module) documents each of them and a test keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from robustmq.admin._http import (
    APIError,
    RawResponse,
    Route,
    jsonBody,
    queryArgs,
)
from robustmq.admin._metrics import Metrics, storeHealth
from robustmq.admin._protocols import ProtocolsAPI
from robustmq.admin._security import SecurityAPI
from robustmq.config import Settings, maskedSettings
from robustmq.core.message import Message
from robustmq.core.topics import InvalidTopic, validateTopicFilter, validateTopicName
from robustmq.workers._proc import cpuSeconds, rssBytes

if TYPE_CHECKING:
    from robustmq.core.broker import Broker
    from robustmq.protocols.mqtt._session import Session

#: Page size when a list request gives no C{limit}.
DEFAULT_LIMIT = 100

#: Seconds C{GET /api/v1/cluster} waits for the cluster's answer before a 504.
CLUSTER_STATUS_TIMEOUT = 5.0

Params = dict[str, str]


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _qos(value: Any) -> int:
    """The granted QoS of a subscription entry (an int, or MQTT 5 subscription options)."""
    return value if isinstance(value, int) else int(getattr(value, "qos", 0))


def _identity(conn: Any) -> str:
    """How operators name a connection: its client id, else its peer address (AMQP)."""
    return str(getattr(conn, "clientId", None) or getattr(conn, "peer", "") or id(conn))


def _protocolOf(conn: Any) -> str:
    listener = getattr(conn, "listener", None)
    if listener is not None and getattr(listener, "protocol", None):
        return str(listener.protocol)
    parts = type(conn).__module__.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "protocols" else "unknown"


def describeConnection(conn: Any) -> dict[str, Any]:
    """A JSON-able summary of any broker connection (protocols may offer C{describe()})."""
    describe = getattr(conn, "describe", None)
    if describe is not None:
        return dict(describe())
    listener = getattr(conn, "listener", None)
    return {
        "client_id": _identity(conn),
        "username": getattr(conn, "username", None) or getattr(conn, "user", None),
        "peer": getattr(conn, "peer", ""),
        "listener": getattr(listener, "label", None),
        "protocol": _protocolOf(conn),
    }


def _boolArg(q: dict[str, str], name: str) -> bool | None:
    value = q.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise APIError(400, f"query parameter {name!r}: expected true or false, got {value!r}")


def _intArg(q: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"query parameter {name!r}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise APIError(400, f"query parameter {name!r}: {value} is not within {low}..{high}")
    return value


class AdminAPI:
    """The endpoint handlers over one broker.

    @param listenerServices: returns the node's listener services (objects with
        C{listener} settings, a C{port} once bound and a C{factory}).
    @param adminAddress: returns the admin service's own bound (host, port), if bound.
    """

    log = Logger()

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        listenerServices: Callable[[], Iterable[Any]],
        adminAddress: Callable[[], tuple[str, int] | None],
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.listenerServices = listenerServices
        self.adminAddress = adminAddress
        self.startedAt = time.time()
        self.metrics = Metrics(broker, self.listenerServices)
        self._openapi = (resources.files("robustmq.admin") / "openapi.json").read_bytes()

    def routes(self) -> list[Route]:
        """Every endpoint (the OpenAPI document lists the same ones)."""
        v1 = "/api/v1"
        return [
            Route("GET", "/health/live", self.live, auth=False),
            Route("GET", "/health/ready", self.ready, auth=False),
            Route("GET", "/api/openapi.json", self.openapi, auth=False),
            Route("GET", "/metrics", self.prometheus),
            Route("GET", f"{v1}/status", self.status),
            Route("GET", f"{v1}/nodes", self.nodes),
            Route("GET", f"{v1}/cluster", self.cluster),
            Route("GET", f"{v1}/workers", self.workers),
            Route("GET", f"{v1}/listeners", self.listeners),
            Route("GET", f"{v1}/config", self.config),
            Route("GET", f"{v1}/clients", self.clients),
            Route("GET", f"{v1}/clients/{{clientId}}", self.client, greedy=True),
            Route("DELETE", f"{v1}/clients/{{clientId}}", self.kick, greedy=True),
            Route("GET", f"{v1}/sessions", self.sessions),
            Route("GET", f"{v1}/sessions/{{clientId}}", self.session, greedy=True),
            Route("DELETE", f"{v1}/sessions/{{clientId}}", self.discardSession, greedy=True),
            Route("GET", f"{v1}/subscriptions", self.subscriptions),
            Route("GET", f"{v1}/topics", self.topics),
            Route("GET", f"{v1}/retained", self.retainedList),
            Route("GET", f"{v1}/retained/{{topic}}", self.retainedGet, greedy=True),
            Route("DELETE", f"{v1}/retained/{{topic}}", self.retainedDelete, greedy=True),
            Route("POST", f"{v1}/publish", self.publish),
            Route("GET", f"{v1}/storage", self.storageStatus),
            Route("GET", f"{v1}/storage/check", self.storageCheck),
            # Users, ACL rules and bans (robustmq.admin._security, docs/security.md).
            *SecurityAPI(self.broker).routes(v1),
            # Kafka topics and groups; AMQP vhosts, queues, exchanges, bindings, connections.
            *ProtocolsAPI(self.broker, self._page).routes(v1),
        ]

    # Helpers

    def _page(
        self, request: server.Request, items: Sequence[Any], render: Callable[[Any], Any]
    ) -> dict[str, Any]:
        q = queryArgs(request)
        limit = _intArg(q, "limit", DEFAULT_LIMIT, 1, self.settings.http.max_page_size)
        page = _intArg(q, "page", 1, 1, 1 << 31)
        start = (page - 1) * limit
        return {
            "data": [render(item) for item in items[start : start + limit]],
            "meta": {
                "page": page,
                "limit": limit,
                "count": len(items),
                "hasnext": start + limit < len(items),
            },
        }

    @staticmethod
    def _only(request: server.Request, allowed: Iterable[str]) -> dict[str, str]:
        q = queryArgs(request)
        known = {"page", "limit", *allowed}
        unknown = sorted(set(q) - known)
        if unknown:
            raise APIError(400, f"unknown query parameter {unknown[0]!r}; known: {sorted(known)}")
        return q

    def _sessions(self) -> Any:
        """The node's MQTT session registry (an empty one when the node serves no MQTT)."""
        mqtt = self.broker.nodeServices.get("mqtt")
        return mqtt.sessions if mqtt is not None else _NO_SESSIONS

    def _connection(self, clientId: str) -> Any:
        session = self._sessions().get(clientId)
        if session is not None and session.connection is not None:
            return session.connection
        for conn in self.broker.connections:
            if _identity(conn) == clientId:
                return conn
        raise APIError(404, f"no connected client {clientId!r}")

    def _sessionOr404(self, clientId: str) -> Session:
        session = self._sessions().get(clientId)
        if session is None:
            raise APIError(404, f"no session for client {clientId!r}")
        return session

    # Health and metrics

    def live(self, request: server.Request, params: Params) -> Any:
        """The process is up and its reactor answers."""
        return {"status": "live"}

    def ready(self, request: server.Request, params: Params) -> Any:
        """Ready for traffic: broker running, every listener bound and the store
        taking writes (503 otherwise, with the reasons)."""
        checks = {"broker": bool(self.broker.running)}
        for svc in self.listenerServices():
            checks[f"listener:{svc.listener.label}"] = svc.port is not None
        reasons: list[str] = []
        health = storeHealth(self.broker.store)
        if health is not None:
            checks["storage"] = bool(health["writable"])
            if health["reason"]:
                reasons.append(f"storage {health['state']}: {health['reason']}")
        ok = all(checks.values())
        if not ok:
            body: dict[str, Any] = {"status": "not ready", "checks": checks}
            if reasons:
                body["reasons"] = reasons
            return RawResponse(_dumps(body), b"application/json; charset=utf-8", 503)
        return {"status": "ready", "checks": checks}

    def storageCheck(self, request: server.Request, params: Params) -> Any:
        """Verify every acknowledged record of the node's store (CRCs, gaps); 404
        for a store that cannot check itself (the memory store)."""
        check = getattr(self.broker.store, "check", None)
        if check is None:
            raise APIError(404, f"the {self.broker.store.name} store has nothing to check")
        return check()

    def storageStatus(self, request: server.Request, params: Params) -> Any:
        """The store's health and its fault counters."""
        store = self.broker.store
        statistics = getattr(store, "statistics", None) or getattr(store, "stats", None)
        return {
            "backend": store.name,
            "health": storeHealth(store) or {"writable": True, "state": "ok", "reason": None},
            "counters": statistics() if callable(statistics) else {},
        }

    def openapi(self, request: server.Request, params: Params) -> Any:
        """This API's OpenAPI 3 document."""
        return RawResponse(self._openapi, b"application/json; charset=utf-8")

    def prometheus(self, request: server.Request, params: Params) -> Any:
        """Prometheus text exposition."""
        return RawResponse(self.metrics.render(), self.metrics.contentType.encode())

    # Node

    def _node(self) -> dict[str, Any]:
        broker = self.broker
        node = self.settings.node
        return {
            "id": node.id,
            "version": broker.version,
            "roles": list(node.roles),
            "status": "running" if broker.running else "stopped",
            "uptime_seconds": round(broker.stats.uptime(), 3),
            "started_at": broker.stats.startTime,
            "pid": os.getpid(),
        }

    def status(self, request: server.Request, params: Params) -> Any:
        """Node, cluster membership and the broker's counters (the $SYS values)."""
        broker = self.broker
        s = broker.stats
        byProtocol: dict[str, int] = {}
        for conn in broker.connections:
            name = _protocolOf(conn)
            byProtocol[name] = byProtocol.get(name, 0) + 1
        served = {svc.listener.protocol for svc in self.listenerServices()}
        served.update(broker.nodeServices)
        for name in served:
            byProtocol.setdefault(name, 0)
        return {
            "node": self._node(),
            "protocols": sorted(served),
            "cluster": self._membership(),
            "workers": self._workers(),
            "stats": {
                "connections": s.clientsConnected,
                "connections_max": s.clientsMaximum,
                "client_connects": s.clientsTotalConnects,
                "sessions": s.sessions,
                "subscriptions": len(broker.router),
                "retained": len(broker.retained),
                "messages_received": s.messagesReceived,
                "messages_sent": s.messagesSent,
                "messages_dropped": s.messagesDropped,
                "dropped_by_reason": {
                    f"{protocol}/{reason}": n
                    for (protocol, reason), n in sorted(s.dropReasons.items())
                },
                "connections_by_protocol": dict(sorted(byProtocol.items())),
                "publish_received": s.publishReceived,
                "publish_sent": s.publishSent,
                "bytes_received": s.bytesReceived,
                "bytes_sent": s.bytesSent,
                "malformed_packets": s.malformedPackets,
            },
            "time": time.time(),
        }

    def _workers(self) -> list[dict[str, Any]]:
        """This process as the one worker of its node (docs/workers.md)."""
        pid = os.getpid()
        uptime = self.broker.stats.uptime()
        cpu = cpuSeconds(pid)
        return [
            {
                "worker": 0,
                "node": self.settings.node.id,
                "pid": pid,
                "state": "ready" if self.broker.running else "starting",
                "started_at": self.broker.stats.startTime,
                "uptime_seconds": round(uptime, 3),
                "restarts": 0,
                "cpu_percent": round(100.0 * cpu / uptime, 1) if cpu and uptime > 0 else None,
                "cpu_seconds": cpu,
                "rss_bytes": rssBytes(pid),
                "connections": self.broker.stats.clientsConnected,
                "sessions": self.broker.stats.sessions,
            }
        ]

    def workers(self, request: server.Request, params: Params) -> Any:
        """The node's worker processes: pid, state, uptime, restarts, CPU, memory,
        connections (one row, this process, on a node with C{[node] workers = 1})."""
        return {"data": self._workers()}

    def _membership(self) -> dict[str, Any]:
        cluster = getattr(self.broker, "cluster", None)
        if cluster is None:
            return {"mode": "single", "nodes": [self._node()]}
        return {
            "mode": "cluster",
            "nodes": [
                {
                    "id": info.nodeId,
                    "roles": list(info.roles),
                    "state": info.state,
                    "addresses": dict(info.addresses),
                }
                for info in sorted(cluster.nodes.values(), key=lambda n: n.nodeId)
            ],
        }

    def nodes(self, request: server.Request, params: Params) -> Any:
        """Cluster members as the placement center last pushed them (this node alone if single);
        C{/api/v1/cluster} adds uptimes and client counts."""
        return {"data": self._membership()["nodes"]}

    def cluster(self, request: server.Request, params: Params) -> Any:
        """The broker cluster's members as this node sees them; 404 on a node not in a cluster.

        Each member is C{{node, roles, state ("alive" or "dead"), address,
        started_at, uptime, clients}}, sorted by node id.
        """
        cluster = getattr(self.broker, "cluster", None)
        if cluster is None:
            raise APIError(404, "this node is not in a cluster")

        def members(result: list[dict[str, Any]]) -> dict[str, Any]:
            return {"data": sorted(result, key=lambda m: str(m.get("node", "")))}

        def timedOut(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            raise APIError(
                504, f"the cluster did not answer within {CLUSTER_STATUS_TIMEOUT:g} seconds"
            )

        d = defer.maybeDeferred(cluster.status)
        d.addTimeout(CLUSTER_STATUS_TIMEOUT, self.broker.reactor)
        return d.addCallbacks(members, timedOut)

    def listeners(self, request: server.Request, params: Params) -> Any:
        """Every listener: protocol, transport, configured and bound address, open sockets."""
        out = []
        for svc in self.listenerServices():
            ls = svc.listener
            host = getattr(svc.port.getHost(), "host", None) if svc.port else None
            port = getattr(svc.port.getHost(), "port", None) if svc.port else None
            opened = getattr(svc.factory, "open", None)
            out.append(
                {
                    "name": ls.label,
                    "protocol": ls.protocol,
                    "transport": ls.transport,
                    "bind": ls.bind,
                    "port": port if port is not None else ls.port,
                    "host": host,
                    "running": svc.port is not None,
                    "sockets": len(opened) if opened is not None else None,
                    "max_connections": ls.max_connections,
                }
            )
        admin = self.adminAddress()
        http = self.settings.http
        out.append(
            {
                "name": "admin",
                "protocol": "http",
                "transport": "tcp",
                "bind": http.bind,
                "port": admin[1] if admin else http.port,
                "host": admin[0] if admin else None,
                "running": admin is not None,
                "sockets": None,
                "max_connections": None,
            }
        )
        return {"data": out}

    def config(self, request: server.Request, params: Params) -> Any:
        """The effective configuration (file + environment + defaults), secrets hidden."""
        return maskedSettings(self.settings)

    # Clients

    def clients(self, request: server.Request, params: Params) -> Any:
        """Connected clients, sorted by client id, with filters and paging.

        Filters: C{client_id} (substring), C{username} (exact), C{peer}
        (substring of host:port), C{listener} (exact label), C{protocol}.
        """
        q = self._only(request, ("client_id", "username", "peer", "listener", "protocol"))
        wantId, wantUser = q.get("client_id"), q.get("username")
        wantPeer, wantListener = q.get("peer"), q.get("listener")
        wantProtocol = q.get("protocol")
        found = []
        for conn in self.broker.connections:
            clientId = _identity(conn)
            if wantId and wantId not in clientId:
                continue
            user = getattr(conn, "username", None) or getattr(conn, "user", None)
            if wantUser is not None and user != wantUser:
                continue
            if wantPeer and wantPeer not in getattr(conn, "peer", ""):
                continue
            listener = getattr(conn, "listener", None)
            if wantListener and (listener is None or listener.label != wantListener):
                continue
            if wantProtocol and _protocolOf(conn) != wantProtocol:
                continue
            found.append((clientId, id(conn), conn))
        found.sort(key=lambda t: (t[0], t[1]))
        return self._page(request, found, lambda t: describeConnection(t[2]))

    def client(self, request: server.Request, params: Params) -> Any:
        """One connected client, with its session's subscriptions."""
        conn = self._connection(params["clientId"])
        out = describeConnection(conn)
        session = getattr(conn, "session", None)
        if session is not None:
            out["session"] = self._describeSession(session, full=True)
        return out

    def kick(self, request: server.Request, params: Params) -> Any:
        """Close a client's connection (its will is published, as for any server-side close)."""
        clientId = params["clientId"]
        conn = self._connection(clientId)
        self.log.info("client {clientId} kicked through the admin API", clientId=clientId)
        kick = getattr(conn, "kick", None)
        if kick is not None:
            # MQTT 5 clients are told why: DISCONNECT 0x98 (Administrative action).
            kick("kicked through the admin API")
        elif conn.transport is not None:
            conn.transport.loseConnection()
        return {"kicked": clientId}

    # Sessions

    @staticmethod
    def _describeSession(session: Session, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_id": session.clientId,
            "clean_session": session.clean,
            "online": session.connection is not None,
            "subscriptions": len(session.subscriptions),
            "inflight": len(session.inflight),
            "max_inflight": session.maxInflight,
            "queued": len(session.queue),
            "queued_bytes": session.queuedBytes,
            "congested": session.congested,
            "dropped": session.dropped,
            "created_at": session.createdAt,
            "disconnected_at": session.disconnectedAt,
        }
        if full:
            out["subscriptions"] = [
                {"topic": t, "qos": _qos(q)} for t, q in sorted(session.subscriptions.items())
            ]
        return out

    def sessions(self, request: server.Request, params: Params) -> Any:
        """Sessions (online and offline persistent ones); filters C{client_id}, C{online}."""
        q = self._only(request, ("client_id", "online"))
        wantId, online = q.get("client_id"), _boolArg(q, "online")
        found = [
            s
            for s in self._sessions()
            if (not wantId or wantId in s.clientId)
            and (online is None or (s.connection is not None) == online)
        ]
        found.sort(key=lambda s: s.clientId)
        return self._page(request, found, self._describeSession)

    def session(self, request: server.Request, params: Params) -> Any:
        """One session with its subscriptions."""
        return self._describeSession(self._sessionOr404(params["clientId"]), full=True)

    def discardSession(self, request: server.Request, params: Params) -> Any:
        """Discard a session (its subscriptions and queue); a connected client is closed first."""
        clientId = params["clientId"]
        session = self._sessionOr404(clientId)
        conn = session.connection
        if conn is not None:
            session.detach(self.broker.reactor.seconds())
            if conn.transport is not None:
                conn.transport.loseConnection()
        self._sessions().discard(session)
        self.log.info("session of {clientId} discarded through the admin API", clientId=clientId)
        return {"discarded": clientId}

    # Subscriptions and topics

    def subscriptions(self, request: server.Request, params: Params) -> Any:
        """Every subscription; filters C{client_id} (substring) and C{topic} (exact filter)."""
        q = self._only(request, ("client_id", "topic"))
        wantId, wantTopic = q.get("client_id"), q.get("topic")
        found = []
        for topicFilter, subscriber, qos in self.broker.router.subscriptions():
            clientId = getattr(subscriber, "clientId", str(subscriber))
            if wantId and wantId not in clientId:
                continue
            if wantTopic is not None and topicFilter != wantTopic:
                continue
            found.append((topicFilter, clientId, _qos(qos)))
        found.sort()
        return self._page(request, found, lambda t: {"topic": t[0], "client_id": t[1], "qos": t[2]})

    def topics(self, request: server.Request, params: Params) -> Any:
        """The route table: each subscribed topic filter and how many subscribe to it."""
        q = self._only(request, ("topic",))
        want = q.get("topic")
        counts: dict[str, int] = {}
        for topicFilter, _, _ in self.broker.router.subscriptions():
            if want and want not in topicFilter:
                continue
            counts[topicFilter] = counts.get(topicFilter, 0) + 1
        items = sorted(counts.items())
        return self._page(request, items, lambda t: {"topic": t[0], "subscribers": t[1]})

    # Retained messages

    @staticmethod
    def _describeMessage(message: Message, payload: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "topic": message.topic,
            "qos": message.qos,
            "size": len(message.payload),
            "timestamp": message.timestamp,
            "from": message.origin,
        }
        if payload:
            out["payload"] = _text(message.payload)
            out["payload_base64"] = base64.b64encode(message.payload).decode("ascii")
        return out

    def retainedList(self, request: server.Request, params: Params) -> Any:
        """Retained messages whose topics match C{topic} (an MQTT filter; default: all)."""
        q = self._only(request, ("topic",))
        topicFilter = q.get("topic")
        if topicFilter:
            try:
                validateTopicFilter(topicFilter)
            except InvalidTopic as e:
                raise APIError(400, f"query parameter 'topic': {e}") from None
            messages = self.broker.retained.match(topicFilter)
        else:
            messages = list(self.broker.retained)
        messages.sort(key=lambda m: m.topic)
        return self._page(request, messages, self._describeMessage)

    def retainedGet(self, request: server.Request, params: Params) -> Any:
        """One retained message with its payload (UTF-8 text when it is text, and base64)."""
        topic = params["topic"]
        message = self.broker.retained.get(topic)
        if message is None:
            raise APIError(404, f"no retained message on {topic!r}")
        return self._describeMessage(message, payload=True)

    def retainedDelete(self, request: server.Request, params: Params) -> Any:
        """Delete the retained message on a topic."""
        topic = params["topic"]
        if not self.broker.retained.delete(topic):
            raise APIError(404, f"no retained message on {topic!r}")
        self.log.info("retained message on {topic} deleted through the admin API", topic=topic)
        return {"deleted": topic}

    # Publishing

    def publish(self, request: server.Request, params: Params) -> Any:
        """Publish a message as the broker: C{{topic, payload, encoding, qos, retain}}."""
        body = jsonBody(request)
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        unknown = sorted(set(body) - {"topic", "payload", "encoding", "qos", "retain"})
        if unknown:
            raise APIError(400, f"unknown field {unknown[0]!r}")
        topic = body.get("topic")
        if not isinstance(topic, str):
            raise APIError(400, "field 'topic': a string is required")
        try:
            validateTopicName(topic, self.settings.mqtt.max_topic_levels)
        except InvalidTopic as e:
            raise APIError(400, f"field 'topic': {e}") from None
        qos = body.get("qos", 0)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise APIError(400, "field 'qos': 0, 1 or 2")
        retain = body.get("retain", False)
        if not isinstance(retain, bool):
            raise APIError(400, "field 'retain': true or false")
        text = body.get("payload", "")
        if not isinstance(text, str):
            raise APIError(400, "field 'payload': a string is required")
        encoding = body.get("encoding", "plain")
        if encoding == "plain":
            payload = text.encode("utf-8")
        elif encoding == "base64":
            try:
                payload = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, "field 'payload': not valid base64") from None
        else:
            raise APIError(400, "field 'encoding': 'plain' or 'base64'")
        broker = self.broker
        message = Message(topic, payload, qos, retain, broker.reactor.seconds())
        outcome = broker.publish(message)
        answer = {
            "topic": topic,
            "size": len(payload),
            "qos": qos,
            "retain": retain,
            "reached": outcome.delivered,
        }
        # Answered once what it caused is durable (as a PUBACK would be); nothing
        # to pause for an HTTP publisher: sessions' queues bound themselves.
        writes = outcome.writes
        if not writes:
            return answer
        return defer.gatherResults(writes).addCallback(lambda _: answer)


class _NoSessions:
    """The session registry of a node without MQTT: always empty."""

    def get(self, clientId: str) -> None:
        return None

    def __iter__(self) -> Any:
        return iter(())


_NO_SESSIONS = _NoSessions()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


__all__ = ["AdminAPI", "CLUSTER_STATUS_TIMEOUT", "DEFAULT_LIMIT"]
