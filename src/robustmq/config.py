"""Node configuration: one TOML file validated into typed, frozen settings.

Every key has a default that makes a working single node, so an empty file
is a valid configuration.  Problems stop start-up with a
L{ConfigError} whose message names the key (``mqtt.max_packet_size``) and
what is wrong with it.

Environment variables override the file: ``ROBUSTMQ_<SECTION>__<KEY>``
(double underscore between section and key), e.g.
``ROBUSTMQ_MQTT__MAX_INFLIGHT=64`` or ``ROBUSTMQ_NODE__DATA_DIR=/var/lib/robustmq``.
Listener entries are addressed by index: ``ROBUSTMQ_LISTENERS__0__PORT=11883``.
Values are parsed as TOML values when they parse (``64``, ``true``,
``["a","b"]``) and taken as plain strings otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustmq.topicrules import InvalidTopic, validateTopicFilter

ENV_PREFIX = "ROBUSTMQ_"

MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the problem."""


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _range(low: int | float | None = None, high: int | float | None = None) -> dict[str, Any]:
    return {"min": low, "max": high}


#: What a secret value is shown as (admin API, ctl, logs, error messages).
MASK = "***"


def _secret(doc: str = "") -> dict[str, Any]:
    """Field metadata marking a secret: masked in every API response, log line and error."""
    return {"secret": True, **({"doc": doc} if doc else {})}


@dataclass(frozen=True)
class NodeSettings:
    """Identity and roles of this process."""

    id: str = "robustmq-1"
    roles: tuple[str, ...] = field(
        default=("placement", "broker"),
        metadata={"items": ("placement", "broker")},
    )
    data_dir: str = "./data"
    workers: int = field(
        default=1,
        metadata={**_range(0, 1024), "doc": "broker processes behind the ports; 0 = one per core"},
    )


@dataclass(frozen=True)
class LogSettings:
    """Where and how much the node logs."""

    level: str = field(default="info", metadata=_choice("debug", "info", "warn", "error"))
    file: str = field(default="-", metadata={"doc": "'-' for standard output"})


@dataclass(frozen=True)
class StorageSettings:
    """The shard store backing durable data (see docs/storage.md)."""

    backend: str = "memory"
    data_dir: str = field(default="", metadata={"doc": "empty: <node.data_dir>/storage"})
    sync: str = field(default="interval", metadata=_choice("always", "interval", "os"))
    sync_interval_ms: int = field(default=200, metadata=_range(1, 3_600_000))
    segment_bytes: int = field(default=64 * MiB, metadata=_range(4096, None))
    index_interval_bytes: int = field(default=4096, metadata=_range(64, None))
    max_open_files: int = field(default=256, metadata=_range(4, 100_000))
    retention_ms: int = field(default=0, metadata=_range(0, None))
    retention_bytes: int = field(default=0, metadata=_range(0, None))
    max_shards: int = field(default=1_000_000, metadata=_range(1, None))
    on_corruption: str = field(default="fail", metadata=_choice("fail", "skip"))
    min_free_bytes: int = field(default=16 * MiB, metadata=_range(0, None))
    s3_endpoint: str = field(default="", metadata={"doc": "empty: AWS S3 itself"})
    s3_bucket: str = "robustmq"
    s3_region: str = "us-east-1"
    s3_prefix: str = "robustmq/"
    s3_flush_interval_ms: int = field(default=5, metadata=_range(0, 60_000))
    s3_max_batch_bytes: int = field(default=4 * MiB, metadata=_range(1024, 5 * 1024 * MiB))
    s3_max_pending_bytes: int = field(default=64 * MiB, metadata=_range(1024, None))
    s3_ack_timeout_ms: int = field(default=10_000, metadata=_range(100, 3_600_000))
    s3_request_timeout_ms: int = field(default=5_000, metadata=_range(100, 600_000))
    s3_max_connections: int = field(default=32, metadata=_range(1, 10_000))
    s3_max_puts_per_shard: int = field(default=4, metadata=_range(1, 64))
    s3_cache_bytes: int = field(default=256 * MiB, metadata=_range(0, None))
    s3_cache_dir: str = field(default="", metadata={"doc": "empty: no disk tier (memory only)"})


@dataclass(frozen=True)
class PlacementSettings:
    """Where cluster metadata lives (single node: embedded in this process)."""

    backend: str = field(default="embedded", metadata=_choice("embedded", "etcd"))
    port: int = field(default=1228, metadata=_range(0, 65535))
    bind: str = "127.0.0.1"
    advertise: str = field(default="", metadata={"doc": "empty: <bind>:<port>"})
    servers: tuple[str, ...] = ("127.0.0.1:1228",)
    cluster_secret: str = field(default="", metadata=_secret())
    heartbeat_interval: float = field(default=1.0, metadata=_range(0.05, 3600))
    heartbeat_timeout: float = field(default=5.0, metadata=_range(0.1, 86400))
    reconnect_max_delay: float = field(default=10.0, metadata=_range(0.1, 3600))
    max_nodes: int = field(default=10_000, metadata=_range(1, None))
    max_pending_pushes: int = field(default=10_000, metadata=_range(1, None))
    embedded_max_pending: int = field(default=100_000, metadata=_range(1, None))
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = "/robustmq/"
    etcd_timeout: float = field(default=5.0, metadata=_range(0.1, 600))
    tls_cert: str = field(default="", metadata={"doc": "PEM certificate: the PB listener uses TLS"})
    tls_key: str = field(default="", metadata={"doc": "PEM private key (empty: in tls_cert)"})
    tls_ca: str = field(default="", metadata={"doc": "CA bundle clients verify the service with"})


