"""Kafka ACLs end to end: AdminClients manage the bindings, the broker enforces them.

One node with a default-deny ACL (C{[acl] no_match = "deny"}, as in the
production example), a superuser C{admin} and a plain user C{alice}, both
logging in with SCRAM.  C{admin} grants alice access through confluent-kafka's
and kafka-python's AdminClient (CreateAcls, DescribeAcls, DeleteAcls); alice's
produce, fetch, group and transactional requests then get Kafka's error codes
where the bindings say no.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafkanode import TIMEOUT, KafkaNodeProcess

from robustmq.testing.process import freePort, waitForPort

ADMIN_PW = "admin-Kafka-Pa55"
ALICE_PW = "alice-Kafka-Pa55"


class _Node(KafkaNodeProcess):
    httpPort: int

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.httpPort}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def node() -> Iterator[_Node]:
    http = freePort()
    n = _Node(f'\n[acl]\nno_match = "deny"\n\n[http]\nport = {http}\n')
    n.httpPort = http
    n.start()
    try:
        waitForPort("127.0.0.1", http)
        n.api(
            "POST", "/api/v1/users", {"username": "admin", "password": ADMIN_PW, "superuser": True}
        )
        n.api("POST", "/api/v1/users", {"username": "alice", "password": ALICE_PW})
        yield n
    finally:
        n.cleanup()


def _conf(node: _Node, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": node.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
    }


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "prefix": f"ok-{tag}-",
        "ok": f"ok-{tag}-topic",
        "denied": f"no-{tag}-topic",
        "group": f"g-ok-{tag}",
        "badgroup": f"g-no-{tag}",
        "txn": f"tx-ok-{tag}",
        "badtxn": f"tx-no-{tag}",
    }


@pytest.fixture(scope="module")
def granted(node: _Node, names: dict[str, str]) -> AdminClient:
    """admin creates both topics and grants alice: the ok- prefix, one group, one txn id."""
    admin = AdminClient(_conf(node, "admin", ADMIN_PW))
    for f in admin.create_topics([NewTopic(names["ok"], 1), NewTopic(names["denied"], 1)]).values():
        f.result(TIMEOUT)
    alice = "User:alice"

    def allow(
        rt: Any, name: str, op: Any, pattern: Any = ResourcePatternType.LITERAL
    ) -> AclBinding:
        return AclBinding(rt, name, pattern, alice, "*", op, AclPermissionType.ALLOW)

    bindings = [
        allow(
            ResourceType.TOPIC, names["prefix"], AclOperation.WRITE, ResourcePatternType.PREFIXED
        ),
        allow(ResourceType.TOPIC, names["prefix"], AclOperation.READ, ResourcePatternType.PREFIXED),
        allow(ResourceType.GROUP, names["group"], AclOperation.READ),
        allow(ResourceType.TRANSACTIONAL_ID, names["txn"], AclOperation.WRITE),
    ]
    for f in admin.create_acls(bindings).values():
        f.result(TIMEOUT)
    return admin


def test_adminClientRoundTrip(node: _Node, granted: AdminClient, names: dict[str, str]) -> None:
    """confluent-kafka: the created bindings are described back; a filter deletes one;
    alice (no ALTER on the cluster) may not create bindings."""
    flt = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        "User:alice",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    found = granted.describe_acls(flt).result(TIMEOUT)
    mine = {
        (b.restype, b.name, b.operation)
        for b in found
        if names["prefix"] in b.name or b.name in (names["group"], names["txn"])
    }
    assert (ResourceType.TOPIC, names["prefix"], AclOperation.WRITE) in mine
    assert (ResourceType.GROUP, names["group"], AclOperation.READ) in mine
    assert (ResourceType.TRANSACTIONAL_ID, names["txn"], AclOperation.WRITE) in mine
    extra = AclBinding(
        ResourceType.TOPIC,
        "scratch",
        ResourcePatternType.LITERAL,
        "User:bob",
        "*",
        AclOperation.DESCRIBE,
        AclPermissionType.ALLOW,
    )
    granted.create_acls([extra])[extra].result(TIMEOUT)
    gone = AclBindingFilter(
        ResourceType.TOPIC,
        "scratch",
        ResourcePatternType.LITERAL,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deleted = granted.delete_acls([gone])[gone].result(TIMEOUT)
    assert [(b.name, b.principal) for b in deleted] == [("scratch", "User:bob")]
    assert granted.describe_acls(gone).result(TIMEOUT) == []
    alice = AdminClient(_conf(node, "alice", ALICE_PW))
    with pytest.raises(KafkaException) as e:
        alice.create_acls([extra])[extra].result(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_kafkaPythonAdminDescribesAcls(
    node: _Node, granted: AdminClient, names: dict[str, str]
) -> None:
    """kafka-python's KafkaAdminClient reads the same bindings (DescribeAcls)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KpResourceType

    admin = KafkaAdminClient(
        bootstrap_servers=node.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="admin",
        sasl_plain_password=ADMIN_PW,
    )
    try:
        acls, error = admin.describe_acls(
            ACLFilter(
                principal="User:alice",
                host="*",
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(
                    KpResourceType.GROUP, names["group"], ACLResourcePatternType.LITERAL
                ),
            )
        )
        assert [(a.resource_pattern.resource_name, a.operation) for a in acls] == [
            (names["group"], ACLOperation.READ)
        ]
    finally:
        admin.close()


