"""Security without sockets: ACL matching, buckets, bans, flapping, stores, JWT,
and the MQTT hooks over the in-memory broker."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest as trial

from robustmq.config import ConfigError, settingsFromMapping
from robustmq.core.auth import ALLOW, DENY, IGNORE, Credentials
from robustmq.core.scram import ScramClient, scramSha256Plugin
from robustmq.core.security import EmbeddedMetadataStore, Security, securityOf
from robustmq.core.security.acl import RuleError, coversFilter, matchTopic
from robustmq.core.security.authenticators import AnonymousAuthenticator, isLoopback
from robustmq.core.security.bans import Bans
from robustmq.core.security.jwtauth import JWTAuthenticator
from robustmq.core.security.limits import TokenBucket
from robustmq.core.security.metadata import MemoryMetadataStore
from robustmq.protocols.mqtt import encode
from robustmq.protocols.mqtt._packets import (
    MQTT5,
    MQTT311,
    Connect,
    Publish,
    Reason,
    Subscribe,
)
from robustmq.testing.memory import InMemoryBroker


def security(**sections) -> Security:
    return Security.inMemory(settingsFromMapping(sections), Clock())


def creds(**kw) -> Credentials:
    kw.setdefault("protocol", "mqtt")
    kw.setdefault("clientId", "c1")
    return Credentials(**kw)


# ACL matching


def test_topicMatchingAndFilterCovering():
    assert matchTopic("a/+/c".split("/"), "a/b/c".split("/"))
    assert matchTopic(["#"], ["a", "b"])
    assert not matchTopic(["#"], ["$SYS", "x"])
    assert not matchTopic("a/+".split("/"), "a/b/c".split("/"))
    assert coversFilter("a/#".split("/"), "a/+/c".split("/"))
    assert coversFilter("a/+".split("/"), "a/+".split("/"))
    assert not coversFilter("a/+".split("/"), "a/#".split("/"))
    assert not coversFilter("a/b".split("/"), "a/+".split("/"))


def test_rulesWithPlaceholdersEqAndWho():
    s = security(acl={"no_match": "deny"})
    s.acl.add({"permission": "allow", "action": "publish", "topics": ["%u/%c/#"]})
    s.acl.add({"permission": "allow", "action": "subscribe", "topics": ["eq feeds/#"]})
    s.acl.add(
        {"permission": "allow", "topics": ["lab/#"], "ipaddress": "10.0.0.0/8", "username": "bob"}
    )
    alice = s.access("dev1", "alice", "192.168.1.5")
    assert alice.canPublish("alice/dev1/temp")
    assert not alice.canPublish("alice/dev2/temp")
    assert not alice.canPublish("bob/dev1/temp")
    assert alice.canSubscribe("feeds/#")
    assert not alice.canSubscribe("feeds/a")  # eq: that filter exactly, no wildcard matching
    assert not alice.canPublish("lab/x")
    bob = s.access("d", "bob", "10.1.2.3")
    assert bob.canPublish("lab/x") and bob.canSubscribe("lab/+")
    assert not s.access("d", "bob", "11.1.2.3").canPublish("lab/x")
    anonymous = s.access("d", None, "10.1.2.3")
    assert not anonymous.canPublish("None/d/x")


def test_sysReadableNeverWritableAndSuperusers():
    s = security(acl={"no_match": "deny"})
    s.users.add("root", "pw-root", superuser=True)
    plain = s.access("c", "joe", "127.0.0.1")
    assert plain.canSubscribe("$SYS/broker/uptime")
    assert not plain.canPublish("$SYS/broker/uptime")
    root = s.access("c", "root", "127.0.0.1")
    assert root.canPublish("any/thing") and not root.canPublish("$SYS/x")
    open_ = security()
    assert not open_.access("c", None, None).canPublish("$SYS/x")
    assert open_.access("c", None, None).canPublish("x")


def test_decisionCacheClearedWhenRulesChange():
    s = security(acl={"no_match": "allow"})
    access = s.access("c", "u", "127.0.0.1")
    assert access.canPublish("t/1")
    rule = s.acl.add({"permission": "deny", "action": "publish", "topics": ["t/#"]})
    assert not access.canPublish("t/1")
    s.acl.delete(rule.id)
    assert access.canPublish("t/1")


def test_badRulesRefused():
    s = security()
    for bad in (
        {"permission": "maybe", "topics": ["a"]},
        {"permission": "allow", "topics": []},
        {"permission": "allow", "topics": ["a"], "ipaddress": "not-an-ip"},
        {"permission": "allow", "topics": ["a"], "colour": "red"},
    ):
        with pytest.raises(RuleError):
            s.acl.add(bad)


def test_aclFile(tmp_path):
    path = tmp_path / "acl.toml"
    path.write_text('[[rules]]\npermission = "deny"\naction = "publish"\ntopics = ["secret/#"]\n')
    s = security(acl={"file": str(path)})
    assert not s.access("c", "u", "1.2.3.4").canPublish("secret/x")
    path.write_text('[[rules]]\npermission = "deny"\n')
    with pytest.raises(ConfigError, match="acl.file"):
        security(acl={"file": str(path)})


# Buckets, bans, flapping


def test_tokenBucketDelaysInsteadOfDropping():
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert [b.take(1, 0.0) for _ in range(5)] == [0.0] * 5
    assert b.take(1, 0.0) == pytest.approx(0.1)
    assert b.take(1, 0.0) == pytest.approx(0.2)
    assert b.take(1, 1.0) == 0.0  # refilled (capped at the burst)
    assert not TokenBucket(1, 1, 0.0).tryTake(2, 0.0)


def test_bansExpireAndCidr():
    now = [1000.0]
    bans = Bans(MemoryMetadataStore(), 10, wallClock=lambda: now[0])
    bans.add("clientid", "bad", duration=60)
    bans.add("ip", "10.0.0.0/8")
    bans.add("username", "eve")
    assert bans.check("bad", None, "1.1.1.1")
    assert bans.check("x", None, "10.9.9.9")
    assert bans.check("x", "eve", "1.1.1.1")
    assert bans.check("x", "joe", "1.1.1.1") is None
    now[0] += 61
    assert bans.check("bad", None, "1.1.1.1") is None
    assert bans.delete("ip", "10.0.0.0/8")
    assert bans.check("x", None, "10.9.9.9") is None
    assert [b["value"] for b in bans.list()] == ["eve"]


def test_flappingBansAfterTooManyConnects():
    clock = Clock()
    s = Security.inMemory(
        settingsFromMapping(
            {
                "limits": {
                    "flapping_enabled": True,
                    "flapping_max_connects": 3,
                    "flapping_window": 10,
                }
            }
        ),
        clock,
    )
    for _ in range(3):
        assert s.admit("flappy", None, "127.0.0.1") is None
        clock.advance(1)
    assert "flapping" in s.admit("flappy", None, "127.0.0.1")
    assert s.admit("flappy", None, "127.0.0.1")  # banned now
    assert s.admit("calm", None, "127.0.0.1") is None
    clock.advance(100)
    steady = [s.admit("steady", None, "127.0.0.1") for _ in range(1)]
    assert steady == [None]


def test_flappingOffByDefault():
    s = security()
    assert all(s.admit("c", None, "127.0.0.1") is None for _ in range(100))


# Stores


def test_embeddedStoreSurvivesReopen(tmp_path):
    path = str(tmp_path / "m" / "security.sqlite3")
    settings = settingsFromMapping({})
    s = Security(settings, Clock(), EmbeddedMetadataStore(path))
    s.users.add("alice", "correct horse")
    s.acl.add({"permission": "deny", "topics": ["x/#"], "id": "r1"})
    s.acl.add({"permission": "allow", "topics": ["y/#"], "id": "r2"})
    s.bans.add("username", "eve")
    s.metadata.close()
    again = Security(settings, Clock(), EmbeddedMetadataStore(path))
    assert "alice" in again.users
    assert [r["id"] for r in again.acl.list()] == ["r1", "r2"]
    assert again.bans.check("c", "eve", None)
    raw = open(path, "rb").read()
    assert b"correct horse" not in raw


class UsersTests(trial.TestCase):
    """Password checks run in the reactor's thread pool, so these run under trial."""

    def test_usersHashAndVerify(self) -> defer.Deferred[None]:
        async def run() -> None:
            s = security()
            s.users.add("alice", "s3cret-pw")
            record = s.metadata.get("users", "alice")
            assert record["hash"].startswith("$argon2id$") and "s3cret-pw" not in str(record)
            assert await s.users.verify("alice", b"s3cret-pw") is True
            assert await s.users.verify("alice", b"wrong") is False
            assert await s.users.verify("nobody", b"x") is None
            with pytest.raises(ValueError):
                s.users.add("alice", "again")
            s.users.update("alice", password="new-pw")
            assert await s.users.verify("alice", b"new-pw") is True

        return defer.ensureDeferred(run())


