"""The admin API of a node with several worker processes: one face over its workers.

The node's supervisor process serves the same endpoints as a single-process
node (the same route table, OpenAPI document and dashboard) on
C{[http] bind:port}, and answers them from its workers' own admin APIs,
which each worker serves on a Unix socket of the node's run directory
(docs/workers.md):

- lists (clients, sessions, subscriptions) are merged from every worker,
  sorted as a single node sorts them and paged after merging; each entry
  names its C{worker}; topics add up their subscribers over workers;
- one client or session is looked up on every worker;
- what every worker holds alike (retained messages, users, ACL rules, bans,
  which the workers share through the placement center) is read from, and
  written through, one worker; a retained message is deleted on every worker;
  a publish goes through one worker, which routes it to all; Kafka and AMQP
  endpoints are answered by the worker that serves them;
- storage status and checks cover every worker's store;
- status adds up the workers' counters and lists the workers (pid, state,
  restarts, CPU, memory, connections); C{/metrics} is every worker's
  metrics with a C{worker} label, plus the node's own C{robustmq_worker_*}
  series; readiness needs every worker ready.

A worker that does not answer (restarting) is left out of merged answers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import server

from robustmq import __version__
from robustmq.admin._api import DEFAULT_LIMIT
from robustmq.admin._http import (
    AdminResource,
    AdminSite,
    APIError,
    Authenticator,
    RawResponse,
    Route,
    queryArgs,
)
from robustmq.admin._protocols import ProtocolsAPI
from robustmq.admin._security import SecurityAPI
from robustmq.config import Settings, maskedSettings
from robustmq.workers import HOME_WORKER, servedBy
from robustmq.workers._http import WorkerUnavailable

Params = dict[str, str]

#: Deepest item (page × limit) a merged list reaches: each worker returns that many.
MAX_DEPTH = 1_000_000
#: Stats that do not add up over workers (every worker has the same): the largest is shown.
_SHARED_STATS = ("retained",)
_PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


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


def labelSample(line: str, worker: int) -> str:
    """A Prometheus sample line with C{worker="<worker>"} added to its labels."""
    label = f'worker="{worker}"'
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = line[brace + 1 :]
        return f"{line[: brace + 1]}{label}{',' if not rest.startswith('}') else ''}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


def mergeExpositions(texts: list[tuple[int, str]]) -> str:
    """Prometheus text expositions of several workers as one: each family once, with
    every worker's samples labelled by worker, in the order families first appear."""
    families: dict[str, dict[str, Any]] = {}
    for worker, text in texts:
        current: dict[str, Any] | None = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, {"help": None, "type": None, "samples": []})
                current["help" if line[2] == "H" else "type"] = line
            elif not line or line.startswith("#"):
                continue
            elif current is not None:
                current["samples"].append(labelSample(line, worker))
    out: list[str] = []
    for family in families.values():
        out.extend(x for x in (family["help"], family["type"]) if x)
        out.extend(family["samples"])
    return "\n".join(out) + "\n" if out else ""