@dataclass(frozen=True)
class ClusterSettings:
    """This broker's part in a broker cluster (docs/cluster.md)."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = field(default=1229, metadata=_range(0, 65535))
    advertise: str = field(default="", metadata={"doc": "empty: <bind>:<port>"})
    forward_batch_size: int = field(default=512, metadata=_range(1, 100_000))
    forward_max_pending: int = field(default=100_000, metadata=_range(1, None))
    replication: bool = True
    takeover_timeout: float = field(default=10.0, metadata=_range(0.1, 3600))
    handover_window: float = field(default=10.0, metadata=_range(0.5, 3600))
    handover_track_limit: int = field(default=100_000, metadata=_range(1, None))


@dataclass(frozen=True)
class RewriteRule:
    """One C{[[mqtt.rewrite]]} rule (see docs/configuration.md)."""

    source_topic: str = "#"
    dest_topic: str = ""
    re: str = "^(.*)$"
    action: str = field(default="all", metadata=_choice("publish", "subscribe", "all"))


@dataclass(frozen=True)
class AutoSubscribe:
    """One C{[[mqtt.auto_subscribe]]} entry: subscribed for every client on connect."""

    topic: str = ""
    qos: int = field(default=0, metadata=_range(0, 2))
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = field(default=0, metadata=_range(0, 2))


@dataclass(frozen=True)
class ScramUser:
    """A user for MQTT 5 enhanced authentication (SCRAM-SHA-256)."""

    username: str = ""
    password: str = field(default="", metadata=_secret())


@dataclass(frozen=True)
class MQTTSettings:
    """MQTT protocol behaviour and per-session bounds."""

    max_packet_size: int = field(default=1 * MiB, metadata=_range(0, 268_435_455))
    max_client_id_length: int = field(default=65535, metadata=_range(23, 65535))
    allow_empty_client_id: bool = True
    max_inflight: int = field(default=32, metadata=_range(1, 65535))
    max_queued_messages: int = field(default=1000, metadata=_range(0, None))
    max_queued_bytes: int = field(default=16 * MiB, metadata=_range(0, None))
    congestion_timeout: float = field(default=10.0, metadata=_range(0, 3600))
    queue_overflow: str = field(default="drop_new", metadata=_choice("drop_new", "drop_oldest"))
    queue_qos0_offline: bool = False
    max_awaiting_rel: int = field(default=100, metadata=_range(1, 65535))
    max_subscriptions: int = field(default=0, metadata=_range(0, None))
    max_topic_levels: int = field(default=128, metadata=_range(1, 65535))
    connect_timeout: float = field(default=30.0, metadata=_range(0.1, 3600))
    close_linger: float = field(default=2.0, metadata=_range(0, 60))
    max_retained_messages: int = field(default=1_000_000, metadata=_range(0, None))
    max_retained_payload: int = field(default=1 * MiB, metadata=_range(0, None))
    route_cache_size: int = field(default=10_000, metadata=_range(0, None))
    sys_interval: float = field(default=10.0, metadata=_range(0, 86400))
    # MQTT 5.0
    max_session_expiry: int = field(default=0xFFFFFFFF, metadata=_range(0, 0xFFFFFFFF))
    v3_persistent_session_expiry: int = field(default=0xFFFFFFFF, metadata=_range(0, 0xFFFFFFFF))
    max_keepalive: int = field(default=0, metadata=_range(0, 65535))
    topic_alias_maximum: int = field(default=10, metadata=_range(0, 65535))
    reason_strings: bool = True
    retain_available: bool = True
    max_qos: int = field(default=2, metadata=_range(0, 2))
    wildcard_subscription: bool = True
    shared_subscription: bool = True
    subscription_identifiers: bool = True
    shared_subscription_strategy: str = field(
        default="round_robin",
        metadata=_choice("round_robin", "random", "sticky", "hash_clientid", "hash_topic"),
    )
    response_information: str = ""
    server_reference: str = ""
    server_reference_mode: str = field(
        default="none", metadata=_choice("none", "use_another_server", "server_moved")
    )
    max_delayed_messages: int = field(default=100_000, metadata=_range(0, None))
    rewrite: tuple[RewriteRule, ...] = ()
    auto_subscribe: tuple[AutoSubscribe, ...] = ()
    scram_users: tuple[ScramUser, ...] = ()


@dataclass(frozen=True)
class LimitsSettings:
    """Node-wide limits and overload protection (docs/security.md)."""

    max_connections: int = field(default=100_000, metadata=_range(1, None))
    connection_rate: float = field(default=0.0, metadata=_range(0, None))
    connection_burst: int = field(default=100, metadata=_range(1, None))
    message_rate: float = field(default=0.0, metadata=_range(0, None))
    message_burst: int = field(default=100, metadata=_range(1, None))
    byte_rate: int = field(default=0, metadata=_range(0, None))
    byte_burst: int = field(default=1 * MiB, metadata=_range(1, None))
    max_topic_length: int = field(default=65535, metadata=_range(1, 65535))
    max_lingering: int = field(default=10_000, metadata=_range(0, None))
    max_bans: int = field(default=100_000, metadata=_range(1, None))
    flapping_enabled: bool = False
    flapping_max_connects: int = field(default=15, metadata=_range(1, None))
    flapping_window: float = field(default=60.0, metadata=_range(1, 86400))
    flapping_ban_time: float = field(default=300.0, metadata=_range(1, None))
    flapping_max_clients: int = field(default=100_000, metadata=_range(1, None))


@dataclass(frozen=True)
class AuthSettings:
    """Who may connect: the authentication chain and its sources (docs/security.md)."""

    chain: tuple[str, ...] = ("cert", "users", "anonymous")
    allow_anonymous: str = field(default="loopback", metadata=_choice("off", "loopback", "on"))
    unknown_users_as_anonymous: bool = True
    hash_concurrency: int = field(default=2, metadata=_range(1, 64))
    max_users: int = field(default=100_000, metadata=_range(1, None))
    jwt_secret: str = field(default="", metadata=_secret("HS256 shared secret"))
    jwt_public_key_file: str = ""
    jwt_jwks_file: str = ""
    jwt_from: str = field(default="password", metadata=_choice("password", "username"))
    jwt_require_exp: bool = True
    jwt_leeway: float = field(default=0.0, metadata=_range(0, 3600))
    http_url: str = field(default="", metadata={"url": True})
    http_timeout: float = field(default=5.0, metadata=_range(0.1, 300))
    http_verify_tls: bool = True
    http_cafile: str = ""
    http_cache_ttl: float = field(default=60.0, metadata=_range(0, 86400))
    http_cache_size: int = field(default=10_000, metadata=_range(0, None))
    http_max_pending: int = field(default=1000, metadata=_range(1, None))
    http_fail_open: bool = False


@dataclass(frozen=True)
class ACLSettings:
    """What connected clients may publish and subscribe to (docs/security.md)."""

    no_match: str = field(default="allow", metadata=_choice("allow", "deny"))
    deny_action: str = field(default="ignore", metadata=_choice("ignore", "disconnect"))
    sources: tuple[str, ...] = field(
        default=("store", "file"), metadata={"items": ("store", "file")}
    )
    file: str = ""
    sys_readable: bool = True
    max_rules: int = field(default=10_000, metadata=_range(1, None))
    cache_size: int = field(default=64, metadata=_range(0, 100_000))
    check_deliveries: bool = True


@dataclass(frozen=True)
class HTTPSettings:
    """The admin HTTP service: JSON API, Prometheus metrics and dashboard (docs/operations.md)."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_range(0, 65535))
    auth: str = field(default="none", metadata=_choice("none", "token", "basic"))
    token: str = field(default="", metadata=_secret("bearer token for auth = token"))
    username: str = "admin"
    password: str = field(default="", metadata=_secret("password for auth = basic"))
    loopback_exempt: bool = False
    max_page_size: int = field(default=1000, metadata=_range(1, 100_000))
    max_body_bytes: int = field(default=1 * MiB, metadata=_range(1024, 256 * MiB))
    metrics_max_objects: int = field(default=1000, metadata=_range(0, 1_000_000))


