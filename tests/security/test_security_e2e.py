"""Security over real sockets: paho-mqtt, mosquitto clients and raw MQTT against a
real node; the HTTP authentication server is a twisted.web process on a free port."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from robustmq.testing.process import BrokerProcess, freePort, waitForPort
from robustmq.testing.rawclient import ConnectionClosed, RawClient
from robustmq.transports.testcerts import generateTestCertificates

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 10.0
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
ALICE_PW = "alice-Pa55word-never-logged"
BOB_PW = "bob-Pa55word-never-logged"
ROOT_PW = "root-Pa55word-never-logged"
WRONG_PW = "wrong-Pa55word-never-logged"
HTTP_PW = "http-Pa55word-never-logged"
CTL = str(Path(sys.executable).with_name("robustmq"))


class Paho:
    """A paho client with blocking helpers (its network loop in its own thread)."""

    def __init__(self, port: int, clientId: str, v5: bool = True, **tls: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=clientId,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if tls:
            self.client.tls_set(**tls)
        self.port = port
        self.connected = threading.Event()
        self.rc: Any = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.client.on_connect = self._connect
        self.client.on_disconnect = lambda *a: self.connected.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.put((mid, rc.value))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(
            [x.value for x in codes]
        )

    def _connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.rc = rc.value
        self.connected.set()

    def connect(self, username: str | None = None, password: str | None = None) -> int:
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        return int(self.rc)

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> tuple[int, int]:
        info = self.client.publish(topic, payload, qos)
        mid, rc = self.acks.get(timeout=TIMEOUT)
        assert mid == info.mid
        return mid, rc

    def expect(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ctl(
    node: dict[str, Any], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CTL, "ctl", "--url", node["url"], "--json", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A node with anonymous access off, a default-deny ACL, users, JWT, HTTP auth and mTLS."""
    certs = generateTestCertificates(tmp_path_factory.mktemp("certs"), clientName="certuser")
    httpPort, adminPort, tlsPort = freePort(), freePort(), freePort()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("httpauthserver.py")), str(httpPort)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    broker = None
    try:
        waitForPort("127.0.0.1", httpPort)
        broker = BrokerProcess(
            f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {adminPort}

[auth]
chain = ["cert", "users", "jwt", "http", "anonymous"]
allow_anonymous = "off"
jwt_secret = "{JWT_SECRET}"
http_url = "http://127.0.0.1:{httpPort}/auth"
http_timeout = 1.0

[acl]
no_match = "deny"

[[listeners]]
protocol = "mqtt"
transport = "tls"
bind = "127.0.0.1"
port = {tlsPort}
certfile = "{certs["server"]}"
keyfile = "{certs["server_key"]}"
cacertfile = "{certs["ca"]}"
verify_peer = true
peer_cert_as_username = "cn"
"""
        )
        broker.start()
        waitForPort("127.0.0.1", adminPort)
        info = {
            "broker": broker,
            "port": broker.port,
            "tls": tlsPort,
            "certs": certs,
            "url": f"http://127.0.0.1:{adminPort}",
            "http": f"http://127.0.0.1:{httpPort}",
        }
        for args, stdin in (
            (("user", "add", "alice"), ALICE_PW + "\n"),
            (("user", "add", "bob"), BOB_PW + "\n"),
            (("user", "add", "root", "--superuser"), ROOT_PW + "\n"),
            (("acl", "add", "allow", "--topic", "%u/#"), None),
            (("acl", "add", "allow", "--action", "subscribe", "--topic", "feeds/#"), None),
        ):
            done = ctl(info, *args, stdin=stdin)
            assert done.returncode == 0, done.stderr
        yield info
    finally:
        if broker is not None:
            broker.cleanup()
        server.terminate()
        server.wait(10)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def mosquitto(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_passwordsUnknownUsersAndAnonymous(node):
    ok = Paho(node["port"], uniq("alice"))
    assert ok.connect("alice", ALICE_PW) == 0
    ok.close()
    assert Paho(node["port"], uniq("w")).connect("alice", WRONG_PW) == 0x86
    assert Paho(node["port"], uniq("u")).connect("nobody", WRONG_PW) == 0x86
    assert Paho(node["port"], uniq("a")).connect() == 0x87
    with RawClient(node["port"]) as raw:
        assert raw.connect(uniq("w3"), username="alice", password=WRONG_PW.encode()).returnCode == 4
    with RawClient(node["port"]) as raw:
        assert raw.connect(uniq("a3")).returnCode == 5
    refused = mosquitto(
        "mosquitto_pub", node["port"], "-u", "alice", "-P", WRONG_PW, "-t", "alice/x", "-m", "m"
    )
    assert refused.returncode != 0


def test_jwtValidExpiredForged(node):
    cid = uniq("jwt")
    claims = {
        "exp": time.time() + 300,
        "clientid": cid,
        "acl": [{"permission": "allow", "action": "publish", "topics": ["jwt/%c/#"]}],
    }
    token = jwt.encode(claims, JWT_SECRET, "HS256")
    c = Paho(node["port"], cid)
    assert c.connect("device", token) == 0
    assert c.publish(f"jwt/{cid}/t", b"x")[1] in (0, 0x10)
    assert c.publish("jwt/other/t", b"x")[1] == 0x87
    c.close()
    expired = jwt.encode({**claims, "exp": time.time() - 5}, JWT_SECRET, "HS256")
    assert Paho(node["port"], cid).connect("device", expired) == 0x86
    forged = jwt.encode(claims, "not-the-secret-0123456789abcdef!", "HS256")
    assert Paho(node["port"], cid).connect("device", forged) == 0x86
    wrongClient = jwt.encode(claims, JWT_SECRET, "HS256")
    assert Paho(node["port"], uniq("other")).connect("device", wrongClient) == 0x86


def test_connectionEndsWhenItsTokenExpires(node):
    cid = uniq("jwtexp")
    token = jwt.encode({"exp": time.time() + 1.5, "clientid": cid}, JWT_SECRET, "HS256")
    reasons: list[int] = []
    c = Paho(node["port"], cid)
    c.client.on_disconnect = lambda cl, u, f, rc, p: reasons.append(rc.value)
    c.client.reconnect_delay_set(min_delay=120, max_delay=120)
    assert c.connect("device", token) == 0
    deadline = time.monotonic() + 10
    while not reasons and time.monotonic() < deadline:
        time.sleep(0.05)
    c.client.loop_stop()
    assert reasons[:1] == [0x87]  # Not authorized: credentials expired


def _httpCount(node) -> int:
    with urllib.request.urlopen(node["http"] + "/count", timeout=5) as r:
        return int(json.loads(r.read())["count"])


def test_httpAuthAllowDenyTimeoutAndCache(node):
    user, cid = uniq("http-allow"), uniq("h")
    before = _httpCount(node)
    for _ in range(2):
        c = Paho(node["port"], cid)
        assert c.connect(user, HTTP_PW) == 0
        c.close()
    assert _httpCount(node) == before + 1  # the second answer came from the cache
    assert Paho(node["port"], uniq("h")).connect(uniq("http-deny"), HTTP_PW) == 0x86
    assert Paho(node["port"], uniq("h")).connect(uniq("http-slow"), HTTP_PW) == 0x86
    assert Paho(node["port"], uniq("h")).connect(uniq("http-500"), HTTP_PW) == 0x86


def test_certificateIdentity(node):
    certs = node["certs"]
    tls = [
        "--cafile",
        str(certs["ca"]),
        "--cert",
        str(certs["client"]),
        "--key",
        str(certs["client_key"]),
    ]
    topic = f"certuser/{uuid.uuid4().hex[:8]}"
    pub = mosquitto(
        "mosquitto_pub", node["tls"], *tls, "-t", topic, "-m", "from-cert", "-r", "-q", "1"
    )
    assert pub.returncode == 0, pub.stderr
    sub = mosquitto("mosquitto_sub", node["tls"], *tls, "-t", topic, "-C", "1", "-W", "10")
    assert sub.stdout.strip() == "from-cert", sub.stderr
    # The same client without a certificate is anonymous, which this node refuses.
    anon = mosquitto(
        "mosquitto_pub", node["tls"], "--cafile", str(certs["ca"]), "-t", topic, "-m", "x"
    )
    assert anon.returncode != 0


def test_aclPublishAndSubscribe(node):
    root = Paho(node["port"], uniq("root"))
    assert root.connect("root", ROOT_PW) == 0
    assert root.subscribe("+/acl/#") == [1]
    alice = Paho(node["port"], uniq("alice"))
    assert alice.connect("alice", ALICE_PW) == 0
    assert alice.subscribe("alice/#") == [1]
    assert alice.subscribe("bob/#") == [0x87]
    assert alice.subscribe("feeds/#") == [1]
    assert alice.publish("bob/acl/x", b"denied-5")[1] == 0x87
    assert alice.publish("$SYS/acl/x", b"denied-sys")[1] == 0x87
    assert alice.subscribe("$SYS/#") == [1]
    # MQTT 3.1.1: the denied message is acknowledged and dropped; the next one arrives first.
    for topic, payload in (("bob/acl/y", "denied-3"), ("alice/acl/y", "allowed-3")):
        done = mosquitto(
            "mosquitto_pub",
            node["port"],
            "-u",
            "alice",
            "-P",
            ALICE_PW,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        )
        assert done.returncode == 0, done.stderr
    assert root.expect().payload == b"allowed-3"
    sub3 = mosquitto(
        "mosquitto_sub",
        node["port"],
        "-u",
        "alice",
        "-P",
        ALICE_PW,
        "-t",
        "bob/#",
        "-C",
        "1",
        "-W",
        "3",
        "-V",
        "mqttv311",
        "-d",
    )
    assert "Subscribed (mid: 1): 128" in sub3.stdout
    alice.close()
    root.close()


def test_aclRuleChangeAppliesToConnectedClients(node):
    bob = Paho(node["port"], uniq("bob"))
    assert bob.connect("bob", BOB_PW) == 0
    assert bob.publish("news/t", b"x")[1] == 0x87
    added = ctl(
        node, "acl", "add", "allow", "--action", "publish", "--topic", "news/#", "--username", "bob"
    )
    assert added.returncode == 0, added.stderr
    ruleId = json.loads(added.stdout)["id"]
    assert bob.publish("news/t", b"x")[1] in (0, 0x10)
    assert ctl(node, "acl", "del", ruleId).returncode == 0
    assert bob.publish("news/t", b"x")[1] == 0x87
    bob.close()


def test_banAndUnban(node):
    cid = uniq("banme")
    done = ctl(node, "ban", "add", "clientid", cid, "--reason", "test")
    assert done.returncode == 0, done.stderr
    assert Paho(node["port"], cid).connect("alice", ALICE_PW) == 0x8A
    with RawClient(node["port"]) as raw:
        assert raw.connect(cid, username="alice", password=ALICE_PW.encode()).returnCode == 5
    listed = json.loads(ctl(node, "ban", "list").stdout)["data"]
    assert any(b["value"] == cid for b in listed)
    assert ctl(node, "ban", "del", "clientid", cid).returncode == 0
    c = Paho(node["port"], cid)
    assert c.connect("alice", ALICE_PW) == 0
    c.close()
    assert ctl(node, "ban", "add", "username", "bob", "--duration", "600").returncode == 0
    assert Paho(node["port"], uniq("b")).connect("bob", BOB_PW) == 0x8A
    assert ctl(node, "ban", "del", "username", "bob").returncode == 0


def test_banDisconnectsConnectedClients(node):
    """A ban closes the connections it covers at once (MQTT 5: DISCONNECT 0x98)."""
    reasons: list[int] = []
    byId = Paho(node["port"], uniq("kickme"))
    byId.client.on_disconnect = lambda c, u, f, rc, p: reasons.append(rc.value)
    assert byId.connect("alice", ALICE_PW) == 0
    byName = Paho(node["port"], uniq("b"))
    assert byName.connect("bob", BOB_PW) == 0
    byName.connected.clear()
    bystander = Paho(node["port"], uniq("a"))
    assert bystander.connect("alice", ALICE_PW) == 0
    bystander.connected.clear()
    cid = byId.client._client_id.decode()
    assert ctl(node, "ban", "add", "clientid", cid, "--duration", "60").returncode == 0
    deadline = time.monotonic() + TIMEOUT
    while not reasons and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reasons[:1] == [0x98]
    assert ctl(node, "ban", "add", "username", "bob", "--duration", "60").returncode == 0
    assert byName.connected.wait(TIMEOUT), "bob stayed connected"  # set by on_disconnect
    assert not bystander.connected.wait(0.5)  # nobody else was touched
    for client in (byId, byName, bystander):
        client.client.loop_stop()
    assert ctl(node, "ban", "del", "clientid", cid).returncode == 0
    assert ctl(node, "ban", "del", "username", "bob").returncode == 0


def test_userPasswdAndDel(node):
    assert ctl(node, "user", "add", "carol", stdin="carol-first-pw\n").returncode == 0
    assert ctl(node, "user", "passwd", "carol", stdin="carol-second-pw\n").returncode == 0
    assert Paho(node["port"], uniq("c")).connect("carol", "carol-first-pw") == 0x86
    c = Paho(node["port"], uniq("c"))
    assert c.connect("carol", "carol-second-pw") == 0
    c.close()
    names = [u["username"] for u in json.loads(ctl(node, "user", "list").stdout)["data"]]
    assert names == ["alice", "bob", "carol", "root"]
    assert ctl(node, "user", "del", "carol").returncode == 0
    assert Paho(node["port"], uniq("c")).connect("carol", "carol-second-pw") == 0x86


def test_zzPasswordsNeverInTheLog(node):
    """Runs last in this module: every password used above must be absent from the log."""
    log = node["broker"].output()
    assert "wrong password for user alice" in log  # the failures were logged...
    for secret in (
        ALICE_PW,
        BOB_PW,
        ROOT_PW,
        WRONG_PW,
        HTTP_PW,
        "carol-first-pw",
        "carol-second-pw",
    ):
        assert secret not in log  # ...without the passwords
    store = Path(node["broker"].dataDir) / "metadata" / "security.sqlite3"
    assert store.exists() and ALICE_PW.encode() not in store.read_bytes()


# Nodes with other limits


def test_flappingClientBanned():
    with BrokerProcess(
        "[limits]\nflapping_enabled = true\nflapping_max_connects = 3\nflapping_window = 60.0\n"
    ) as node:
        cid = uniq("flappy")
        for _ in range(3):
            with RawClient(node.port) as raw:
                assert raw.connect(cid).returnCode == 0
        with RawClient(node.port) as raw:
            assert raw.connect(cid).returnCode == 5
        assert Paho(node.port, cid).connect() == 0x8A
        with RawClient(node.port) as raw:
            assert raw.connect(uniq("calm")).returnCode == 0


def test_rateLimitSlowsAPublisherWithoutLosingQos1():
    with BrokerProcess("[limits]\nmessage_rate = 40.0\nmessage_burst = 5\n") as node:
        sub = Paho(node.port, uniq("sub"), v5=False)
        assert sub.connect() == 0
        assert sub.subscribe("rate/#") == [1]
        pub = Paho(node.port, uniq("pub"), v5=False)
        assert pub.connect() == 0
        n = 60
        infos = [pub.client.publish("rate/t", b"%d" % i, qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
        got = [sub.expect().payload for _ in range(n)]
        assert got == [b"%d" % i for i in range(n)]
        node.waitForOutput("over the publish rate; not reading for")
        pub.close()
        sub.close()


def test_connectionLimitRefusesTheExtraClient():
    with BrokerProcess("[limits]\nmax_connections = 2\n") as node:
        time.sleep(0.2)  # let the start-up port probe's socket close on the node
        first, second = Paho(node.port, uniq("one")), Paho(node.port, uniq("two"))
        assert first.connect() == 0 and second.connect() == 0
        with pytest.raises(ConnectionClosed):
            with RawClient(node.port) as raw:
                raw.connect(uniq("three"))
        node.waitForOutput("refused: connection limit reached")
        first.close()
        second.close()


def test_aclFileReloadedOnSighup(tmp_path: Path) -> None:
    rules = tmp_path / "acl.toml"
    rules.write_text('[[rules]]\npermission = "deny"\naction = "publish"\ntopics = ["locked/#"]\n')
    with BrokerProcess(f'[acl]\nno_match = "allow"\nfile = "{rules}"\n') as node:
        c = Paho(node.port, uniq("acl"))
        assert c.connect() == 0
        assert c.publish("locked/x", b"x")[1] == 0x87
        rules.write_text(
            '[[rules]]\npermission = "deny"\naction = "publish"\ntopics = ["other/#"]\n'
        )
        os.kill(node.pid, signal.SIGHUP)
        node.waitForOutput("ACL file", 10)
        assert c.publish("locked/x", b"x")[1] in (0, 0x10)
        assert c.publish("other/x", b"x")[1] == 0x87
        # A broken file keeps the rules in force.
        rules.write_text("[[rules]\nnot toml")
        os.kill(node.pid, signal.SIGHUP)
        node.waitForOutput("reload failed", 10)
        assert c.publish("other/x", b"x")[1] == 0x87
        c.close()