class _NodeCollector(Collector):
    """The node's own series: its workers' processes."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        workers = self.supervisor.workers()
        yield GaugeMetricFamily(
            "robustmq_workers", "Worker processes the node runs", value=len(workers)
        )
        up = GaugeMetricFamily(
            "robustmq_worker_up", "1 if the worker's process runs and is ready", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "robustmq_worker_restarts",
            "Times the node restarted the worker after its process ended",
            labels=["worker"],
        )
        cpu = CounterMetricFamily(
            "robustmq_worker_cpu_seconds",
            "CPU time of the worker's current process",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            "robustmq_worker_resident_memory_bytes",
            "Resident memory of the worker's current process",
            labels=["worker"],
        )
        for row in workers:
            label = [str(row["worker"])]
            up.add_metric(label, 1 if row.get("state") == "ready" else 0)
            restarts.add_metric(label, row.get("restarts", 0))
            if row.get("cpu_seconds") is not None:
                cpu.add_metric(label, row["cpu_seconds"])
            if row.get("rss_bytes") is not None:
                rss.add_metric(label, row["rss_bytes"])
        families: list[Metric] = [up, restarts, cpu, rss]
        yield from families


class NodeAdminAPI:
    """The endpoint handlers of a node with workers (see the module docstring).

    @param supervisor: the node's L{robustmq.workers.WorkerSupervisor}.
    @param sockets: the node's L{robustmq.workers.SharedSockets}.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        supervisor: Any,
        sockets: Any,
        adminAddress: Callable[[], tuple[str, int] | None],
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.sockets = sockets
        self.http = supervisor.http
        self.adminAddress = adminAddress
        self.startedAt = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(supervisor))
        self._openapi = (resources.files("robustmq.admin") / "openapi.json").read_bytes()

    def routes(self) -> list[Route]:
        """The same endpoints as L{robustmq.admin.AdminAPI.routes}."""
        v1 = "/api/v1"
        one = self.forwardToOne
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
            Route("GET", f"{v1}/clients/{{clientId}}", self.findOne, greedy=True),
            Route("DELETE", f"{v1}/clients/{{clientId}}", self.findOne, greedy=True),
            Route("GET", f"{v1}/sessions", self.sessions),
            Route("GET", f"{v1}/sessions/{{clientId}}", self.findOne, greedy=True),
            Route("DELETE", f"{v1}/sessions/{{clientId}}", self.findOne, greedy=True),
            Route("GET", f"{v1}/subscriptions", self.subscriptions),
            Route("GET", f"{v1}/topics", self.topics),
            Route("GET", f"{v1}/retained", one),
            Route("GET", f"{v1}/retained/{{topic}}", one, greedy=True),
            Route("DELETE", f"{v1}/retained/{{topic}}", self.retainedDelete, greedy=True),
            Route("POST", f"{v1}/publish", one),
            # Users, ACL rules, bans, Kafka ACLs, AMQP permissions: shared by the workers.
            *[
                Route(route.method, route.path, one, greedy=route.greedy)
                for route in SecurityAPI(_RouteTable()).routes(v1)
            ],
            Route("GET", f"{v1}/storage", self.storageStatus),
            Route("GET", f"{v1}/storage/check", self.storageCheck),
            # Kafka and AMQP live on the home worker (docs/workers.md, "Not built").
            *[
                Route(route.method, route.path, self.forwardToHome, greedy=route.greedy)
                for route in ProtocolsAPI(_RouteTable(), _RouteTable()).routes(v1)
            ],
        ]

    # Talking to the workers

    def _ready(self) -> list[int]:
        return list(self.supervisor.readyWorkers())

    async def _each(self, target: str, timeout: float = 10.0) -> list[tuple[int, Any]]:
        """GET C{target} from every ready worker: (worker, parsed answer) of those that
        answered 200.  A 4xx answer (a bad query) is the caller's error and raised."""
        workers = self._ready()
        calls = [
            defer.ensureDeferred(self.http.request(i, "GET", target, timeout=timeout))
            for i in workers
        ]
        results = await defer.DeferredList(calls, consumeErrors=True)
        out: list[tuple[int, Any]] = []
        for index, (ok, answer) in zip(workers, results, strict=True):
            if not ok:
                self.log.info(
                    "worker {index} left out of {target}: {e}",
                    index=index,
                    target=target,
                    e=answer.getErrorMessage(),
                )
                continue
            if 400 <= answer.code < 500:
                raise APIError(answer.code, _message(answer.body))
            if answer.code == 200:
                out.append((index, answer.json()))
        return out

    def _homeFirst(self) -> list[int]:
        ready = self._ready()
        return sorted(ready, key=lambda i: i != HOME_WORKER)

    async def _forward(self, index: int, request: server.Request) -> RawResponse:
        method = (request.method or b"GET").decode()
        body = None
        if method in ("POST", "PUT", "PATCH"):
            assert request.content is not None
            request.content.seek(0)
            body = request.content.read()
        ctype = (request.getHeader("content-type") or "application/json").encode()
        answer = await self.http.request(index, method, request.uri.decode(), body, ctype)
        return RawResponse(answer.body, answer.contentType, answer.code)

    async def _forwardToOne(self, request: server.Request) -> RawResponse:
        for index in self._homeFirst():
            try:
                return await self._forward(index, request)
            except WorkerUnavailable:
                continue
        raise APIError(503, "no worker is ready")

    async def _forwardToHome(self, request: server.Request) -> RawResponse:
        if HOME_WORKER not in self._ready():
            raise APIError(503, f"worker {HOME_WORKER}, which serves Kafka and AMQP, is not ready")
        try:
            return await self._forward(HOME_WORKER, request)
        except WorkerUnavailable as e:
            raise APIError(503, str(e)) from None

    def forwardToHome(self, request: server.Request, params: Params) -> Any:
        """Answered by the worker that serves Kafka and AMQP."""
        return self._forwardToHome(request)

    def forwardToOne(self, request: server.Request, params: Params) -> Any:
        """Answered by one worker: what the workers share (retained messages, users,
        ACL rules, bans) or what one worker routes to all (a publish)."""
        return self._forwardToOne(request)

    async def _findOne(self, request: server.Request) -> Any:
        last: RawResponse | None = None
        for index in self._ready():
            try:
                answer = await self._forward(index, request)
            except WorkerUnavailable:
                continue
            if answer.code == 200 and request.method == b"GET":
                data = json.loads(answer.body)
                data["worker"] = index
                return data
            if answer.code != 404:
                return answer
            last = answer
        if last is not None:
            return last
        raise APIError(503, "no worker is ready")

    def findOne(self, request: server.Request, params: Params) -> Any:
        """One client or session, looked up (or closed, or discarded) on the worker holding it."""
        return self._findOne(request)

    # Health, metrics, node

    def live(self, request: server.Request, params: Params) -> Any:
        return {"status": "live"}

    async def _readiness(self) -> Any:
        checks = {"placement": bool(self.supervisor.placement.ready.called)}
        reasons: dict[str, Any] = {}
        ready = set(self._ready())
        for row in self.supervisor.workers():
            index = row["worker"]
            key = f"worker:{index}"
            checks[key] = False
            if index not in ready:
                continue
            try:
                answer = await self.http.request(index, "GET", "/health/ready", timeout=5.0)
            except WorkerUnavailable as e:
                reasons[key] = str(e)
                continue
            checks[key] = answer.code == 200
            if answer.code != 200:
                try:
                    reasons[key] = answer.json()
                except ValueError:
                    reasons[key] = answer.body.decode("utf-8", "replace")[:200]
        if not all(checks.values()):
            body: dict[str, Any] = {"status": "not ready", "checks": checks}
            if reasons:
                body["reasons"] = reasons
            return RawResponse(json.dumps(body).encode(), b"application/json; charset=utf-8", 503)
        return {"status": "ready", "checks": checks}

    def ready(self, request: server.Request, params: Params) -> Any:
        """Ready when every worker answers that it is (broker running, listeners bound,
        store writable)."""
        return self._readiness()

    def openapi(self, request: server.Request, params: Params) -> Any:
        return RawResponse(self._openapi, b"application/json; charset=utf-8")

    async def _prometheus(self) -> RawResponse:
        workers = self._ready()
        calls = [
            defer.ensureDeferred(self.http.request(i, "GET", "/metrics", timeout=10.0))
            for i in workers
        ]
        results = await defer.DeferredList(calls, consumeErrors=True)
        texts = [
            (i, answer.body.decode("utf-8", "replace"))
            for i, (ok, answer) in zip(workers, results, strict=True)
            if ok and answer.code == 200
        ]
        text = mergeExpositions(texts) + generate_latest(self.registry).decode()
        return RawResponse(text.encode(), _PROMETHEUS_TYPE)

    def prometheus(self, request: server.Request, params: Params) -> Any:
        """Every worker's metrics labelled C{worker}, and the node's worker series."""
        return self._prometheus()

    def _node(self) -> dict[str, Any]:
        node = self.settings.node
        return {
            "id": node.id,
            "version": __version__,
            "roles": list(node.roles),
            "status": "running" if self.supervisor.running else "stopped",
            "uptime_seconds": round(time.time() - self.startedAt, 3),
            "started_at": self.startedAt,
            "pid": os.getpid(),
            "workers": self.supervisor.count,
        }

    async def _workers(self) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        """The supervisor's rows with each worker's connections and sessions, and each
        ready worker's status answer."""
        statuses = dict(await self._each("/api/v1/status", timeout=5.0))
        rows = []
        for row in self.supervisor.workers():
            status = statuses.get(row["worker"])
            stats = status.get("stats", {}) if status else {}
            rows.append(
                {
                    **row,
                    "connections": stats.get("connections"),
                    "sessions": stats.get("sessions"),
                }
            )
        return rows, statuses

    async def _status(self) -> dict[str, Any]:
        rows, statuses = await self._workers()
        stats: dict[str, Any] = {}
        protocols: set[str] = set()
        for status in statuses.values():
            protocols.update(status.get("protocols", ()))
            for key, value in status.get("stats", {}).items():
                if isinstance(value, dict):  # counts by reason, by protocol: added up per key
                    into = stats.setdefault(key, {})
                    for k, v in value.items():
                        if isinstance(v, int | float):
                            into[k] = into.get(k, 0) + v
                elif not isinstance(value, int | float):
                    continue
                elif key in _SHARED_STATS:
                    stats[key] = max(stats.get(key, 0), value)
                else:
                    stats[key] = stats.get(key, 0) + value
        node = self._node()
        return {
            "node": node,
            "protocols": sorted(protocols),
            "cluster": {"mode": "single", "nodes": [node]},
            "workers": rows,
            "stats": stats,
            "time": time.time(),
        }

    def status(self, request: server.Request, params: Params) -> Any:
        """The node, its workers, and their counters added up."""
        return self._status()

    async def _workersList(self) -> dict[str, Any]:
        rows, _ = await self._workers()
        return {"data": rows}

    def workers(self, request: server.Request, params: Params) -> Any:
        """The node's worker processes."""
        return self._workersList()

    def nodes(self, request: server.Request, params: Params) -> Any:
        return {"data": [self._node()]}

    def cluster(self, request: server.Request, params: Params) -> Any:
        raise APIError(
            404,
            "this node is not in a cluster (its worker processes are listed by /api/v1/workers)",
        )

    async def _listeners(self) -> dict[str, Any]:
        sockets: dict[str, int] = {}
        for _, answer in await self._each("/api/v1/listeners", timeout=5.0):
            for entry in answer.get("data", []):
                if entry.get("protocol") != "http" and entry.get("sockets") is not None:
                    sockets[entry["name"]] = sockets.get(entry["name"], 0) + entry["sockets"]
        ready = set(self._ready())
        out = []
        for i, ls in enumerate(self.settings.listeners):
            home = servedBy(ls)
            served = list(range(self.supervisor.count)) if home is None else [home]
            bound = i in self.sockets.sockets
            out.append(
                {
                    "name": ls.label,
                    "protocol": ls.protocol,
                    "transport": ls.transport,
                    "bind": ls.bind,
                    "port": self.sockets.port(i) if bound else ls.port,
                    "host": ls.bind if bound else None,
                    "running": bound and any(w in ready for w in served),
                    "sockets": sockets.get(ls.label),
                    "max_connections": ls.max_connections,
                    "workers": served,
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

    def listeners(self, request: server.Request, params: Params) -> Any:
        """The node's listeners, with the open sockets of every worker serving each."""
        return self._listeners()

    def config(self, request: server.Request, params: Params) -> Any:
        """The node's effective configuration, secrets hidden."""
        return maskedSettings(self.settings)

    # Merged lists

    def _paging(
        self, request: server.Request, allowed: tuple[str, ...]
    ) -> tuple[dict[str, str], int, int]:
        q = queryArgs(request)
        known = {"page", "limit", *allowed}
        unknown = sorted(set(q) - known)
        if unknown:
            raise APIError(400, f"unknown query parameter {unknown[0]!r}; known: {sorted(known)}")
        limit = _intArg(q, "limit", DEFAULT_LIMIT, 1, self.settings.http.max_page_size)
        page = _intArg(q, "page", 1, 1, 1 << 31)
        if page * limit > MAX_DEPTH:
            raise APIError(
                400, f"page × limit must stay within {MAX_DEPTH:,} on a node with workers"
            )
        filters = {k: v for k, v in q.items() if k not in ("page", "limit")}
        return filters, page, limit

    async def _merged(
        self,
        request: server.Request,
        path: str,
        allowed: tuple[str, ...],
        key: Callable[[dict[str, Any]], Any],
    ) -> dict[str, Any]:
        filters, page, limit = self._paging(request, allowed)
        query = urlencode({**filters, "page": 1, "limit": page * limit})
        items: list[dict[str, Any]] = []
        count = 0
        for index, answer in await self._each(f"{path}?{query}"):
            count += int(answer.get("meta", {}).get("count", 0))
            for item in answer.get("data", []):
                item["worker"] = index
                items.append(item)
        items.sort(key=key)
        start = (page - 1) * limit
        return {
            "data": items[start : start + limit],
            "meta": {
                "page": page,
                "limit": limit,
                "count": count,
                "hasnext": start + limit < count,
            },
        }

    def clients(self, request: server.Request, params: Params) -> Any:
        """Connected clients of every worker, sorted by client id."""
        return self._merged(
            request,
            "/api/v1/clients",
            ("client_id", "username", "peer", "listener", "protocol"),
            lambda c: (str(c.get("client_id", "")), c["worker"]),
        )

    def sessions(self, request: server.Request, params: Params) -> Any:
        """Sessions of every worker, sorted by client id."""
        return self._merged(
            request,
            "/api/v1/sessions",
            ("client_id", "online"),
            lambda s: (str(s.get("client_id", "")), s["worker"]),
        )

    def subscriptions(self, request: server.Request, params: Params) -> Any:
        """Subscriptions of every worker, sorted by filter and client id."""
        return self._merged(
            request,
            "/api/v1/subscriptions",
            ("client_id", "topic"),
            lambda s: (s.get("topic", ""), s.get("client_id", ""), s.get("qos", 0), s["worker"]),
        )

    async def _topics(self, request: server.Request) -> dict[str, Any]:
        filters, page, limit = self._paging(request, ("topic",))
        query = urlencode({**filters, "page": 1, "limit": MAX_DEPTH})
        counts: dict[str, int] = {}
        for _, answer in await self._each(f"/api/v1/topics?{query}"):
            for item in answer.get("data", []):
                counts[item["topic"]] = counts.get(item["topic"], 0) + int(item["subscribers"])
        items = sorted(counts.items())
        start = (page - 1) * limit
        return {
            "data": [{"topic": t, "subscribers": n} for t, n in items[start : start + limit]],
            "meta": {
                "page": page,
                "limit": limit,
                "count": len(items),
                "hasnext": start + limit < len(items),
            },
        }

    def topics(self, request: server.Request, params: Params) -> Any:
        """Subscribed filters of the node, with their subscribers added up over workers."""
        return self._topics(request)

    async def _retainedDelete(self, request: server.Request) -> Any:
        deleted: Any = None
        last: Any = None
        for index in self._ready():
            try:
                answer = await self._forward(index, request)
            except WorkerUnavailable:
                continue
            if answer.code == 200:
                deleted = answer
            last = answer
        if deleted is not None:
            return deleted
        if last is not None:
            return last
        raise APIError(503, "no worker is ready")

    async def _storageStatus(self) -> dict[str, Any]:
        answers = await self._each("/api/v1/storage", timeout=10.0)
        if not answers:
            raise APIError(503, "no worker answered")
        counters: dict[str, Any] = {}
        health = {"writable": True, "state": "ok", "reason": None}
        for index, answer in answers:
            for key, value in (answer.get("counters") or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    counters[key] = counters.get(key, 0) + value
            mine = answer.get("health") or {}
            if not mine.get("writable", True):
                health["writable"] = False
            if mine.get("state", "ok") != "ok" and health["state"] == "ok":
                health["state"] = mine["state"]
                health["reason"] = f"worker {index}: {mine.get('reason')}"
        return {
            "backend": answers[0][1].get("backend"),
            "health": health,
            "counters": counters,
            "workers": [{"worker": i, **answer} for i, answer in answers],
        }

    def storageStatus(self, request: server.Request, params: Params) -> Any:
        """Every worker's store: the worst health, the fault counters added up, and each."""
        return self._storageStatus()

    async def _storageCheck(self) -> dict[str, Any]:
        answers = await self._each("/api/v1/storage/check", timeout=600.0)
        if not answers:
            raise APIError(503, "no worker answered")
        report: dict[str, Any] = {
            "data_dir": "; ".join(str(a.get("data_dir")) for _, a in answers),
            "damaged": [],
            "problems": [],
        }
        for key in ("shards", "segments", "records", "bytes"):
            report[key] = sum(int(a.get(key, 0)) for _, a in answers)
        for index, answer in answers:
            report["damaged"] += [{**d, "worker": index} for d in answer.get("damaged", [])]
            report["problems"] += [{**p, "worker": index} for p in answer.get("problems", [])]
        report["ok"] = all(a.get("ok") for _, a in answers)
        return report

    def storageCheck(self, request: server.Request, params: Params) -> Any:
        """Every worker's store checked; damaged ranges and problems name their worker."""
        return self._storageCheck()

    def retainedDelete(self, request: server.Request, params: Params) -> Any:
        """Delete a retained message on every worker (each holds the node's retained set)."""
        return self._retainedDelete(request)


class _RouteTable:
    """Stands in for the broker when only the route table of an endpoint group is wanted
    (the node's process answers those routes by forwarding them to a worker)."""

    security = True


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]


class NodeAdminService(Service):
    """Serves L{NodeAdminAPI} and the dashboard on C{[http] bind:port} (the node's process)."""

    log = Logger()

    def __init__(self, settings: Settings, supervisor: Any, sockets: Any, reactor: Any) -> None:
        from robustmq.admin._http import loadStatic

        self.settings = settings
        self.http = settings.http
        self.reactor = reactor
        self.port: Any = None
        self.api = NodeAdminAPI(settings, supervisor, sockets, self.address)
        self.resource = AdminResource(self.api.routes(), Authenticator(self.http), loadStatic())
        self.site = AdminSite(self.resource, self.http.max_body_bytes)
        self.setName("admin-http")

    def address(self) -> tuple[str, int] | None:
        if self.port is None:
            return None
        host = self.port.getHost()
        return str(getattr(host, "host", "")), int(getattr(host, "port", 0))

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        bind, port = self.http.bind, self.http.port
        endpointType = TCP6ServerEndpoint if ":" in bind else TCP4ServerEndpoint
        failures: list[Any] = []
        d = endpointType(self.reactor, port, interface=bind).listen(self.site)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            raise CannotListenError(bind, port, failures[0].value)

    def _listening(self, port: Any) -> None:
        self.port = port
        host, bound = self.address() or ("?", 0)
        self.log.info(
            "admin API, metrics and dashboard of the node on http://{host}:{port}/ (auth: {auth})",
            host=host,
            port=bound,
            auth=self.http.auth,
        )

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


__all__ = ["NodeAdminAPI", "NodeAdminService", "labelSample", "mergeExpositions"]