@dataclass(frozen=True)
class KafkaSettings:
    """Kafka protocol behaviour and bounds (docs/kafka.md)."""

    advertised_host: str = field(
        default="", metadata={"doc": "empty: the address the client connected to"}
    )
    advertised_port: int = field(default=0, metadata=_range(0, 65535))
    broker_id: int = field(default=1, metadata=_range(0, 2**31 - 1))
    cluster_id: str = "robustmq"
    auto_create_topics: bool = True
    default_partitions: int = field(default=1, metadata=_range(1, 10_000))
    max_partitions_per_topic: int = field(default=1000, metadata=_range(1, 100_000))
    max_request_size: int = field(default=100 * MiB, metadata=_range(1024, 2**31 - 1))
    max_pending_requests: int = field(default=64, metadata=_range(1, 100_000))
    max_wait_ms: int = field(default=30_000, metadata=_range(0, 3_600_000))
    fetch_max_records: int = field(default=100_000, metadata=_range(1, 10_000_000))
    group_min_session_timeout_ms: int = field(default=6000, metadata=_range(1, None))
    group_max_session_timeout_ms: int = field(default=1_800_000, metadata=_range(1, None))
    group_initial_rebalance_delay_ms: int = field(default=3000, metadata=_range(0, 3_600_000))
    max_groups: int = field(default=10_000, metadata=_range(1, None))
    max_group_members: int = field(default=1000, metadata=_range(1, None))
    max_producer_states: int = field(default=100_000, metadata=_range(1, None))
    max_aborted_transactions: int = field(default=1000, metadata=_range(1, None))
    max_transactions: int = field(default=10_000, metadata=_range(1, None))
    transaction_max_timeout_ms: int = field(default=900_000, metadata=_range(1, None))
    transaction_check_interval_ms: int = field(default=10_000, metadata=_range(10, 3_600_000))
    sasl_required: bool = False
    close_linger: float = field(default=2.0, metadata=_range(0, 60))
    connections_max_idle_ms: int = field(default=600_000, metadata=_range(100, None))
    authentication_timeout_ms: int = field(default=10_000, metadata=_range(100, 3_600_000))
    max_buffered_request_bytes: int = field(default=256 * MiB, metadata=_range(1024, None))
    max_fetch_sessions: int = field(default=1000, metadata=_range(0, 1_000_000))
    fetch_read_bytes: int = field(default=8 * MiB, metadata=_range(4096, 1 << 30))
    consumer_session_timeout_ms: int = field(default=45_000, metadata=_range(1000, None))
    consumer_heartbeat_interval_ms: int = field(default=5000, metadata=_range(100, None))
    share_record_lock_duration_ms: int = field(default=30_000, metadata=_range(1000, 3_600_000))
    share_delivery_count_limit: int = field(default=5, metadata=_range(2, 10))
    share_session_timeout_ms: int = field(default=45_000, metadata=_range(1000, None))
    share_heartbeat_interval_ms: int = field(default=5000, metadata=_range(100, None))
    share_partition_max_record_locks: int = field(default=2000, metadata=_range(100, 1_000_000))
    mapping_max_batch_bytes: int = field(
        default=1 * MiB,
        metadata={**_range(1024, 64 * MiB), "doc": "records of a [[mappings]] entry per batch"},
    )
    mapping_max_pending_bytes: int = field(
        default=64 * MiB,
        metadata={**_range(1024, None), "doc": "unwritten mapped bytes before publishers wait"},
    )


