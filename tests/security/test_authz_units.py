"""Kafka ACL and AMQP permission decisions, without sockets (an in-memory metadata store)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from robustmq.config import settingsFromMapping
from robustmq.core.security import Security
from robustmq.core.security import kafkaacl as K
from robustmq.core.security.kafkaacl import AclBinding, AclFilter, KafkaAclError


def _security(noMatch: str = "deny") -> Security:
    from twisted.internet.task import Clock

    return Security.inMemory(settingsFromMapping({"acl": {"no_match": noMatch}}), Clock())


class KafkaACLTests(TestCase):
    def setUp(self) -> None:
        self.security = _security()
        self.acl = self.security.kafkaAcl

    def bind(self, rt: str, name: str, op: str, perm: str = "ALLOW", **kw: str) -> None:
        self.acl.create(
            AclBinding.fromDict(
                {
                    "resource_type": rt,
                    "resource_name": name,
                    "operation": op,
                    "permission": perm,
                    "principal": kw.get("principal", "User:alice"),
                    "pattern_type": kw.get("pattern", "LITERAL"),
                    "host": kw.get("host", "*"),
                }
            )
        )

    def test_denyWinsAndImpliedDescribe(self) -> None:
        self.bind("TOPIC", "t-", "READ", pattern="PREFIXED")
        self.bind("TOPIC", "t-secret", "ALL", "DENY")
        alice = self.security.kafkaAccess("alice", "10.0.0.1")
        self.assertTrue(alice.topic(K.READ, "t-a"))
        self.assertTrue(alice.topic(K.DESCRIBE, "t-a"))  # implied by READ
        self.assertFalse(alice.topic(K.WRITE, "t-a"))
        self.assertFalse(alice.topic(K.READ, "t-secret"))
        self.assertFalse(alice.topic(K.READ, "u"))  # no binding, no_match = deny

    def test_noBindingFollowsNoMatch(self) -> None:
        security = _security("allow")
        alice = security.kafkaAccess("alice", "127.0.0.1")
        self.assertTrue(alice.topic(K.WRITE, "free"))
        security.kafkaAcl.create(
            AclBinding.create("TOPIC", "free", "LITERAL", "User:bob", "*", "WRITE", "ALLOW")
        )
        # Once the resource has a binding, only what it allows is allowed.
        self.assertFalse(alice.topic(K.WRITE, "free"))

    def test_wildcardPrincipalHostAndSuperuser(self) -> None:
        self.bind("GROUP", "*", "READ", principal="User:*", host="10.0.0.1")
        self.assertTrue(self.security.kafkaAccess("x", "10.0.0.1").group(K.READ, "g"))
        self.assertFalse(self.security.kafkaAccess("x", "10.0.0.2").group(K.READ, "g"))
        self.security.users.add("root", "pw", superuser=True)
        self.assertTrue(self.security.kafkaAccess("root", "10.0.0.2").cluster(K.ALTER))
        self.assertFalse(self.security.kafkaAccess(None, "127.0.0.1").cluster(K.ALTER))

    def test_idempotentWriteByAnyTopicWrite(self) -> None:
        alice = self.security.kafkaAccess("alice", "10.0.0.1")
        self.assertFalse(alice.anyTopic(K.WRITE))
        self.bind("TOPIC", "p-", "WRITE", pattern="PREFIXED")
        self.assertTrue(alice.anyTopic(K.WRITE))

    def test_cacheDroppedOnChange(self) -> None:
        alice = self.security.kafkaAccess("alice", "10.0.0.1")
        self.assertFalse(alice.topic(K.WRITE, "t"))
        self.bind("TOPIC", "t", "WRITE")
        self.assertTrue(alice.topic(K.WRITE, "t"))
        self.acl.delete(AclFilter.create(resourceType="TOPIC", resourceName="t"))
        self.assertFalse(alice.topic(K.WRITE, "t"))

    def test_filtersAndValidation(self) -> None:
        self.bind("TOPIC", "a", "READ")
        self.bind("TOPIC", "a", "READ")  # identical: stored once
        self.bind("TOPIC", "a", "WRITE", pattern="PREFIXED")
        self.assertEqual(len(self.acl.describe(AclFilter.create())), 2)
        match = AclFilter.create(resourceType="TOPIC", resourceName="abc", patternType="MATCH")
        self.assertEqual([b.operation for b in self.acl.describe(match)], [K.WRITE])
        for bad in (
            {"resource_type": "ANY", "resource_name": "x", "operation": "READ"},
            {"resource_type": "CLUSTER", "resource_name": "x", "operation": "READ"},
            {"resource_type": "TOPIC", "resource_name": "x", "operation": "READ", "host": "h"},
            {"resource_type": "TOPIC", "resource_name": "x", "operation": "NOPE"},
        ):
            with self.assertRaises(KafkaAclError):
                AclBinding.fromDict({"principal": "User:a", **bad})


class AMQPPermissionTests(TestCase):
    def test_rabbitmqSemantics(self) -> None:
        security = _security("deny")
        table = security.amqpPermissions
        self.assertIsNone(security.amqpAccess("bob", "/"))  # no entry, default deny
        self.assertIsNotNone(security.amqpAccess("guest", "/"))  # default user on default vhost
        table.set("bob", "/", "^bob\\.", "", "amq\\.default|bob")
        bob = security.amqpAccess("bob", "/")
        assert bob is not None
        self.assertTrue(bob.allowed("configure", "bob.q"))
        self.assertFalse(bob.allowed("configure", "x.bob.q"))  # anchored by the user
        self.assertTrue(bob.allowed("read", "my-bob"))  # searched, not anchored
        self.assertFalse(bob.allowed("write", "bob.x"))  # "" grants nothing
        self.assertTrue(bob.allowed("read", ""))  # the default exchange is amq.default
        table.set("bob", "/", ".*", ".*", ".*")
        self.assertTrue(bob.allowed("write", "bob.x"))  # cache dropped on change
        table.clear("bob", "/")
        self.assertFalse(bob.allowed("read", "bob"))

    def test_noMatchAllow(self) -> None:
        security = _security("allow")
        carol = security.amqpAccess("carol", "other")
        assert carol is not None
        self.assertTrue(carol.allowed("configure", "anything"))