def _deliveryError(node: _Node, topic: str, **extra: Any) -> Any:
    errors: list[Any] = []
    p = Producer({**_conf(node, "alice", ALICE_PW), "message.timeout.ms": 8000, **extra})
    p.produce(topic, value=b"x", on_delivery=lambda e, m: errors.append(e))
    p.flush(TIMEOUT)
    assert len(errors) == 1
    return errors[0]


def test_produceAllowedAndDenied(node: _Node, granted: AdminClient, names: dict[str, str]) -> None:
    """alice writes under her prefix; elsewhere TOPIC_AUTHORIZATION_FAILED."""
    assert _deliveryError(node, names["ok"]) is None
    err = _deliveryError(node, names["denied"])
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _consume(node: _Node, topic: str, group: str) -> tuple[list[bytes], list[int]]:
    c = Consumer(
        {**_conf(node, "alice", ALICE_PW), "group.id": group, "auto.offset.reset": "earliest"}
    )
    c.subscribe([topic])
    got: list[bytes] = []
    errors: list[int] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and not got and not errors:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                errors.append(m.error().code())
            else:
                got.append(m.value())
    finally:
        c.close()
    return got, errors


def test_fetchAndGroups(node: _Node, granted: AdminClient, names: dict[str, str]) -> None:
    """alice reads her topic in her group; another group: GROUP_AUTHORIZATION_FAILED;
    a topic she may not read: TOPIC_AUTHORIZATION_FAILED."""
    admin = Producer(_conf(node, "admin", ADMIN_PW))
    for topic in (names["ok"], names["denied"]):
        admin.produce(topic, value=b"fetch-me")
    assert admin.flush(TIMEOUT) == 0
    got, errors = _consume(node, names["ok"], names["group"])
    assert got and got[0] in (b"x", b"fetch-me") and not errors
    got, errors = _consume(node, names["ok"], names["badgroup"])
    assert not got and KafkaError.GROUP_AUTHORIZATION_FAILED in errors
    got, errors = _consume(node, names["denied"], names["group"])
    assert not got and KafkaError.TOPIC_AUTHORIZATION_FAILED in errors


def test_metadataHidesTopics(node: _Node, granted: AdminClient, names: dict[str, str]) -> None:
    """Listing every topic shows alice only those she may describe."""
    topics = AdminClient(_conf(node, "alice", ALICE_PW)).list_topics(timeout=TIMEOUT).topics
    assert names["ok"] in topics
    assert names["denied"] not in topics


def test_transactionalIds(node: _Node, granted: AdminClient, names: dict[str, str]) -> None:
    """A transactional id alice may write works; another gets
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED from init_transactions."""
    ok = Producer({**_conf(node, "alice", ALICE_PW), "transactional.id": names["txn"]})
    ok.init_transactions(TIMEOUT)
    ok.begin_transaction()
    ok.produce(names["ok"], value=b"in-txn")
    ok.commit_transaction(TIMEOUT)
    bad = Producer({**_conf(node, "alice", ALICE_PW), "transactional.id": names["badtxn"]})
    with pytest.raises(KafkaException) as e:
        bad.init_transactions(TIMEOUT)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_newBindingAppliesToConnectedClient(
    node: _Node, granted: AdminClient, names: dict[str, str]
) -> None:
    """A DENY added while alice is connected applies to her next produce (caches dropped)."""
    p = Producer({**_conf(node, "alice", ALICE_PW), "message.timeout.ms": 8000})
    errors: list[Any] = []
    p.produce(names["ok"], value=b"before", on_delivery=lambda e, m: errors.append(e))
    p.flush(TIMEOUT)
    deny = AclBinding(
        ResourceType.TOPIC,
        names["ok"],
        ResourcePatternType.LITERAL,
        "User:alice",
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    granted.create_acls([deny])[deny].result(TIMEOUT)
    try:
        p.produce(names["ok"], value=b"after", on_delivery=lambda e, m: errors.append(e))
        p.flush(TIMEOUT)
        assert errors[0] is None
        assert errors[1] is not None
        assert errors[1].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        flt = AclBindingFilter(
            ResourceType.TOPIC,
            names["ok"],
            ResourcePatternType.LITERAL,
            "User:alice",
            "*",
            AclOperation.WRITE,
            AclPermissionType.DENY,
        )
        granted.delete_acls([flt])[flt].result(TIMEOUT)
