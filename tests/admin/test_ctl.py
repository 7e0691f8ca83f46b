"""`robustmq ctl` run as a subprocess against a running node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from adminhelpers import TIMEOUT, AdminNode, Paho, waitFor

from robustmq.testing.process import freePort

ROBUSTMQ = str(Path(sys.executable).with_name("robustmq"))


def ctl(
    node: AdminNode | str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    url = node if isinstance(node, str) else node.url
    return subprocess.run(
        [ROBUSTMQ, "ctl", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def ok(node: AdminNode, *args: str) -> str:
    result = ctl(node, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_table_and_json(node: AdminNode) -> None:
    table = ok(node, "status")
    assert "node robustmq-1 (running)" in table and "messages_received" in table
    status = json.loads(ok(node, "--json", "status"))
    assert status["node"]["id"] == "robustmq-1"
    assert f"{node.port}" in ok(node, "listeners")
    assert "[http]" in ok(node, "config")


def test_clients_list_show_kick(node: AdminNode, clients: Callable[..., Paho], uniq: str) -> None:
    c = clients(f"{uniq}-c")
    c.subscribe(f"{uniq}/t", 1)
    table = ok(node, "clients", "list", "--client-id", uniq)
    assert table.splitlines()[0].split()[:2] == ["CLIENT", "ID"]
    assert f"{uniq}-c" in table and "(1 of 1, page 1)" in table
    listed = json.loads(ok(node, "--json", "clients", "--client-id", uniq))
    assert [x["client_id"] for x in listed["data"]] == [f"{uniq}-c"]
    shown = ok(node, "clients", "show", f"{uniq}-c")
    assert f"{uniq}/t" in shown and "protocol_level" in shown
    assert f"kicked {uniq}-c" in ok(node, "clients", "kick", f"{uniq}-c")
    c.disconnected.get(timeout=TIMEOUT)
    missing = ctl(node, "clients", "show", f"{uniq}-c")
    assert missing.returncode == 5 and "404" in missing.stderr


def test_sessions_subscriptions_topics(
    node: AdminNode, clients: Callable[..., Paho], uniq: str
) -> None:
    c = clients(f"{uniq}-s", clean=False)
    c.subscribe(f"{uniq}/+/temp", 2)
    assert f"{uniq}-s" in ok(node, "sessions", "--client-id", uniq, "--online")
    assert f"{uniq}/+/temp" in ok(node, "sessions", "show", f"{uniq}-s")
    subs = json.loads(ok(node, "--json", "subscriptions", "--client-id", uniq))["data"]
    assert subs == [{"topic": f"{uniq}/+/temp", "client_id": f"{uniq}-s", "qos": 2}]
    assert f"{uniq}/+/temp" in ok(node, "topics", "--topic", uniq)
    c.close()
    waitFor(
        lambda: f"{uniq}-s" in ok(node, "sessions", "--offline", "--client-id", uniq), "offline"
    )
    assert f"discarded session {uniq}-s" in ok(node, "sessions", "delete", f"{uniq}-s")


def test_publish_retained_and_subscribe(
    node: AdminNode, clients: Callable[..., Paho], uniq: str
) -> None:
    sub = clients(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1)
    out = ok(node, "publish", f"{uniq}/a", "hello from ctl", "--qos", "1", "--retain")
    assert "reached 1 subscriber" in out
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos) == (f"{uniq}/a", b"hello from ctl", 1)

    assert f"{uniq}/a" in ok(node, "retained", "list", f"{uniq}/#")
    assert "hello from ctl" in ok(node, "retained", "get", f"{uniq}/a")
    assert f"deleted retained message on {uniq}/a" in ok(node, "retained", "delete", f"{uniq}/a")
    gone = ctl(node, "retained", "get", f"{uniq}/a")
    assert gone.returncode == 5 and "404 not found" in gone.stderr

    # subscribe: a quick check over the MQTT port that the API names.
    proc = subprocess.Popen(
        [
            ROBUSTMQ,
            "ctl",
            "--url",
            node.url,
            "--json",
            "subscribe",
            f"{uniq}/q/#",
            "--count",
            "1",
            "--timeout",
            "15",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waitFor(
            lambda: node.get(f"/api/v1/subscriptions?topic={uniq}/q/%23")["meta"]["count"] == 1,
            "ctl subscribe to be subscribed",
            timeout=15,
        )
        sub.publish(f"{uniq}/q/1", b"ping", qos=0)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.strip())["payload"] == "ping"


def test_errors_name_the_problem() -> None:
    port = freePort()
    down = ctl(f"http://127.0.0.1:{port}", "status")
    assert down.returncode == 3
    assert f"http://127.0.0.1:{port}" in down.stderr and "refused" in down.stderr.lower()
    bad = ctl("http://127.0.0.1:1", "clients", "show")
    assert bad.returncode == 2
    usage = subprocess.run(
        [ROBUSTMQ, "ctl", "nosuchcommand"], capture_output=True, text=True, timeout=30
    )
    assert usage.returncode == 2


def test_auth_errors_and_token() -> None:
    n = AdminNode('auth = "token"\ntoken = "tok"').start()
    try:
        denied = ctl(n, "status")
        assert denied.returncode == 4 and "401" in denied.stderr and n.url in denied.stderr
        wrong = ctl(n, "--token", "nope", "status")
        assert wrong.returncode == 4
        assert ctl(n, "--token", "tok", "status").returncode == 0
        env = {**os.environ, "RMQCTL_TOKEN": "tok"}
        assert ctl(n, "clients", env=env).returncode == 0
    finally:
        n.stop()