@dataclass(frozen=True)
class AMQPSettings:
    """AMQP 0-9-1 behaviour and bounds (docs/amqp.md)."""

    frame_max: int = field(default=131072, metadata=_range(4096, 1 << 31))
    channel_max: int = field(default=2047, metadata=_range(1, 65535))
    heartbeat: int = field(default=60, metadata=_range(0, 65535))
    default_vhost: str = "/"
    vhosts: tuple[str, ...] = ("/",)
    default_user: str = "guest"
    default_pass: str = field(default="guest", metadata=_secret())
    default_user_loopback_only: bool = True
    max_message_size: int = field(default=16 * MiB, metadata=_range(1, 512 * MiB))
    max_queue_length: int = field(default=1_000_000, metadata=_range(0, None))
    max_queue_bytes: int = field(default=256 * MiB, metadata=_range(0, None))
    max_queues: int = field(default=100_000, metadata=_range(1, None))
    max_exchanges: int = field(default=10_000, metadata=_range(7, None))
    memory_high_watermark: int = field(default=512 * MiB, metadata=_range(1, None))
    memory_low_watermark: int = field(default=384 * MiB, metadata=_range(0, None))
    handshake_timeout: float = field(default=10.0, metadata=_range(0.1, 3600))
    close_timeout: float = field(default=5.0, metadata=_range(0.1, 3600))
    mqtt_exchange: str = field(
        default="amq.topic", metadata={"doc": "the topic exchange that is the MQTT topic space"}
    )
    mqtt_vhost: str = field(default="/", metadata={"doc": "the virtual host of mqtt_exchange"})


@dataclass(frozen=True)
class MappingSettings:
    """One MQTT topic filter mapped to a Kafka topic (docs/topic-space.md)."""

    mqtt: str = ""
    kafka: str = ""
    direction: str = field(
        default="both", metadata=_choice("both", "mqtt_to_kafka", "kafka_to_mqtt")
    )


