"""Unknown users under the default config: let in as anonymous, as mosquitto's local mode.

With the developer defaults (anonymous clients from loopback) an MQTT client
that sends a user name and password nobody knows used to be refused
(CONNACK 4 / 0x86) while one that sends nothing was accepted; mosquitto in
its default local mode accepts both.  ``[auth] unknown_users_as_anonymous``
(on by default and in etc/robustmq.toml, off in etc/robustmq.production.toml)
decides; docs/security.md describes it.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from robustmq.protocols.mqtt._packets import MQTT5, MQTT311
from robustmq.testing.process import BrokerProcess, freePort
from robustmq.testing.rawclient import RawClient

TIMEOUT = 5.0


def _addUser(httpPort: int, username: str, password: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{httpPort}/api/v1/users",
        data=json.dumps({"username": username, "password": password}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=TIMEOUT).read()


def _node(extra: str, acl: str = "") -> BrokerProcess:
    """A node with the admin API (to add the user "known"), C{extra} config and an ACL file."""
    httpPort = freePort()
    broker = BrokerProcess()
    aclConfig = ""
    if acl:
        (broker.workdir / "acl.toml").write_text(acl)
        aclConfig = f'[acl]\nfile = "{broker.workdir / "acl.toml"}"\n'
    broker.extraConfig = f"""
[http]
enabled = true
bind = "127.0.0.1"
port = {httpPort}

[mqtt]
sys_interval = 0

{aclConfig}
{extra}
"""
    broker.start()
    _addUser(httpPort, "known", "right")
    return broker


@pytest.fixture(scope="module")
def default() -> Iterator[BrokerProcess]:
    """The default [auth] (chain cert, users, anonymous; anonymous from loopback), with
    an ACL that gives the user name "admin" a topic nobody else may use."""
    node = _node(
        "",
        '[[rules]]\npermission = "allow"\naction = "all"\nusername = "admin"\ntopic = "adm/#"\n'
        '[[rules]]\npermission = "deny"\naction = "all"\ntopic = "adm/#"\n',
    )
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def strict() -> Iterator[BrokerProcess]:
    node = _node("[auth]\nunknown_users_as_anonymous = false\n")
    try:
        yield node
    finally:
        node.cleanup()


def _connack(node: BrokerProcess, level: int, **fields: object) -> int:
    with RawClient(node.port, timeout=TIMEOUT) as c:
        return c.connect(f"auth-{level}-{fields.get('username')}", level, **fields).returnCode


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
def test_default_lets_unknown_users_in_like_anonymous_ones(
    default: BrokerProcess, level: int
) -> None:
    assert _connack(default, level) == 0
    assert _connack(default, level, username="stranger", password=b"anything") == 0


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
def test_default_still_refuses_a_known_user_with_a_wrong_password(
    default: BrokerProcess, level: int
) -> None:
    expected = 0x86 if level == MQTT5 else 4
    assert _connack(default, level, username="known", password=b"wrong") == expected
    assert _connack(default, level, username="known", password=b"right") == 0


def test_an_unknown_user_name_grants_nothing(default: BrokerProcess) -> None:
    """Let in as anonymous, "admin" without admin's password gets none of admin's rights."""
    with RawClient(default.port, timeout=TIMEOUT) as c:
        assert c.connect("fake-admin", username="admin", password=b"guess").returnCode == 0
        assert c.subscribe([("adm/x", 1)]).returnCodes == [0x80]


@pytest.mark.parametrize("level", [MQTT311, MQTT5], ids=["3.1.1", "5.0"])
def test_switch_off_refuses_unknown_users(strict: BrokerProcess, level: int) -> None:
    expected = 0x86 if level == MQTT5 else 4
    assert _connack(strict, level) == 0  # anonymous is still allowed from loopback
    assert _connack(strict, level, username="stranger", password=b"anything") == expected
