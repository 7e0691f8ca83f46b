"""
Kafka configs: what DescribeConfigs reports and (Incremental)AlterConfigs may change.

Three resource kinds (KIP-133, KIP-339, KIP-932 group configs):

  - topic (resource type 2): the topic's own values, falling back to the
    broker-wide defaults (their synonyms, e.g. C{retention.ms} <-
    C{log.retention.ms});
  - broker (4): values from the node's settings (static, read-only) and the
    dynamic ones an admin set (persisted, see L{ConfigStore});
  - group (32): share- and consumer-group settings (KIP-848, KIP-932).

Every known key has a type (C{BOOLEAN}, C{STRING}, C{INT}, C{LONG}, C{LIST},
...), a validator and a documentation line, so DescribeConfigs v3+ answers
like Kafka and a bad value is refused with INVALID_CONFIG before anything
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustmq.protocols.kafka._node import KafkaNode

__all__ = [
    "BROKER",
    "GROUP",
    "TOPIC",
    "ConfigError",
    "ConfigKey",
    "brokerKeys",
    "groupKeys",
    "topicKeys",
]

#: DescribeConfigs / AlterConfigs resource types (org.apache.kafka.common.config.ConfigResource)
TOPIC = 2
BROKER = 4
GROUP = 32

#: config types (DescribeConfigsResponse ConfigType, KIP-569)
BOOLEAN, STRING, INT, SHORT, LONG, DOUBLE, LIST, CLASS, PASSWORD = range(1, 10)

#: config sources (DescribeConfigsResponse ConfigSource)
TOPIC_CONFIG = 1
DYNAMIC_BROKER_CONFIG = 2
DYNAMIC_DEFAULT_BROKER_CONFIG = 3
STATIC_BROKER_CONFIG = 4
DEFAULT_CONFIG = 5
GROUP_CONFIG = 8


class ConfigError(ValueError):
    """A config name or value the broker refuses (Kafka's INVALID_CONFIG)."""


def _int(lo: int, hi: int = 2**31 - 1) -> Callable[[str], str]:
    def check(v: str) -> str:
        try:
            n = int(v)
        except ValueError:
            raise ConfigError(f"{v!r} is not an integer") from None
        if not lo <= n <= hi:
            raise ConfigError(f"{n} is not in [{lo}, {hi}]")
        return str(n)

    return check


def _long(lo: int) -> Callable[[str], str]:
    return _int(lo, 2**63 - 1)


def _bool(v: str) -> str:
    if v.lower() not in ("true", "false"):
        raise ConfigError(f"{v!r} is not true or false")
    return v.lower()


def _choice(*options: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in options:
            raise ConfigError(f"{v!r} is not one of {', '.join(options)}")
        return v

    return check


def _list(*options: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        items = [x.strip() for x in v.split(",") if x.strip()]
        for x in items:
            if options and x not in options:
                raise ConfigError(f"{x!r} is not one of {', '.join(options)}")
        return ",".join(items)

    return check


def _any(v: str) -> str:
    return v


class ConfigKey:
    """One config name: its type, validator, documentation and broker-wide synonym."""

    __slots__ = ("name", "type", "check", "doc", "synonym", "dynamic", "sensitive")

    def __init__(
        self,
        name: str,
        type: int,
        check: Callable[[str], str],
        doc: str,
        synonym: str | None = None,
        dynamic: bool = True,
        sensitive: bool = False,
    ) -> None:
        self.name = name
        self.type = type
        self.check = check
        self.doc = doc
        #: the broker config a topic config defaults to (e.g. log.retention.ms)
        self.synonym = synonym
        #: may AlterConfigs change it (broker keys); topic and group keys always may
        self.dynamic = dynamic
        self.sensitive = sensitive

    def validate(self, value: str | None) -> str:
        """The normalised value, or raise L{ConfigError}."""
        if value is None:
            raise ConfigError(f"{self.name}: a value is required")
        try:
            return self.check(value)
        except ConfigError as e:
            raise ConfigError(f"invalid value for {self.name}: {e}") from None


_TOPIC_KEYS = [
    ConfigKey(
        "retention.ms",
        LONG,
        _long(-1),
        "How long records are kept (ms, -1 for ever); applied to the partitions' shards.",
        "log.retention.ms",
    ),
    ConfigKey(
        "retention.bytes",
        LONG,
        _long(-1),
        "The size a partition may grow to before its oldest segments go (-1: unbounded).",
        "log.retention.bytes",
    ),
    ConfigKey(
        "cleanup.policy",
        LIST,
        _list("delete", "compact"),
        "delete (retention) is what this broker does; compact is accepted and reported.",
        "log.cleanup.policy",
    ),
    ConfigKey(
        "max.message.bytes",
        INT,
        _int(0),
        "The largest record batch accepted.",
        "message.max.bytes",
    ),
    ConfigKey(
        "message.timestamp.type",
        STRING,
        _choice("CreateTime", "LogAppendTime"),
        "Whose timestamp records carry (CreateTime: the producer's).",
        "log.message.timestamp.type",
    ),
    ConfigKey(
        "compression.type",
        STRING,
        _choice("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"),
        "Batches are stored as the producer compressed them.",
        "compression.type",
    ),
    ConfigKey(
        "segment.bytes",
        INT,
        _int(14),
        "Segment file size of the store.",
        "log.segment.bytes",
    ),
    ConfigKey(
        "min.insync.replicas",
        INT,
        _int(1),
        "Replicas that must acknowledge acks=all writes.",
        "min.insync.replicas",
    ),
    ConfigKey(
        "delete.retention.ms",
        LONG,
        _long(0),
        "How long delete tombstones are kept for compacted topics.",
        "log.cleaner.delete.retention.ms",
    ),
    ConfigKey(
        "unclean.leader.election.enable",
        BOOLEAN,
        _bool,
        "Whether an out-of-sync replica may become leader.",
        "unclean.leader.election.enable",
    ),
]

_BROKER_KEYS = [
    ConfigKey("broker.id", INT, _int(0), "This node's broker id ([kafka] broker_id).", None, False),
    ConfigKey("node.id", INT, _int(0), "Same as broker.id.", None, False),
    ConfigKey("listeners", LIST, _any, "The Kafka listeners of this node.", None, False),
    ConfigKey(
        "advertised.listeners",
        LIST,
        _any,
        "What Metadata tells clients to connect to.",
        None,
        False,
    ),
    ConfigKey("log.dirs", STRING, _any, "Where the shard store keeps its data.", None, False),
    ConfigKey(
        "log.retention.ms",
        LONG,
        _long(-1),
        "Default retention of topics without retention.ms (-1: for ever).",
    ),
    ConfigKey(
        "log.retention.bytes", LONG, _long(-1), "Default size bound of a partition (-1: none)."
    ),
    ConfigKey("log.cleanup.policy", LIST, _list("delete", "compact"), "Default cleanup.policy."),
    ConfigKey("log.segment.bytes", INT, _int(14), "Segment size of the store.", None, False),
    ConfigKey(
        "log.message.timestamp.type",
        STRING,
        _choice("CreateTime", "LogAppendTime"),
        "Default message.timestamp.type.",
        None,
        False,
    ),
    ConfigKey("compression.type", STRING, _any, "Default compression.type.", None, False),
    ConfigKey("message.max.bytes", INT, _int(0), "Default max.message.bytes."),
    ConfigKey("min.insync.replicas", INT, _int(1), "Default min.insync.replicas.", None, False),
    ConfigKey(
        "log.cleaner.delete.retention.ms",
        LONG,
        _long(0),
        "Default delete.retention.ms.",
        None,
        False,
    ),
    ConfigKey(
        "unclean.leader.election.enable",
        BOOLEAN,
        _bool,
        "Default of the topic config.",
        None,
        False,
    ),
    ConfigKey("num.partitions", INT, _int(1, 100_000), "Partitions of an auto-created topic."),
    ConfigKey(
        "default.replication.factor", SHORT, _int(1, 1), "Replicas of a new topic.", None, False
    ),
    ConfigKey("auto.create.topics.enable", BOOLEAN, _bool, "Create unknown topics on first use."),
    ConfigKey("offsets.topic.replication.factor", SHORT, _int(1, 1), "Fixed at 1.", None, False),
    ConfigKey(
        "transaction.state.log.replication.factor", SHORT, _int(1, 1), "Fixed at 1.", None, False
    ),
    ConfigKey("socket.request.max.bytes", INT, _int(1024), "Largest request.", None, False),
    ConfigKey(
        "group.min.session.timeout.ms", INT, _int(1), "Smallest session timeout.", None, False
    ),
    ConfigKey(
        "group.max.session.timeout.ms", INT, _int(1), "Largest session timeout.", None, False
    ),
    ConfigKey(
        "group.initial.rebalance.delay.ms",
        INT,
        _int(0),
        "Wait for more members before the first rebalance.",
        None,
        False,
    ),
    ConfigKey(
        "transaction.max.timeout.ms", INT, _int(1), "Largest transaction timeout.", None, False
    ),
    ConfigKey("sasl.enabled.mechanisms", LIST, _any, "SASL mechanisms offered.", None, False),
    ConfigKey(
        "group.share.record.lock.duration.ms",
        INT,
        _int(1000, 3_600_000),
        "How long a share consumer holds an acquired record (KIP-932).",
    ),
    ConfigKey(
        "group.share.delivery.count.limit",
        INT,
        _int(2, 10),
        "Deliveries of a record before it is archived as undeliverable (KIP-932).",
    ),
    ConfigKey(
        "group.share.session.timeout.ms",
        INT,
        _int(1000),
        "A share-group member is removed after this long without a heartbeat.",
    ),
    ConfigKey(
        "group.share.heartbeat.interval.ms",
        INT,
        _int(100),
        "The heartbeat interval share-group members are told to use.",
    ),
    ConfigKey(
        "group.consumer.session.timeout.ms",
        INT,
        _int(1000),
        "A consumer-group (KIP-848) member is removed after this long without a heartbeat.",
    ),
    ConfigKey(
        "group.consumer.heartbeat.interval.ms",
        INT,
        _int(100),
        "The heartbeat interval KIP-848 members are told to use.",
    ),
]

_GROUP_KEYS = [
    ConfigKey(
        "share.record.lock.duration.ms",
        INT,
        _int(1000, 3_600_000),
        "Acquisition lock of this share group's records.",
        "group.share.record.lock.duration.ms",
    ),
    ConfigKey(
        "share.delivery.count.limit",
        INT,
        _int(2, 10),
        "Deliveries of a record of this share group before it is archived.",
        "group.share.delivery.count.limit",
    ),
    ConfigKey(
        "share.auto.offset.reset",
        STRING,
        _choice("latest", "earliest"),
        "Where a new share group starts in each partition.",
    ),
    ConfigKey(
        "share.isolation.level",
        STRING,
        _choice("read_uncommitted", "read_committed"),
        "Which records a share group may acquire.",
    ),
    ConfigKey(
        "share.session.timeout.ms",
        INT,
        _int(1000),
        "Member session timeout of this share group.",
        "group.share.session.timeout.ms",
    ),
    ConfigKey(
        "share.heartbeat.interval.ms",
        INT,
        _int(100),
        "Heartbeat interval of this share group.",
        "group.share.heartbeat.interval.ms",
    ),
    ConfigKey(
        "consumer.session.timeout.ms",
        INT,
        _int(1000),
        "Member session timeout of this consumer group (KIP-848).",
        "group.consumer.session.timeout.ms",
    ),
    ConfigKey(
        "consumer.heartbeat.interval.ms",
        INT,
        _int(100),
        "Heartbeat interval of this consumer group (KIP-848).",
        "group.consumer.heartbeat.interval.ms",
    ),
]

topicKeys: dict[str, ConfigKey] = {k.name: k for k in _TOPIC_KEYS}
brokerKeys: dict[str, ConfigKey] = {k.name: k for k in _BROKER_KEYS}
groupKeys: dict[str, ConfigKey] = {k.name: k for k in _GROUP_KEYS}


def staticBrokerValues(node: KafkaNode) -> dict[str, str]:
    """Broker config values as the node's settings give them (before dynamic changes)."""
    s = node.settings
    broker = node.broker.settings
    st = broker.storage
    kafkaListeners = [x for x in broker.listeners if x.protocol == "kafka"]
    host = s.advertised_host
    listeners = ",".join(
        f"{'SSL' if x.transport == 'tls' else 'PLAINTEXT'}://{x.bind}:{x.port}"
        for x in kafkaListeners
    )
    advertised = ",".join(
        f"{'SSL' if x.transport == 'tls' else 'PLAINTEXT'}://"
        f"{host or x.bind}:{s.advertised_port or x.port}"
        for x in kafkaListeners
    )
    return {
        "broker.id": str(s.broker_id),
        "node.id": str(s.broker_id),
        "listeners": listeners,
        "advertised.listeners": advertised,
        "log.dirs": st.data_dir or broker.node.data_dir,
        "log.retention.ms": str(st.retention_ms or -1),
        "log.retention.bytes": str(st.retention_bytes or -1),
        "log.cleanup.policy": "delete",
        "log.segment.bytes": str(min(st.segment_bytes, 2**31 - 1)),
        "log.message.timestamp.type": "CreateTime",
        "compression.type": "producer",
        "message.max.bytes": str(s.max_request_size),
        "min.insync.replicas": "1",
        "log.cleaner.delete.retention.ms": "86400000",
        "unclean.leader.election.enable": "false",
        "num.partitions": str(s.default_partitions),
        "default.replication.factor": "1",
        "auto.create.topics.enable": str(s.auto_create_topics).lower(),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "socket.request.max.bytes": str(s.max_request_size),
        "group.min.session.timeout.ms": str(s.group_min_session_timeout_ms),
        "group.max.session.timeout.ms": str(s.group_max_session_timeout_ms),
        "group.initial.rebalance.delay.ms": str(s.group_initial_rebalance_delay_ms),
        "transaction.max.timeout.ms": str(s.transaction_max_timeout_ms),
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "group.share.record.lock.duration.ms": str(s.share_record_lock_duration_ms),
        "group.share.delivery.count.limit": str(s.share_delivery_count_limit),
        "group.share.session.timeout.ms": str(s.share_session_timeout_ms),
        "group.share.heartbeat.interval.ms": str(s.share_heartbeat_interval_ms),
        "group.consumer.session.timeout.ms": str(s.consumer_session_timeout_ms),
        "group.consumer.heartbeat.interval.ms": str(s.consumer_heartbeat_interval_ms),
    }


def groupDefaults() -> dict[str, str]:
    """Group config values without a broker-wide synonym."""
    return {"share.auto.offset.reset": "latest", "share.isolation.level": "read_uncommitted"}


def entry(
    key: ConfigKey | None,
    name: str,
    value: str | None,
    source: int,
    readOnly: bool,
    synonyms: list[dict[str, Any]],
) -> dict[str, Any]:
    """One DescribeConfigs result entry."""
    return {
        "name": name,
        "value": None if key is not None and key.sensitive else value,
        "read_only": readOnly,
        "is_default": source == DEFAULT_CONFIG,
        "config_source": source,
        "is_sensitive": bool(key is not None and key.sensitive),
        "synonyms": synonyms,
        "config_type": key.type if key is not None else 0,
        "documentation": key.doc if key is not None else None,
    }


#: compacted: C{topic NUL <name>} / C{broker} / C{group NUL <id>} -> JSON of the dynamic configs
CONFIGS_SHARD = "kafka-meta/configs"


def _storeKey(rtype: int, name: str) -> bytes:
    if rtype == BROKER:
        return b"broker"
    return ("topic" if rtype == TOPIC else "group").encode() + b"\0" + name.encode()


class ConfigStore:
    """Dynamic configs set through AlterConfigs, kept in the compacted shard C{kafka-meta/configs}.

    Topic configs given at creation live in the partitions' shard config
    too; dynamic changes override them.  The broker's dynamic configs
    override the node's settings until deleted again.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.broker: dict[str, str] = {}
        self.topics: dict[str, dict[str, str]] = {}
        self.groups: dict[str, dict[str, str]] = {}

    async def load(self, shards: dict[str, Any]) -> None:
        """Read the dynamic configs of the previous run."""
        import json

        store = self.store
        if CONFIGS_SHARD not in shards:
            await store.createShard(CONFIGS_SHARD, {"compacted": True})
            return
        for key in await store.keys(CONFIGS_SHARD):
            rec = await store.lookup(CONFIGS_SHARD, key)
            if rec is None:
                continue
            values = {str(k): str(v) for k, v in json.loads(rec["value"]).items()}
            kind, _, name = bytes(key).decode().partition("\0")
            if kind == "broker":
                self.broker = values
            elif kind == "topic":
                self.topics[name] = values
            elif kind == "group":
                self.groups[name] = values

    def of(self, rtype: int, name: str) -> dict[str, str]:
        """The dynamic configs of one resource (a live dict)."""
        if rtype == BROKER:
            return self.broker
        table = self.topics if rtype == TOPIC else self.groups
        return table.setdefault(name, {})

    async def save(self, rtype: int, name: str, values: dict[str, str]) -> None:
        """Replace one resource's dynamic configs (durable when this returns)."""
        import json

        if rtype == BROKER:
            self.broker = dict(values)
        elif rtype == TOPIC:
            self.topics[name] = dict(values)
        else:
            self.groups[name] = dict(values)
        key = _storeKey(rtype, name)
        if values:
            await self.store.upsert(CONFIGS_SHARD, key, json.dumps(values).encode())
        else:
            await self.store.deleteKey(CONFIGS_SHARD, key)

    async def forget(self, rtype: int, name: str) -> None:
        """A topic or group was deleted: drop its dynamic configs."""
        table = self.topics if rtype == TOPIC else self.groups
        if table.pop(name, None) is not None:
            await self.store.deleteKey(CONFIGS_SHARD, _storeKey(rtype, name))