@dataclass(frozen=True)
class ListenerSettings:
    """One listening socket: protocol over transport at address:port."""

    protocol: str = "mqtt"
    transport: str = field(default="tcp", metadata=_choice("tcp", "tls", "ws", "wss", "quic"))
    bind: str = "0.0.0.0"
    port: int = field(default=1883, metadata=_range(0, 65535))
    name: str = ""
    max_connections: int = field(default=100_000, metadata=_range(1, None))
    backlog: int = field(default=1024, metadata=_range(1, 65535))
    # TLS (tls, wss) and QUIC; see docs/transports.md
    certfile: str = ""
    keyfile: str = ""
    cacertfile: str = ""
    verify_peer: bool = False
    peer_cert_as_username: str = field(default="none", metadata=_choice("none", "cn", "san"))
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!DSS"
    tls_min_version: str = field(default="1.2", metadata=_choice("1.2", "1.3"))
    alpn: tuple[str, ...] = ()
    # WebSocket (ws, wss)
    ws_path: str = "/mqtt"
    ws_max_handshake_size: int = field(default=16384, metadata=_range(1024, 1 * MiB))
    # QUIC
    quic_idle_timeout: float = field(default=60.0, metadata=_range(1, 3600))
    quic_send_buffer: int = field(default=1 * MiB, metadata=_range(16384, None))
    quic_receive_buffer: int = field(default=256 * 1024, metadata=_range(16384, None))

    #: The port a listener gets when its table has no C{port}: the standard one.
    STANDARD_PORTS: typing.ClassVar[dict[tuple[str, str], int]] = {
        ("mqtt", "tcp"): 1883,
        ("mqtt", "tls"): 8883,
        ("mqtt", "ws"): 8083,
        ("mqtt", "wss"): 8084,
        ("mqtt", "quic"): 14567,
        ("amqp", "tcp"): 5672,
        ("amqp", "tls"): 5671,
        ("kafka", "tcp"): 9092,
        ("kafka", "tls"): 9093,
    }

    @property
    def label(self) -> str:
        """A human name for logs: the configured name or protocol/transport:port."""
        return self.name or f"{self.protocol}/{self.transport}:{self.port}"

    @classmethod
    def withStandardPort(cls, raw: Any, plugins: Mapping[str, Any] | None = None) -> Any:
        """The raw table C{raw}, with the protocol's standard port for its transport if it has none.

        A protocol without an entry in L{STANDARD_PORTS} (a third-party plugin)
        gets its plugin's C{defaultPort} over TCP.
        """
        if not isinstance(raw, Mapping) or "port" in raw:
            return raw
        protocol = raw.get("protocol", cls.protocol)
        transport = raw.get("transport", "tcp")
        standard = cls.STANDARD_PORTS.get((protocol, transport))
        if standard is None and transport == "tcp" and plugins is not None:
            standard = getattr(plugins.get(protocol), "defaultPort", None)
        return raw if standard is None else {**raw, "port": standard}

    def check(self, key: str) -> None:
        """Checks between this listener's keys; C{key} is its name in errors (C{listeners[1]})."""
        secure = self.transport in ("tls", "wss", "quic")
        tlsKeys = ("certfile", "keyfile", "cacertfile", "verify_peer", "alpn")
        if not secure:
            for name in tlsKeys:
                if getattr(self, name):
                    raise ConfigError(
                        f"{key}.{name}: only used by tls, wss and quic listeners, "
                        f"not {self.transport!r}"
                    )
        else:
            for name in ("certfile", "keyfile"):
                if not getattr(self, name):
                    raise ConfigError(
                        f"{key}.{name}: a {self.transport} listener needs a certificate and key"
                    )
        if self.verify_peer and not self.cacertfile:
            raise ConfigError(f"{key}.cacertfile: verify_peer = true needs the CA to verify with")
        if self.verify_peer and self.transport == "quic":
            raise ConfigError(f"{key}.verify_peer: client certificates are not supported over quic")
        if self.peer_cert_as_username != "none" and not self.verify_peer:
            raise ConfigError(
                f"{key}.peer_cert_as_username: needs verify_peer = true (a verified client certificate)"
            )
        if not self.ws_path.startswith("/"):
            raise ConfigError(f"{key}.ws_path: {self.ws_path!r} must start with '/'")
        for i, name in enumerate(self.alpn):
            if not name or len(name.encode()) > 255:
                raise ConfigError(f"{key}.alpn[{i}]: {name!r} must be 1 to 255 bytes")


def _defaultListeners() -> tuple[ListenerSettings, ...]:
    return (ListenerSettings(),)


@dataclass(frozen=True)
class Settings:
    """Everything a node needs, validated."""

    node: NodeSettings = field(default_factory=NodeSettings)
    log: LogSettings = field(default_factory=LogSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    acl: ACLSettings = field(default_factory=ACLSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    amqp: AMQPSettings = field(default_factory=AMQPSettings)
    listeners: tuple[ListenerSettings, ...] = field(default_factory=_defaultListeners)
    mappings: tuple[MappingSettings, ...] = ()
    #: sections declared by protocol plugins (C{IProtocolPlugin.configSection}), by name
    plugins: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def section(self, name: str) -> Any:
        """The settings of section C{name}: a built-in one or one a plugin declared.

        @raise KeyError: no such section.
        """
        if name in _SECTIONS:
            return getattr(self, name)
        return self.plugins[name]


_SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)
    if f.name not in ("listeners", "mappings", "plugins")
}


