"""Admin APIs through both clients' AdminClients: configs, record deletion, log dirs,
leader elections, reassignments and SCRAM users (raw requests where a client lacks the API)."""

from __future__ import annotations

import pytest
from confluent_kafka import (
    Consumer,
    ElectionType,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType as KpType
from kafka.admin import NewTopic as KpNewTopic
from kafkanode import TIMEOUT, KafkaNodeProcess, kafkaRequest

from kafka import KafkaAdminClient, KafkaProducer
from kafka import TopicPartition as KpTopicPartition


def _admin(node: KafkaNodeProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": node.bootstrap})


def _create(node: KafkaNodeProcess, topic: str, partitions: int = 1) -> None:
    admin = _admin(node)
    fs = admin.create_topics([NewTopic(topic, partitions, 1)])
    fs[topic].result(TIMEOUT)


def _describeTopic(admin: AdminClient, topic: str) -> dict:
    fs = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    return next(iter(fs.values())).result(TIMEOUT)


def test_incrementalAlterConfigsConfluent(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """KIP-339 SET / APPEND / DELETE on a topic, read back with types and sources."""
    _create(kafkaNode, uniq)
    admin = _admin(kafkaNode)
    res = ConfigResource(
        ResourceType.TOPIC,
        uniq,
        incremental_configs=[
            ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry(
                "cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND
            ),
        ],
    )
    next(iter(admin.incremental_alter_configs([res]).values())).result(TIMEOUT)
    got = _describeTopic(admin, uniq)
    assert got["retention.ms"].value == "3600000"
    assert got["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert got["cleanup.policy"].value == "delete,compact"
    assert got["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    res = ConfigResource(
        ResourceType.TOPIC,
        uniq,
        incremental_configs=[
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    next(iter(admin.incremental_alter_configs([res]).values())).result(TIMEOUT)
    assert _describeTopic(admin, uniq)["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    bad = ConfigResource(
        ResourceType.TOPIC,
        uniq,
        incremental_configs=[
            ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException, match="INVALID_CONFIG|retention.ms"):
        next(iter(admin.incremental_alter_configs([bad]).values())).result(TIMEOUT)


def test_alterConfigsKafkaPython(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python: IncrementalAlterConfigs, then the legacy AlterConfigs (whole set)."""
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        kp.create_topics([KpNewTopic(uniq, 1, 1)])
        kp.alter_configs([KpConfigResource(KpType.TOPIC, uniq, configs={"retention.ms": "60000"})])
        got = kp.describe_configs([KpConfigResource(KpType.TOPIC, uniq)], config_filter="all")
        configs = got["TOPIC"][uniq] if "TOPIC" in got else next(iter(got.values()))[uniq]
        assert configs["retention.ms"]["value"] == "60000"
        kp.alter_configs(
            [KpConfigResource(KpType.TOPIC, uniq, configs={"max.message.bytes": "2048"})],
            incremental=False,
        )
        got = kp.describe_configs([KpConfigResource(KpType.TOPIC, uniq)], config_filter="all")
        configs = got["TOPIC"][uniq] if "TOPIC" in got else next(iter(got.values()))[uniq]
        assert configs["max.message.bytes"]["value"] == "2048"
    finally:
        kp.close()


def test_describeBrokerConfigs(kafkaNode: KafkaNodeProcess) -> None:
    """The broker keys clients look for, with types and read-only flags (not UNKNOWN)."""
    admin = _admin(kafkaNode)
    fs = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")])
    got = next(iter(fs.values())).result(TIMEOUT)
    for key in ("advertised.listeners", "listeners", "log.retention.ms", "num.partitions"):
        assert key in got, key
    assert got["listeners"].value.startswith("PLAINTEXT://127.0.0.1:")
    assert got["broker.id"].is_read_only
    assert not got["num.partitions"].is_read_only
    # KIP-569 types come through DescribeConfigs v3+
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        got = kp.describe_configs(
            [KpConfigResource(KpType.BROKER, "1")], config_filter="all", include_synonyms=True
        )
        configs = next(iter(got.values()))["1"]
        assert configs["log.retention.ms"]["config_type"] in (5, "LONG")
        assert configs["auto.create.topics.enable"]["config_type"] in (1, "BOOLEAN")
    finally:
        kp.close()


def test_brokerConfigChangesAutoCreate(uniq: str) -> None:
    """A dynamic num.partitions shapes the next auto-created topic; read-only keys are refused;
    dynamic configs survive a restart (segment store)."""
    node = KafkaNodeProcess('[storage]\nbackend = "segment"\n')
    node.start()
    try:
        admin = _admin(node)
        res = ConfigResource(
            ResourceType.BROKER,
            "1",
            incremental_configs=[
                ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        next(iter(admin.incremental_alter_configs([res]).values())).result(TIMEOUT)
        md = admin.list_topics(uniq, timeout=TIMEOUT)  # auto-creates
        assert len(md.topics[uniq].partitions) == 3
        ro = ConfigResource(
            ResourceType.BROKER,
            "1",
            incremental_configs=[
                ConfigEntry("broker.id", "7", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        with pytest.raises(KafkaException):
            next(iter(admin.incremental_alter_configs([ro]).values())).result(TIMEOUT)
        topicRes = ConfigResource(
            ResourceType.TOPIC,
            uniq,
            incremental_configs=[
                ConfigEntry("retention.ms", "123456", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        next(iter(admin.incremental_alter_configs([topicRes]).values())).result(TIMEOUT)
        node.stop()
        node.start()
        admin = _admin(node)
        fs = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")])
        got = next(iter(fs.values())).result(TIMEOUT)
        assert got["num.partitions"].value == "3"
        assert got["num.partitions"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
        assert _describeTopic(admin, uniq)["retention.ms"].value == "123456"
    finally:
        node.cleanup()


def _produce(node: KafkaNodeProcess, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": node.bootstrap})
    for i in range(n):
        p.produce(topic, value=b"%d" % i, partition=0)
        p.flush(TIMEOUT)  # one batch per record: deletion can land between batches


def test_deleteRecordsBothClients(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """DeleteRecords moves the log start offset; consumers from the start begin there."""
    _create(kafkaNode, uniq)
    _produce(kafkaNode, uniq, 10)
    admin = _admin(kafkaNode)
    fs = admin.delete_records([TopicPartition(uniq, 0, 4)])
    assert fs[TopicPartition(uniq, 0, 4)].result(TIMEOUT).low_watermark == 4
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        got = kp.delete_records({KpTopicPartition(uniq, 0): 7})
        assert got[KpTopicPartition(uniq, 0)]["low_watermark"] == 7
    finally:
        kp.close()
    c = Consumer({"bootstrap.servers": kafkaNode.bootstrap, "group.id": uniq})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(uniq, 0), TIMEOUT)
        assert (low, high) == (7, 10)
    finally:
        c.close()


def test_describeLogDirs(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """kafka-python's describe_log_dirs; confluent-kafka has no such call (raw request)."""
    _create(kafkaNode, uniq, 2)
    _produce(kafkaNode, uniq, 3)
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        dirs = kp.describe_log_dirs({uniq: [0, 1]})
    finally:
        kp.close()
    ((logDir,),) = [d["log_dirs"] for d in dirs]
    (topic,) = logDir["topics"]
    assert topic["name"] == uniq and sorted(p["partition_index"] for p in topic["partitions"]) == [
        0,
        1,
    ]
    raw = kafkaRequest(
        kafkaNode.bootstrap, 35, 3, {"topics": [{"topic": uniq, "partitions": [0, 1]}]}
    )
    (result,) = raw["results"]
    (topic,) = result["topics"]
    sizes = {p["partition_index"]: p["partition_size"] for p in topic["partitions"]}
    assert sizes[0] > 0 and sizes[1] == 0


def test_electLeadersNothingToMove(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """Single node: the preferred leader already leads (ELECTION_NOT_NEEDED), both clients."""
    _create(kafkaNode, uniq)
    admin = _admin(kafkaNode)
    f = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(uniq, 0)])
    result = f.result(TIMEOUT)
    assert result[TopicPartition(uniq, 0)].code() == KafkaError.ELECTION_NOT_NEEDED
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        resp = kp.elect_leaders(0, {uniq: [0]}, raise_errors=False)
    finally:
        kp.close()
    (topic,) = resp.replica_election_results
    assert [(p.partition_id, p.error_code) for p in topic.partition_result] == [(0, 84)]


def test_partitionReassignments(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """KIP-455: this broker only; kafka-python's calls, raw requests for confluent's missing ones."""
    _create(kafkaNode, uniq)
    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        ok = kp.alter_partition_reassignments({KpTopicPartition(uniq, 0): [1]})
        assert ok[KpTopicPartition(uniq, 0)] is None
        refused = kp.alter_partition_reassignments({KpTopicPartition(uniq, 0): [1, 2]})
        assert refused[KpTopicPartition(uniq, 0)] is not None
        assert kp.list_partition_reassignments() == {}
    finally:
        kp.close()
    raw = kafkaRequest(kafkaNode.bootstrap, 46, 0, {"topics": None})
    assert raw["error_code"] == 0 and raw["topics"] == []


def test_scramUsersManagedWithKafkaTools(kafkaNode: KafkaNodeProcess, uniq: str) -> None:
    """KIP-554 upsert/describe/delete with both clients; the new user then signs in."""
    user = "u" + uniq[-8:]
    admin = _admin(kafkaNode)
    up = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"s3cret"
    )
    admin.alter_user_scram_credentials([up])[user].result(TIMEOUT)
    desc = admin.describe_user_scram_credentials([user])[user].result(TIMEOUT)
    infos = desc.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_256, 8192)]
    p = Producer(
        {
            "bootstrap.servers": kafkaNode.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user,
            "sasl.password": "s3cret",
        }
    )
    p.produce(uniq, b"x")
    assert p.flush(TIMEOUT) == 0
    from kafka.admin import ScramMechanism as KpMech
    from kafka.admin import UserScramCredentialDeletion as KpDel
    from kafka.admin import UserScramCredentialUpsertion as KpUp

    kp = KafkaAdminClient(bootstrap_servers=kafkaNode.bootstrap)
    try:
        kp.alter_user_scram_credentials(
            [KpUp(user, KpMech.SCRAM_SHA_512, "other", iterations=4096)]
        )
        got = kp.describe_user_scram_credentials([user])[user]
        assert got["error"] is None
        assert len(got["credential_infos"]) == 2  # SHA-256 (confluent) and SHA-512
        kpProducer = KafkaProducer(
            bootstrap_servers=kafkaNode.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=user,
            sasl_plain_password="other",
        )
        kpProducer.send(uniq, b"y").get(TIMEOUT)
        kpProducer.close()
        kp.alter_user_scram_credentials([KpDel(user, KpMech.SCRAM_SHA_512)])
    finally:
        kp.close()
    admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_256)]
    )[user].result(TIMEOUT)
    with pytest.raises(KafkaException, match="RESOURCE_NOT_FOUND|does not exist"):
        admin.describe_user_scram_credentials([user])[user].result(TIMEOUT)
