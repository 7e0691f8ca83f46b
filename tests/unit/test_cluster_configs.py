"""The local cluster's configs (etc/cluster/*.toml) load, agree with each other and with start.sh."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from pathlib import Path

import pytest

from robustmq.config import ConfigError, Settings, loadSettings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "etc" / "cluster"
SECRET = {"ROBUSTMQ_PLACEMENT__CLUSTER_SECRET": "rmq-test-secret"}
PLACEMENT = ["placement-1", "placement-2", "placement-3"]
BROKERS = ["broker-1", "broker-2", "broker-3"]


def _load() -> dict[str, Settings]:
    return {path.stem: loadSettings(str(path), SECRET) for path in sorted(CLUSTER.glob("*.toml"))}


def _startScriptPorts(name: str) -> list[int]:
    """The ports (at C{RMQ_PORT_OFFSET} 0) start.sh puts in its array C{NAME}:
    C{read -r -a NAME <<<"$(shifted 1 2 3)"}."""
    text = (CLUSTER / "start.sh").read_text()
    m = re.search(rf'^read -r -a {name} <<<"\$\(shifted ([0-9 ]+)\)"', text, re.MULTILINE)
    assert m is not None, f"{name} not in start.sh"
    return [int(p) for p in m.group(1).split()]


def _bound(name: str, s: Settings) -> list[tuple[str, int]]:
    """The (what, port) pairs a node of this config listens on."""
    if name.startswith("placement"):
        return [("placement", s.placement.port)]
    out = [("cluster link", s.cluster.port), ("http", s.http.port)]
    out += [(f"{ls.protocol}/{ls.transport}", ls.port) for ls in s.listeners]
    return out


def test_every_config_loads_with_the_secret_from_the_environment() -> None:
    settings = _load()
    assert sorted(settings) == sorted(PLACEMENT + BROKERS)
    for name, s in settings.items():
        assert s.node.id == name
        assert s.cluster.enabled, name
        assert s.placement.cluster_secret == SECRET["ROBUSTMQ_PLACEMENT__CLUSTER_SECRET"]
        assert not Path(s.node.data_dir).is_absolute(), "data lives in the run directory"


def test_without_the_secret_a_node_does_not_start() -> None:
    with pytest.raises(ConfigError, match="placement.cluster_secret"):
        loadSettings(str(CLUSTER / "broker-1.toml"), {})


def test_roles_and_what_each_node_serves() -> None:
    settings = _load()
    servers = [f"127.0.0.1:{settings[n].placement.port}" for n in PLACEMENT]
    for name in PLACEMENT:
        s = settings[name]
        assert s.node.roles == ("placement",)
        assert s.placement.backend == "etcd"
        assert s.listeners == ()
        assert not s.http.enabled
        assert list(s.placement.servers) == servers
    for name in BROKERS:
        s = settings[name]
        assert s.node.roles == ("broker",)
        assert s.storage.backend == "segment"
        assert s.http.enabled
        assert list(s.placement.servers) == servers
        assert any(ls.protocol == "mqtt" and ls.transport == "tcp" for ls in s.listeners)
    others = {ls.protocol for n in BROKERS[1:] for ls in settings[n].listeners}
    assert others == {"mqtt"}, "Kafka and AMQP run on broker-1 only"
    assert {ls.protocol for ls in settings["broker-1"].listeners} == {"mqtt", "kafka", "amqp"}


def test_ports_distinct_across_files_and_loopback_only() -> None:
    settings = _load()
    bound = [(name, what, port) for name, s in settings.items() for what, port in _bound(name, s)]
    counts = Counter(port for _, _, port in bound)
    clashes = [b for b in bound if counts[b[2]] > 1]
    assert not clashes, f"ports used twice: {clashes}"
    assert all(port > 0 for _, _, port in bound)
    etcd = set(_startScriptPorts("ETCD_CLIENT")) | set(_startScriptPorts("ETCD_PEER"))
    assert not etcd & set(counts), "a node port clashes with etcd's"
    data = [s.node.data_dir for s in settings.values()]
    assert len(set(data)) == len(data)
    for name, s in settings.items():
        binds = [s.placement.bind, s.cluster.bind, s.http.bind, *(ls.bind for ls in s.listeners)]
        assert all(ipaddress.ip_address(b).is_loopback for b in binds), name


def test_start_script_waits_on_the_ports_the_configs_use() -> None:
    settings = _load()
    assert _startScriptPorts("PB_PORTS") == [settings[n].placement.port for n in PLACEMENT]
    assert _startScriptPorts("LINK_PORTS") == [settings[n].cluster.port for n in BROKERS]
    assert _startScriptPorts("HTTP_PORTS") == [settings[n].http.port for n in BROKERS]
    mqtt = [next(ls.port for ls in settings[n].listeners if ls.transport == "tcp") for n in BROKERS]
    assert _startScriptPorts("MQTT_PORTS") == mqtt
    text = (CLUSTER / "start.sh").read_text()
    for i, name in enumerate(PLACEMENT):
        assert f'"{name}:${{PB_PORTS[{i}]}}"' in text
    for i, name in enumerate(BROKERS):
        assert f'"{name}:${{MQTT_PORTS[{i}]}}"' in text
    # Shifted ports reach the nodes as ROBUSTMQ_* overrides of the same keys.
    for override in (
        "ROBUSTMQ_PLACEMENT__PORT=${PB_PORTS[i]}",
        "ROBUSTMQ_CLUSTER__PORT=${LINK_PORTS[i]}",
        "ROBUSTMQ_HTTP__PORT=${HTTP_PORTS[i]}",
        "ROBUSTMQ_LISTENERS__0__PORT=${MQTT_PORTS[i]}",
        "ROBUSTMQ_LISTENERS__1__PORT=${WS_PORTS[i]}",
        "ROBUSTMQ_LISTENERS__2__PORT=$KAFKA_PORT",
        "ROBUSTMQ_LISTENERS__3__PORT=$AMQP_PORT",
    ):
        assert override in text, override
    checked = {
        p
        for array in (
            "PB_PORTS",
            "LINK_PORTS",
            "MQTT_PORTS",
            "WS_PORTS",
            "HTTP_PORTS",
            "OTHER_PORTS",
        )
        for p in _startScriptPorts(array)
    }
    used = {port for name, s in settings.items() for _, port in _bound(name, s)}
    assert used == checked, "start.sh checks that exactly the nodes' ports are free"
    client = {f"http://127.0.0.1:{p}" for p in _startScriptPorts("ETCD_CLIENT")}
    for name in PLACEMENT:
        assert set(settings[name].placement.etcd_endpoints) == client


def test_systemd_template_unit() -> None:
    unit = (ROOT / "etc" / "systemd" / "robustmq@.service").read_text()
    assert "--config /etc/robustmq/%i.toml" in unit
    assert "EnvironmentFile=/etc/robustmq/cluster.env" in unit
    assert "ROBUSTMQ_NODE__DATA_DIR=/var/lib/robustmq/%i" in unit
