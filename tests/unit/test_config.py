"""Config loading: defaults, validation messages naming the key, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustmq.config import ConfigError, describeDefaults, loadSettings, settingsFromMapping

ROOT = Path(__file__).resolve().parents[2]


def test_emptyConfigIsAWorkingSingleNode():
    s = settingsFromMapping({})
    assert s.node.roles == ("placement", "broker")
    assert [(lst.protocol, lst.transport, lst.port) for lst in s.listeners] == [
        ("mqtt", "tcp", 1883)
    ]


def test_shippedConfigLoads():
    s = loadSettings(str(ROOT / "etc" / "robustmq.toml"), environ={})
    assert s.listeners[0].port == 1883
    assert s.listeners[0].bind == "0.0.0.0"
    assert s.storage.backend == "segment"
    assert s.storage.data_dir == "./data/storage"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mqtt": {"max_inflight": "ten"}}, "mqtt.max_inflight: expected an integer"),
        ({"mqtt": {"max_inflight": 0}}, "mqtt.max_inflight: 0 is below the minimum 1"),
        ({"mqtt": {"nope": 1}}, "mqtt.nope: unknown key"),
        ({"nope": {}}, "nope: unknown section"),
        ({"mqtt": 3}, "mqtt: expected a table"),
        ({"log": {"level": "loud"}}, "log.level: 'loud' is not one of"),
        ({"mqtt": {"queue_qos0_offline": 1}}, "mqtt.queue_qos0_offline: expected a boolean"),
        ({"listeners": [{"port": 70000}]}, "listeners[0].port: 70000 is above the maximum 65535"),
        ({"listeners": [{"bind": "localhost"}]}, "listeners[0].bind: 'localhost' is not an IP"),
        ({"listeners": [{"port": 1}, {"port": 1}]}, "listeners[1].port: 0.0.0.0:1 is already used"),
        ({"listeners": {"port": 1}}, "listeners: expected an array of tables"),
        ({"node": {"roles": ["broker", "x"]}}, "node.roles: unknown value 'x'"),
        ({"cluster": {"enabled": True}}, "placement.cluster_secret: must be set"),
        ({"node": {"roles": ["placement"]}}, "node.roles: a node without the broker role"),
        ({"cluster": {"bind": "host"}}, "cluster.bind: 'host' is not an IP address"),
        ({"cluster": {"advertise": "nohost"}}, "cluster.advertise: 'nohost' is not 'host:port'"),
        (
            {
                "cluster": {"enabled": True, "takeover_timeout": 3},
                "placement": {"cluster_secret": "s", "heartbeat_timeout": 5},
            },
            "cluster.takeover_timeout: must be longer than placement.heartbeat_timeout",
        ),
        ({"placement": {"tls_key": "k.pem"}}, "placement.tls_key: set without placement.tls_cert"),
    ],
)
def test_badValuesNameTheKey(data, message):
    with pytest.raises(ConfigError) as info:
        settingsFromMapping(data)
    assert message in str(info.value)


def test_fileErrorsNameTheFile(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nmax_packet_size = -1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: mqtt.max_packet_size: -1 is below"):
        loadSettings(str(bad), environ={})
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        loadSettings(str(bad), environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        loadSettings(str(tmp_path / "missing.toml"), environ={})


def test_environmentOverrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nmax_inflight = 5\n[[listeners]]\nport = 1884\n")
    s = loadSettings(
        str(f),
        environ={
            "ROBUSTMQ_MQTT__MAX_INFLIGHT": "64",
            "ROBUSTMQ_LISTENERS__0__BIND": "127.0.0.1",
            "ROBUSTMQ_NODE__ROLES": '["broker"]',
            "ROBUSTMQ_LOG__LEVEL": "debug",
            "UNRELATED": "x",
        },
    )
    assert s.mqtt.max_inflight == 64
    assert s.listeners[0].bind == "127.0.0.1"
    assert s.listeners[0].port == 1884
    assert s.node.roles == ("broker",)
    assert s.log.level == "debug"
    with pytest.raises(ConfigError, match="mqtt.max_inflight: expected an integer"):
        loadSettings(None, environ={"ROBUSTMQ_MQTT__MAX_INFLIGHT": "lots"})
    with pytest.raises(ConfigError, match="ROBUSTMQ_MQTT"):
        loadSettings(None, environ={"ROBUSTMQ_MQTT": "1"})


def test_describeDefaultsCoversEverySection():
    d = describeDefaults()
    assert set(d) >= {"node", "log", "storage", "mqtt", "limits", "listeners"}
    assert d["mqtt"]["max_inflight"] == 32


def test_badEnvironmentValueNamesTheVariableNotTheFile(tmp_path):
    """ROBUSTMQ_MQTT__MAX_INFLIGHT=abc was blamed on the TOML file."""
    path = tmp_path / "robustmq.toml"
    path.write_text("[mqtt]\nmax_inflight = 10\n")
    with pytest.raises(ConfigError) as e:
        loadSettings(str(path), {"ROBUSTMQ_MQTT__MAX_INFLIGHT": "abc"})
    assert str(e.value) == (
        "environment variable ROBUSTMQ_MQTT__MAX_INFLIGHT: mqtt.max_inflight: "
        "expected an integer, got 'abc'"
    )
    with pytest.raises(ConfigError) as e:
        loadSettings(str(path), {"ROBUSTMQ_LISTENERS__0__PORT": "99999"})
    assert str(e.value).startswith("environment variable ROBUSTMQ_LISTENERS__0__PORT: ")
    # A bad value in the file still names the file.
    path.write_text("[mqtt]\nmax_inflight = 'x'\n")
    with pytest.raises(ConfigError) as e:
        loadSettings(str(path), {"ROBUSTMQ_MQTT__MAX_QOS": "1"})
    assert str(e.value).startswith(f"{path}: mqtt.max_inflight")