def _typeName(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "array"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


def _coerce(key: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    """Check C{value} against the field type C{tp} and its metadata bounds."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected an array, got {type(value).__name__} {value!r}")
        itemType = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(itemType):
            return tuple(_build(itemType, v, f"{key}[{i}]") for i, v in enumerate(value))
        items = tuple(_coerce(f"{key}[{i}]", itemType, v, {}) for i, v in enumerate(value))
        allowed = meta.get("items")
        for item in items:
            if allowed and item not in allowed:
                raise ConfigError(f"{key}: unknown value {item!r}; expected any of {list(allowed)}")
        return items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            shown = MASK if meta.get("secret") else repr(value)  # never echo a secret
            raise ConfigError(f"{key}: expected a string, got {shown}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{key}: {value!r} is below the minimum {low}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: {value!r} is above the maximum {high}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Validate the table C{raw} into the dataclass C{cls}."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{prefix}.{key}: unknown key; known keys of [{prefix}] are {sorted(fields)}"
            )
    values = {
        name: _coerce(f"{prefix}.{name}", hints[name], raw[name], fields[name].metadata)
        for name in raw
    }
    return cls(**values)


def _parseEnvValue(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _applyEnvironment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Overlay C{ROBUSTMQ_SECTION__KEY} variables on the parsed TOML C{data}.

    Returns the variable that set each key (C{"mqtt.max_inflight"},
    C{"listeners[0].port"}), so an error in its value names the variable.
    """
    origins: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) < 2 or not all(path):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        value = _parseEnvValue(text)
        if path[0] in ("listeners", "mappings"):
            array = path[0]
            if len(path) != 3 or not path[1].isdigit():
                raise ConfigError(
                    f"environment variable {name}: expected "
                    f"{ENV_PREFIX}{array.upper()}__<INDEX>__<KEY>"
                )
            entries = data.setdefault(array, [{}] if array == "listeners" else [])
            index = int(path[1])
            while len(entries) <= index:
                entries.append({})
            entries[index][path[2]] = value
            origins[f"{array}[{index}].{path[2]}"] = name
        else:
            if len(path) != 2:
                raise ConfigError(f"environment variable {name}: too many '__' parts")
            section = data.setdefault(path[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{path[0]}: expected a table")
            section[path[1]] = value
            origins[f"{path[0]}.{path[1]}"] = name
    return origins


def _protocolPlugins() -> dict[str, Any]:
    """The installed protocol plugins by name (their config sections and default ports)."""
    from twisted.plugin import getPlugins

    import robustmq.plugins
    from robustmq.interfaces import IProtocolPlugin

    return {p.name: p for p in getPlugins(IProtocolPlugin, robustmq.plugins)}


def pluginSections(plugins: Mapping[str, Any] | None = None) -> dict[str, type]:
    """The config sections that protocol plugins declare, by name (built-in names excluded)."""
    if plugins is None:
        plugins = _protocolPlugins()
    found: dict[str, type] = {}
    for name, plugin in sorted(plugins.items()):
        section = getattr(plugin, "configSection", None)
        if section is not None and name not in _SECTIONS and name != "listeners":
            found[name] = section
    return found


def settingsFromMapping(data: Mapping[str, Any]) -> Settings:
    """Validate already-parsed TOML data into L{Settings}.

    Besides the built-in sections, a section may belong to an installed
    protocol plugin that declares it (C{IProtocolPlugin.configSection}); it
    is validated the same way and reached with L{Settings.section}.
    """
    plugins = _protocolPlugins()
    extra = pluginSections(plugins)
    sections: dict[str, Any] = {}
    pluginValues: dict[str, Any] = {}
    for key, raw in data.items():
        if key in ("listeners", "mappings"):
            continue
        if key in _SECTIONS:
            sections[key] = _build(_SECTIONS[key], raw, key)
        elif key in extra:
            pluginValues[key] = _build(extra[key], raw, key)
        else:
            known = sorted([*_SECTIONS, *extra, "listeners"])
            raise ConfigError(f"{key}: unknown section; known sections are {known}")
    for key, cls in extra.items():
        if key not in pluginValues:
            pluginValues[key] = cls()
    listeners: tuple[ListenerSettings, ...] = _defaultListeners()
    if "listeners" in data:
        rawListeners = data["listeners"]
        if not isinstance(rawListeners, list):
            raise ConfigError("listeners: expected an array of tables ([[listeners]])")
        listeners = tuple(
            _build(
                ListenerSettings, ListenerSettings.withStandardPort(raw, plugins), f"listeners[{i}]"
            )
            for i, raw in enumerate(rawListeners)
        )
    mappings: tuple[MappingSettings, ...] = ()
    if "mappings" in data:
        rawMappings = data["mappings"]
        if not isinstance(rawMappings, list):
            raise ConfigError("mappings: expected an array of tables ([[mappings]])")
        mappings = tuple(
            _build(MappingSettings, raw, f"mappings[{i}]") for i, raw in enumerate(rawMappings)
        )
    settings = Settings(listeners=listeners, mappings=mappings, plugins=pluginValues, **sections)
    _crossCheck(settings)
    return _resolveDefaults(settings)


def _crossCheck(settings: Settings) -> None:
    """Checks that involve more than one key."""
    seen: dict[tuple[str, int, str], int] = {}
    for i, listener in enumerate(settings.listeners):
        try:
            ipaddress.ip_address(listener.bind)
        except ValueError:
            raise ConfigError(
                f"listeners[{i}].bind: {listener.bind!r} is not an IP address"
            ) from None
        listener.check(f"listeners[{i}]")
        udp = "udp" if listener.transport == "quic" else "tcp"
        slot = (listener.bind, listener.port, udp)
        if listener.port and slot in seen:
            raise ConfigError(
                f"listeners[{i}].port: {listener.bind}:{listener.port} is already used by listeners[{seen[slot]}]"
            )
        seen[slot] = i
    _checkHTTP(settings.http)
    _checkAuth(settings.auth, settings.acl)
    _checkMQTT(settings.mqtt)
    if settings.mqtt.max_inflight > 65535:
        raise ConfigError("mqtt.max_inflight: at most 65535 packet identifiers exist")
    for i, rule in enumerate(settings.mqtt.rewrite):
        try:
            re.compile(rule.re)
        except re.error as e:
            raise ConfigError(
                f"mqtt.rewrite[{i}].re: not a valid regular expression: {e}"
            ) from None
        if not rule.dest_topic:
            raise ConfigError(f"mqtt.rewrite[{i}].dest_topic: must not be empty")
    for i, auto in enumerate(settings.mqtt.auto_subscribe):
        if not auto.topic:
            raise ConfigError(f"mqtt.auto_subscribe[{i}].topic: must not be empty")
    _checkPlacement(settings.placement)
    _checkCluster(settings)
    _checkMappings(settings.mappings)
    if settings.mqtt.server_reference_mode != "none" and not settings.mqtt.server_reference:
        raise ConfigError(
            "mqtt.server_reference: must be set when mqtt.server_reference_mode is not 'none'"
        )


def _checkCluster(settings: Settings) -> None:
    cluster = settings.cluster
    try:
        ipaddress.ip_address(cluster.bind)
    except ValueError:
        raise ConfigError(f"cluster.bind: {cluster.bind!r} is not an IP address") from None
    if cluster.advertise:
        host, _, port = cluster.advertise.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"cluster.advertise: {cluster.advertise!r} is not 'host:port'")
    if not settings.node.roles:
        raise ConfigError("node.roles: a node needs at least one role (placement, broker)")
    if cluster.enabled and not settings.placement.cluster_secret:
        raise ConfigError(
            "placement.cluster_secret: must be set when cluster.enabled is true "
            "(every node logs in with it)"
        )
    if cluster.enabled and cluster.takeover_timeout <= settings.placement.heartbeat_timeout:
        raise ConfigError(
            "cluster.takeover_timeout: must be longer than placement.heartbeat_timeout "
            "(a client of a dead node waits for the node to be declared dead and its "
            "sessions adopted)"
        )
    if settings.node.workers != 1:
        if cluster.enabled:
            raise ConfigError(
                "node.workers: a node with several worker processes cannot join a broker "
                "cluster yet (set workers = 1 or cluster.enabled = false)"
            )
        if "broker" not in settings.node.roles:
            raise ConfigError("node.workers: worker processes need the broker role")
    if "broker" not in settings.node.roles and not cluster.enabled:
        raise ConfigError(
            "node.roles: a node without the broker role only makes sense in a cluster "
            "(set cluster.enabled = true)"
        )


_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _checkMappings(mappings: tuple[MappingSettings, ...]) -> None:
    seen: dict[str, int] = {}
    for i, mapping in enumerate(mappings):
        key = f"mappings[{i}]"
        if not mapping.mqtt:
            raise ConfigError(f"{key}.mqtt: an MQTT topic filter is required")
        try:
            validateTopicFilter(mapping.mqtt)
        except InvalidTopic as e:
            raise ConfigError(f"{key}.mqtt: {mapping.mqtt!r} is not a topic filter: {e}") from None
        if mapping.mqtt.startswith(("$share/", "$queue/", "$exclusive/")):
            raise ConfigError(f"{key}.mqtt: a shared or exclusive filter cannot be mapped")
        if not _KAFKA_TOPIC.fullmatch(mapping.kafka) or mapping.kafka in (".", ".."):
            raise ConfigError(
                f"{key}.kafka: {mapping.kafka!r} is not a Kafka topic name "
                "(1 to 249 of a-z A-Z 0-9 . _ -)"
            )
        if mapping.kafka in seen:
            raise ConfigError(
                f"{key}.kafka: topic {mapping.kafka!r} is already mapped by mappings[{seen[mapping.kafka]}]"
            )
        seen[mapping.kafka] = i


def _checkPlacement(placement: PlacementSettings) -> None:
    try:
        ipaddress.ip_address(placement.bind)
    except ValueError:
        raise ConfigError(f"placement.bind: {placement.bind!r} is not an IP address") from None
    if placement.heartbeat_timeout <= placement.heartbeat_interval:
        raise ConfigError("placement.heartbeat_timeout: must be longer than heartbeat_interval")
    for i, server in enumerate(placement.servers):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"placement.servers[{i}]: {server!r} is not 'host:port'")
    for i, url in enumerate(placement.etcd_endpoints):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"placement.etcd_endpoints[{i}]: {url!r} is not an http(s) URL")
    if placement.tls_key and not placement.tls_cert:
        raise ConfigError(
            "placement.tls_key: set without placement.tls_cert "
            "(the PB listener needs the certificate too to use TLS)"
        )