def test_scramUsesTheUserStore():
    s = security()
    s.users.add("carol", "scram-pw")
    mechanism = scramSha256Plugin.build(s.settings, s)
    server = mechanism()
    client = ScramClient("carol", "scram-pw")
    status, first = server.step(client.first())
    assert status == "continue"
    status, final = server.step(client.final(first))
    assert status == "success" and client.verify(final)


def test_anonymousModes():
    assert isLoopback("127.0.0.1") and isLoopback("::1") and isLoopback("::ffff:127.0.0.1")
    assert not isLoopback("192.168.1.1")
    loop = AnonymousAuthenticator("loopback")
    assert loop.authenticate(creds(peerHost="127.0.0.1")) == ALLOW
    assert loop.authenticate(creds(peerHost="8.8.8.8")) == IGNORE
    assert loop.authenticate(creds(peerHost="127.0.0.1", password=b"x")) == IGNORE
    assert AnonymousAuthenticator("off").authenticate(creds(peerHost="127.0.0.1")) == IGNORE
    assert AnonymousAuthenticator("on").authenticate(creds(peerHost="8.8.8.8")) == ALLOW


# JWT


def _jwtSettings(**auth):
    return settingsFromMapping({"auth": auth}).auth


def test_jwtHS256():
    auth = JWTAuthenticator(_jwtSettings(jwt_secret="k" * 32))
    good = jwt.encode(
        {
            "exp": time.time() + 60,
            "username": "u",
            "acl": [{"permission": "allow", "topics": ["a"]}],
        },
        "k" * 32,
        "HS256",
    )
    c = creds(username="u", password=good.encode())
    assert auth.authenticate(c) == ALLOW
    assert c.attributes["acl"][0].topics == ("a",)
    expired = jwt.encode({"exp": time.time() - 10}, "k" * 32, "HS256")
    assert auth.authenticate(creds(password=expired.encode())) == DENY
    forged = jwt.encode({"exp": time.time() + 60}, "x" * 32, "HS256")
    assert auth.authenticate(creds(password=forged.encode())) == DENY
    noExp = jwt.encode({"sub": "u"}, "k" * 32, "HS256")
    assert auth.authenticate(creds(password=noExp.encode())) == DENY
    otherUser = jwt.encode({"exp": time.time() + 60, "username": "v"}, "k" * 32, "HS256")
    assert auth.authenticate(creds(username="u", password=otherUser.encode())) == DENY
    assert auth.authenticate(creds(password=b"plain password")) == IGNORE


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwtPublicKeyAndJWKS(tmp_path, alg):
    key = (
        rsa.generate_private_key(65537, 2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    algo = jwt.get_algorithm_by_name(alg)
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = "k1"
    import json

    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    token = jwt.encode({"exp": time.time() + 60}, key, alg, headers={"kid": "k1"})
    # HS256 signed with the public key's bytes (algorithm confusion) must fail.
    confused = jwt.encode({"exp": time.time() + 60}, "not-the-key" * 4, "HS256")
    for settings in (
        _jwtSettings(jwt_public_key_file=str(tmp_path / "pub.pem")),
        _jwtSettings(jwt_jwks_file=str(tmp_path / "jwks.json")),
    ):
        auth = JWTAuthenticator(settings)
        assert auth.authenticate(creds(password=token.encode())) == ALLOW
        assert auth.authenticate(creds(password=confused.encode())) == DENY


# The MQTT hooks over the in-memory broker


def _connect(h, clientId, version=MQTT311, **kw):
    c = h.connect()
    if version == MQTT5:
        c.parser.version = MQTT5
    c.sendBytes(encode(Connect(clientId, protocolLevel=version, **kw), version))
    return c, c.received()


def test_mqttPublishAndSubscribeDenied():
    h = InMemoryBroker({"mqtt": {"sys_interval": 0}, "acl": {"no_match": "deny"}})
    acl = securityOf(h.broker).acl
    acl.add({"permission": "allow", "topics": ["%c/#"]})
    c5, [connack] = _connect(h, "v5", MQTT5)
    assert connack.returnCode == 0
    c5.sendBytes(encode(Publish("other/t", b"x", qos=1, packetId=7), MQTT5))
    [ack] = c5.received()
    assert (ack.packetId, ack.reasonCode) == (7, Reason.NOT_AUTHORIZED)
    c5.sendBytes(encode(Publish("v5/t", b"x", qos=1, packetId=8), MQTT5))
    [ack] = c5.received()
    assert ack.reasonCode in (0, Reason.NO_MATCHING_SUBSCRIBERS)
    c5.sendBytes(encode(Subscribe(1, [("other/#", 1), ("v5/#", 1)], {}), MQTT5))
    [suback] = c5.received()
    assert suback.returnCodes == [Reason.NOT_AUTHORIZED, 1]
    c3, [connack] = _connect(h, "v3")
    c3.sendBytes(encode(Subscribe(1, [("other/#", 1), ("v3/#", 0)])))
    [suback] = c3.received()
    assert suback.returnCodes == [0x80, 0]
    c3.sendBytes(encode(Publish("other/t", b"x", qos=1, packetId=9)))
    [ack] = c3.received()  # 3.1.1: acknowledged, dropped
    assert ack.packetId == 9 and not c3.disconnecting


def test_mqttDenyActionDisconnect():
    h = InMemoryBroker({"mqtt": {"sys_interval": 0}, "acl": {"deny_action": "disconnect"}})
    c, _ = _connect(h, "d")
    c.sendBytes(encode(Publish("$SYS/fake", b"x", qos=0)))
    assert c.disconnecting


def test_mqttBannedClientRefused():
    h = InMemoryBroker({"mqtt": {"sys_interval": 0}})
    securityOf(h.broker).bans.add("clientid", "bad")
    _, [connack] = _connect(h, "bad")
    assert connack.returnCode == 5
    _, [connack] = _connect(h, "bad", MQTT5)
    assert connack.returnCode == Reason.BANNED


def test_mqttRateLimitPausesReadingWithoutDropping():
    h = InMemoryBroker(
        {"mqtt": {"sys_interval": 0}, "limits": {"message_rate": 10, "message_burst": 2}}
    )
    sub, _ = _connect(h, "sub")
    sub.sendBytes(encode(Subscribe(1, [("r/#", 1)])))
    sub.received()
    pub, _ = _connect(h, "pub")
    pub.sendBytes(
        b"".join(encode(Publish("r/t", b"%d" % i, qos=1, packetId=i + 1)) for i in range(6))
    )
    acks = pub.received()
    assert len(acks) == 3  # the burst, plus the one that went into debt
    assert pub.transport.producerState == "paused"
    for _ in range(20):
        h.clock.advance(0.1)
        acks += pub.received()
    assert [a.packetId for a in acks] == [1, 2, 3, 4, 5, 6]
    assert [p.payload for p in sub.received()] == [b"%d" % i for i in range(6)]
    assert pub.transport.producerState == "producing"


def test_productionExampleIsValidAndLocked():
    from pathlib import Path

    from robustmq.config import loadSettings

    path = Path(__file__).resolve().parents[2] / "etc" / "robustmq.production.toml"
    settings = loadSettings(str(path), environ={"ROBUSTMQ_HTTP__TOKEN": "t"})
    assert settings.auth.allow_anonymous == "off" and "anonymous" not in settings.auth.chain
    assert settings.acl.no_match == "deny" and settings.limits.flapping_enabled
    assert all(listener.transport == "tls" for listener in settings.listeners)
