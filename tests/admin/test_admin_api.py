"""The admin HTTP API over real HTTP against a real node, with real MQTT clients."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from adminhelpers import TIMEOUT, AdminNode, Paho, basic, waitFor

from robustmq.admin import AdminAPI
from robustmq.testing.memory import InMemoryBroker


def _routes() -> set[tuple[str, str]]:
    harness = InMemoryBroker()
    api = AdminAPI(harness.broker, harness.settings, lambda: [], lambda: None)
    return {(r.method.lower(), r.path) for r in api.routes()}


def test_openapi_documents_every_route_and_nothing_else(node: AdminNode) -> None:
    doc = node.get("/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    documented = {
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "delete", "patch")
    }
    routes = _routes()
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json documents routes that do not exist"
    for method, path in routes:
        op = doc["paths"][path][method]
        assert op.get("summary") and "200" in op["responses"], (method, path)
        for name in [p[1:-1] for p in path.split("/") if p.startswith("{")]:
            assert any(p.get("name") == name for p in op.get("parameters", [])), (path, name)


def test_health(node: AdminNode) -> None:
    assert node.get("/health/live") == {"status": "live"}
    ready = node.get("/health/ready")
    assert ready["status"] == "ready"
    assert ready["checks"]["broker"] is True
    assert any(k.startswith("listener:") and v for k, v in ready["checks"].items())


def test_status_nodes_listeners(node: AdminNode) -> None:
    status = node.get("/api/v1/status")
    assert status["node"]["id"] == "robustmq-1"
    assert status["node"]["status"] == "running"
    assert status["cluster"]["nodes"][0]["id"] == "robustmq-1"
    assert set(status["stats"]) >= {"connections", "messages_received", "retained", "sessions"}
    assert node.get("/api/v1/nodes")["data"][0]["id"] == "robustmq-1"
    listeners = node.get("/api/v1/listeners")["data"]
    mqtt = [item for item in listeners if item["protocol"] == "mqtt"]
    assert mqtt and mqtt[0]["port"] == node.port and mqtt[0]["running"] is True
    http = [item for item in listeners if item["protocol"] == "http"]
    assert http[0]["port"] == node.httpPort


def test_clients_paging_filters_show_and_kick(
    node: AdminNode, clients: Callable[..., Paho], uniq: str
) -> None:
    made = [clients(f"{uniq}-{i}") for i in range(3)]
    made[0].subscribe(f"{uniq}/t", 1)
    page1 = node.get(f"/api/v1/clients?client_id={uniq}&limit=2")
    assert page1["meta"] == {"page": 1, "limit": 2, "count": 3, "hasnext": True}
    assert [c["client_id"] for c in page1["data"]] == [f"{uniq}-0", f"{uniq}-1"]
    page2 = node.get(f"/api/v1/clients?client_id={uniq}&limit=2&page=2")
    assert [c["client_id"] for c in page2["data"]] == [f"{uniq}-2"]
    assert page2["meta"]["hasnext"] is False
    assert node.get(f"/api/v1/clients?client_id={uniq}&username=nobody")["meta"]["count"] == 0

    one = node.get(f"/api/v1/clients/{uniq}-0")
    assert one["protocol"] == "mqtt" and one["protocol_level"] == 4
    assert one["session"]["subscriptions"] == [{"topic": f"{uniq}/t", "qos": 1}]

    status, body = node.json("DELETE", f"/api/v1/clients/{uniq}-1")
    assert status == 200 and body == {"kicked": f"{uniq}-1"}
    made[1].disconnected.get(timeout=TIMEOUT)
    waitFor(lambda: node.json("GET", f"/api/v1/clients/{uniq}-1")[0] == 404, "kicked client to go")
    status, body = node.json("DELETE", f"/api/v1/clients/{uniq}-nobody")
    assert status == 404 and "no connected client" in body["error"]["message"]


def test_sessions_list_show_delete(
    node: AdminNode, clients: Callable[..., Paho], uniq: str
) -> None:
    persistent = clients(f"{uniq}-p", clean=False)
    persistent.subscribe(f"{uniq}/s", 1)
    persistent.close()
    offline = waitFor(
        lambda: node.get(f"/api/v1/sessions?client_id={uniq}&online=false")["data"],
        "session to go offline",
    )
    assert offline[0]["client_id"] == f"{uniq}-p" and offline[0]["online"] is False
    detail = node.get(f"/api/v1/sessions/{uniq}-p")
    assert detail["subscriptions"] == [{"topic": f"{uniq}/s", "qos": 1}]
    assert node.json("DELETE", f"/api/v1/sessions/{uniq}-p")[0] == 200
    assert node.json("GET", f"/api/v1/sessions/{uniq}-p")[0] == 404
    assert node.get(f"/api/v1/subscriptions?client_id={uniq}-p")["meta"]["count"] == 0


def test_subscriptions_and_topics(node: AdminNode, clients: Callable[..., Paho], uniq: str) -> None:
    a, b = clients(f"{uniq}-a"), clients(f"{uniq}-b")
    a.subscribe(f"{uniq}/+/x", 1)
    b.subscribe(f"{uniq}/+/x", 2)
    b.subscribe(f"{uniq}/#", 0)
    subs = node.get(f"/api/v1/subscriptions?client_id={uniq}")["data"]
    assert {(s["topic"], s["client_id"], s["qos"]) for s in subs} == {
        (f"{uniq}/+/x", f"{uniq}-a", 1),
        (f"{uniq}/+/x", f"{uniq}-b", 2),
        (f"{uniq}/#", f"{uniq}-b", 0),
    }
    exact = node.get(f"/api/v1/subscriptions?topic={quote(f'{uniq}/#')}")["data"]
    assert [s["client_id"] for s in exact] == [f"{uniq}-b"]
    topics = node.get(f"/api/v1/topics?topic={uniq}")["data"]
    assert {t["topic"]: t["subscribers"] for t in topics} == {f"{uniq}/#": 1, f"{uniq}/+/x": 2}


def test_retained_list_get_delete(node: AdminNode, clients: Callable[..., Paho], uniq: str) -> None:
    pub = clients(f"{uniq}-pub")
    pub.publish(f"{uniq}/a/b", b"hello", qos=1, retain=True)
    pub.publish(f"{uniq}/bin", b"\xff\x00", qos=0, retain=True)
    listed = waitFor(
        lambda: node.get(f"/api/v1/retained?topic={quote(f'{uniq}/#')}")["data"],
        "retained messages",
    )
    if len(listed) < 2:
        listed = waitFor(
            lambda: (
                (r := node.get(f"/api/v1/retained?topic={quote(f'{uniq}/#')}")["data"])
                and len(r) == 2
                and r
            ),
            "both retained messages",
        )
    assert [m["topic"] for m in listed] == [f"{uniq}/a/b", f"{uniq}/bin"]
    assert listed[0]["size"] == 5 and listed[0]["qos"] == 1 and listed[0]["from"] == f"{uniq}-pub"
    # Slashes in the path may be sent as they are or percent-encoded.
    got = node.get(f"/api/v1/retained/{uniq}/a/b")
    assert got["payload"] == "hello" and got["payload_base64"] == "aGVsbG8="
    assert node.get("/api/v1/retained/" + quote(f"{uniq}/a/b", safe=""))["payload"] == "hello"
    binary = node.get(f"/api/v1/retained/{uniq}/bin")
    assert binary["payload"] is None and binary["payload_base64"] == "/wA="
    assert node.json("DELETE", f"/api/v1/retained/{uniq}/a/b") == (200, {"deleted": f"{uniq}/a/b"})
    assert node.json("GET", f"/api/v1/retained/{uniq}/a/b")[0] == 404
    assert node.json("DELETE", f"/api/v1/retained/{uniq}/a/b")[0] == 404
    # A new subscriber no longer gets it.
    sub = clients(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/a/#", 1)
    status, _ = node.json("GET", "/api/v1/retained?topic=" + quote("bad/#/x", safe=""))
    assert status == 400
    assert sub.messages.empty()


def test_publish_reaches_subscriber(
    node: AdminNode, clients: Callable[..., Paho], uniq: str
) -> None:
    sub = clients(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1)
    status, body = node.json(
        "POST", "/api/v1/publish", {"topic": f"{uniq}/x", "payload": "from http", "qos": 1}
    )
    assert status == 200 and body["reached"] == 1 and body["size"] == 9
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos) == (f"{uniq}/x", b"from http", 1)
    node.json(
        "POST",
        "/api/v1/publish",
        {"topic": f"{uniq}/y", "payload": "AAEC", "encoding": "base64", "retain": True},
    )
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos) == (f"{uniq}/y", b"\x00\x01\x02", 0)
    assert node.get(f"/api/v1/retained/{uniq}/y")["payload_base64"] == "AAEC"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"topic": "a/+/b", "payload": "x"}, "field 'topic'"),
        ({"topic": "a", "qos": 3}, "field 'qos'"),
        ({"topic": "a", "retain": "yes"}, "field 'retain'"),
        ({"topic": "a", "payload": "!!", "encoding": "base64"}, "not valid base64"),
        ({"topic": "a", "colour": "red"}, "unknown field"),
        ({"payload": "x"}, "field 'topic'"),
        ([1, 2], "JSON object"),
    ],
)
def test_publish_rejects_bad_requests(node: AdminNode, body: object, message: str) -> None:
    status, answer = node.json("POST", "/api/v1/publish", body)
    assert status == 400, answer
    assert message in answer["error"]["message"]


def test_publish_needs_json_content_type(node: AdminNode) -> None:
    status, _, data = node.request(
        "POST",
        "/api/v1/publish",
        raw=b"topic=a&payload=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415, data


def test_query_validation_and_methods(node: AdminNode) -> None:
    assert node.json("GET", "/api/v1/clients?limit=0")[0] == 400
    assert node.json("GET", "/api/v1/clients?limit=1001")[0] == 400
    assert node.json("GET", "/api/v1/clients?page=x")[0] == 400
    status, body = node.json("GET", "/api/v1/clients?clientid=x")
    assert status == 400 and "unknown query parameter 'clientid'" in body["error"]["message"]
    assert node.json("GET", "/api/v1/sessions?online=maybe")[0] == 400
    status, headers, _ = node.request("PUT", "/api/v1/status")
    assert status == 405 and headers["Allow"] == "GET"
    status, body = node.json("GET", "/api/v2/nothing")
    assert status == 404 and body["error"]["code"] == 404


def test_config_view(node: AdminNode) -> None:
    config = node.get("/api/v1/config")
    assert config["http"]["port"] == node.httpPort
    assert config["listeners"][0]["port"] == node.port
    assert config["mqtt"]["max_inflight"] == 32


def test_dashboard_assets_are_served(node: AdminNode) -> None:
    status, headers, body = node.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/app.js" in body and b"http://" not in body and b"https://" not in body
    for asset in ("/app.js", "/chart.js", "/style.css", "/logo.svg"):
        status, _, body = node.request("GET", asset)
        assert status == 200, asset
        # No external network at runtime: nothing refers to another host.
        assert b"https://" not in body and b"http://" not in body.replace(
            b"http://www.w3.org/2000/svg", b""
        ), asset


# Authentication


@pytest.fixture(scope="module")
def tokenNode() -> Iterator[AdminNode]:
    n = AdminNode('auth = "token"\ntoken = "s3cret"\nmax_body_bytes = 2048').start()
    try:
        yield n
    finally:
        n.stop()


def test_token_auth(tokenNode: AdminNode) -> None:
    status, headers, _ = tokenNode.request("GET", "/api/v1/status")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert tokenNode.request("GET", "/metrics")[0] == 401
    bad = {"Authorization": "Bearer wrong"}
    assert tokenNode.request("GET", "/api/v1/status", headers=bad)[0] == 401
    good = {"Authorization": "Bearer s3cret"}
    assert tokenNode.request("GET", "/api/v1/status", headers=good)[0] == 200
    assert tokenNode.request("GET", "/metrics", headers=good)[0] == 200
    status, body = tokenNode.json(
        "POST", "/api/v1/publish", {"topic": "t", "payload": "p"}, headers=good
    )
    assert status == 200, body
    # Health checks, the OpenAPI document and the dashboard's files need no credentials.
    for path in ("/health/live", "/health/ready", "/api/openapi.json", "/", "/app.js"):
        assert tokenNode.request("GET", path)[0] == 200, path
    # The config view hides the token.
    assert tokenNode.get("/api/v1/config", headers=good)["http"]["token"] == "***"


def test_body_over_the_bound_is_refused_with_413(tokenNode: AdminNode) -> None:
    body = json.dumps({"topic": "t", "payload": "x" * 4000}).encode()
    status, _, data = tokenNode.request(
        "POST",
        "/api/v1/publish",
        raw=body,
        headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
    )
    assert status == 413, data
    # The node still serves afterwards.
    assert tokenNode.request("GET", "/health/live")[0] == 200


def test_chunked_body_over_the_bound_is_refused(tokenNode: AdminNode) -> None:
    with socket.create_connection(("127.0.0.1", tokenNode.httpPort), timeout=TIMEOUT) as s:
        s.sendall(
            b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 1000
        answer = b""
        for _ in range(10):
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
        s.settimeout(TIMEOUT)
        while b"\r\n\r\n" not in answer:
            data = s.recv(4096)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_basic_auth_and_loopback_exemption() -> None:
    n = AdminNode('auth = "basic"\nusername = "ops"\npassword = "pw"').start()
    try:
        status, headers, _ = n.request("GET", "/api/v1/status")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert n.request("GET", "/api/v1/status", headers=basic("ops", "nope"))[0] == 401
        assert n.request("GET", "/api/v1/status", headers=basic("root", "pw"))[0] == 401
        assert n.request("GET", "/api/v1/status", headers=basic("ops", "pw"))[0] == 200
        assert n.get("/api/v1/config", headers=basic("ops", "pw"))["http"]["password"] == "***"
    finally:
        n.stop()
    exempt = AdminNode('auth = "token"\ntoken = "t"\nloopback_exempt = true').start()
    try:
        # The test talks from 127.0.0.1, which this node exempts.
        assert exempt.request("GET", "/api/v1/status")[0] == 200
        assert exempt.request("GET", "/metrics")[0] == 200
    finally:
        exempt.stop()