def _checkHTTP(http: HTTPSettings) -> None:
    try:
        ipaddress.ip_address(http.bind)
    except ValueError:
        raise ConfigError(f"http.bind: {http.bind!r} is not an IP address") from None
    if http.auth == "token" and not http.token:
        raise ConfigError('http.token: must be set when http.auth = "token"')
    if http.auth == "basic" and not (http.username and http.password):
        raise ConfigError(
            'http.password: username and password must be set when http.auth = "basic"'
        )


def _checkAuth(auth: AuthSettings, acl: ACLSettings) -> None:
    if "jwt" in auth.chain and not (
        auth.jwt_secret or auth.jwt_public_key_file or auth.jwt_jwks_file
    ):
        raise ConfigError(
            "auth.jwt_secret: the jwt authenticator needs jwt_secret, "
            "jwt_public_key_file or jwt_jwks_file"
        )
    if "http" in auth.chain and not auth.http_url.startswith(("http://", "https://")):
        raise ConfigError("auth.http_url: the http authenticator needs an http:// or https:// URL")
    if len(set(auth.chain)) != len(auth.chain):
        raise ConfigError(f"auth.chain: {list(auth.chain)} names an authenticator twice")


def _checkMQTT(mqtt: MQTTSettings) -> None:
    if 0 < mqtt.max_packet_size < 16:
        raise ConfigError(
            f"mqtt.max_packet_size: {mqtt.max_packet_size} is below the minimum 16 "
            "(0: no limit but the protocol's)"
        )


