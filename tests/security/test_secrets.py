"""No configured secret leaks: every admin API response, ctl output and the node's log.

A node is configured with every secret key set to a recognisable value;
clients log in with some of them (AMQP default user, SCRAM users, the admin
token).  Then every GET endpoint of the admin API (as listed in
openapi.json), the main ctl commands (tables and --json) and the node's log
are searched for each secret value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from robustmq.config import secretValues, settingsFromMapping
from robustmq.testing.process import BrokerProcess, freePort, waitForPort

pytestmark = pytest.mark.timeout(120)

CTL = str(Path(sys.executable).with_name("robustmq"))
SECRETS = {
    "cluster": "cluster-SECRET-7f3a9",
    "jwt": "jwt-SECRET-0b61c2d8e4",
    "token": "token-SECRET-5d9e1a",
    "basic": "basic-SECRET-8c2f4b",
    "amqp": "amqp-SECRET-3e7d5f",
    "scram": "scram-SECRET-1a4c6e",
    "url": "url-SECRET-9b8a7c",
}


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[BrokerProcess, int, int]]:
    http, amqp = freePort(), freePort()
    n = BrokerProcess(
        f"""
[placement]
cluster_secret = "{SECRETS["cluster"]}"

[auth]
jwt_secret = "{SECRETS["jwt"]}"
http_url = "http://monitor:{SECRETS["url"]}@127.0.0.1:9/auth"

[http]
port = {http}
auth = "token"
token = "{SECRETS["token"]}"
password = "{SECRETS["basic"]}"

[amqp]
default_user = "keeper"
default_pass = "{SECRETS["amqp"]}"

[[mqtt.scram_users]]
username = "scrammy"
password = "{SECRETS["scram"]}"

[[listeners]]
protocol = "amqp"
bind = "127.0.0.1"
port = {amqp}
"""
    )
    n.start()
    try:
        waitForPort("127.0.0.1", http)
        yield n, http, amqp
    finally:
        n.cleanup()


def _get(http: int, path: str) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}{path}", headers={"Authorization": f"Bearer {SECRETS['token']}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())


def test_secretValuesListsEveryMarkedKey() -> None:
    """config.secretValues finds each secret of the test config (the one list the log
    scrubber and the masking use)."""
    settings = settingsFromMapping(
        {
            "placement": {"cluster_secret": SECRETS["cluster"]},
            "auth": {"jwt_secret": SECRETS["jwt"], "http_url": f"http://u:{SECRETS['url']}@h/"},
            "http": {"token": SECRETS["token"], "password": SECRETS["basic"]},
            "amqp": {"default_pass": SECRETS["amqp"]},
            "mqtt": {"scram_users": [{"username": "s", "password": SECRETS["scram"]}]},
        }
    )
    assert sorted(secretValues(settings)) == sorted(SECRETS.values())


def test_noSecretAnywhere(node: tuple[BrokerProcess, int, int]) -> None:
    process, http, amqp = node
    # Use some of them: the AMQP default user's password, and a wrong one.
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", amqp, credentials=pika.PlainCredentials("keeper", SECRETS["amqp"])
        )
    )
    conn.close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1",
                amqp,
                credentials=pika.PlainCredentials("keeper", SECRETS["amqp"] + "x"),
                connection_attempts=1,
            )
        )
    outputs: dict[str, bytes] = {}
    doc = json.loads(_get(http, "/api/openapi.json"))
    for path, methods in doc["paths"].items():
        if "get" in methods and "{" not in path:
            outputs[f"GET {path}"] = _get(http, path)
    config = json.loads(outputs["GET /api/v1/config"])
    assert config["placement"]["cluster_secret"] == "***"
    assert config["amqp"]["default_pass"] == "***"
    assert config["mqtt"]["scram_users"][0]["password"] == "***"
    assert config["auth"]["http_url"] == "http://monitor:***@127.0.0.1:9/auth"
    url = f"http://127.0.0.1:{http}"
    for args in (
        ["config"],
        ["--json", "config"],
        ["status"],
        ["listeners"],
        ["clients"],
        ["user", "list"],
        ["acl", "list"],
        ["ban", "list"],
        ["amqp", "permissions", "list"],
        ["kafka", "acls", "list"],
    ):
        out = subprocess.run(
            [CTL, "ctl", "--url", url, "--token", SECRETS["token"], *args],
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, (args, out.stderr)
        outputs["ctl " + " ".join(args)] = out.stdout + out.stderr
    outputs["node log"] = process.output().encode()
    leaks = [
        (where, name)
        for where, text in outputs.items()
        for name, secret in SECRETS.items()
        if secret.encode() in text
    ]
    assert leaks == []