def _resolveDefaults(settings: Settings) -> Settings:
    """Fill values whose default depends on other keys."""
    if not settings.storage.data_dir:
        storage = dataclasses.replace(
            settings.storage, data_dir=os.path.join(settings.node.data_dir, "storage")
        )
        settings = dataclasses.replace(settings, storage=storage)
    return settings


def loadSettings(path: str | None, environ: Mapping[str, str] | None = None) -> Settings:
    """
    Read, override from the environment and validate a config file.

    @param path: a TOML file, or None for defaults plus environment only.
    @param environ: the environment to read overrides from (default os.environ).
    @raise ConfigError: naming the file, key and problem.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    origins = _applyEnvironment(data, os.environ if environ is None else environ)
    try:
        return settingsFromMapping(data)
    except ConfigError as e:
        message = str(e)
        for key, variable in origins.items():
            if message.startswith(f"{key}:") or message.startswith(f"{key}."):
                # The value came from the environment, not the file: blame the variable.
                raise ConfigError(f"environment variable {variable}: {message}") from None
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{message}") from None


def _maskURL(url: str) -> str:
    """C{url} with the password of its user information masked."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _walk(obj: Any, found: list[str] | None) -> Any:
    """asdict of C{obj} with secrets masked; secret values appended to C{found}."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("secret") and isinstance(value, str):
                if value and found is not None:
                    found.append(value)
                out[f.name] = MASK if value else value
            elif f.metadata.get("url") and isinstance(value, str):
                masked = _maskURL(value)
                if masked != value and found is not None:
                    from urllib.parse import urlsplit

                    found.append(urlsplit(value).password or "")
                out[f.name] = masked
            else:
                out[f.name] = _walk(value, found)
        return out
    if isinstance(obj, tuple | list):
        return [_walk(v, found) for v in obj]
    return obj


def maskedSettings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able data with every secret shown as L{MASK} (one place for the
    admin API's config view, C{robustmq ctl config} and anything else that shows settings)."""
    return _walk(settings, None)  # type: ignore[no-any-return]


def secretValues(settings: Settings) -> list[str]:
    """Every secret value configured (for scrubbing log lines), longest first."""
    found: list[str] = []
    _walk(settings, found)
    return sorted({v for v in found if v}, key=len, reverse=True)


def describeDefaults() -> dict[str, Any]:
    """Every section, key and default value, for documentation and the admin API."""
    out: dict[str, Any] = {}
    for name, cls in {**_SECTIONS, **pluginSections()}.items():
        out[name] = {f.name: _defaultOf(f) for f in dataclasses.fields(cls)}
    out["listeners"] = [dataclasses.asdict(ListenerSettings())]
    out["mappings"] = [dataclasses.asdict(MappingSettings())]
    return out


def _defaultOf(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


__all__ = [
    "ACLSettings",
    "AuthSettings",
    "ConfigError",
    "ENV_PREFIX",
    "HTTPSettings",
    "KafkaSettings",
    "ListenerSettings",
    "LimitsSettings",
    "LogSettings",
    "MappingSettings",
    "MQTTSettings",
    "NodeSettings",
    "PlacementSettings",
    "Settings",
    "StorageSettings",
    "describeDefaults",
    "loadSettings",
    "pluginSections",
    "settingsFromMapping",
]
