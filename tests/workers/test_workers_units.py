"""The pieces of a node with workers that need no process: the settings each worker runs
with, which worker serves which listener, the node's admin route table, the merged
/metrics and the tagged log lines."""

from __future__ import annotations

import json
import types
from pathlib import Path

from robustmq import logs
from robustmq.admin._node import NodeAdminAPI, labelSample, mergeExpositions
from robustmq.config import settingsFromMapping
from robustmq.workers import HOME_WORKER, WorkerContext, servedBy, workerSettings

ROOT = Path(__file__).resolve().parents[2]


def _settings() -> object:
    return settingsFromMapping(
        {
            "node": {"id": "n1", "data_dir": "/var/lib/rmq", "workers": 4},
            "limits": {"max_connections": 1000, "connection_rate": 400.0},
            "mqtt": {"sys_interval": 5},
            "listeners": [
                {"protocol": "mqtt", "port": 1883, "max_connections": 800},
                {"protocol": "kafka", "port": 9092},
                {"protocol": "amqp", "port": 5672},
            ],
            "mappings": [{"mqtt": "s/#", "kafka": "s"}],
        }
    )


def test_mqttOnEveryWorkerKafkaAndAmqpOnTheHomeWorker() -> None:
    settings = _settings()
    assert [servedBy(ls) for ls in settings.listeners] == [None, HOME_WORKER, HOME_WORKER]  # type: ignore[attr-defined]


def test_workerSettings() -> None:
    settings = _settings()
    home = workerSettings(settings, WorkerContext(0, 4, "/run/n1", "s3cret", {0: 3, 1: 4, 2: 5}))  # type: ignore[arg-type]
    other = workerSettings(settings, WorkerContext(2, 4, "/run/n1", "s3cret", {0: 3}))  # type: ignore[arg-type]
    assert (home.node.id, other.node.id) == ("n1.w0", "n1.w2")
    assert home.node.roles == other.node.roles == ("broker",)
    # Worker 0 keeps the node's directory (1 -> N workers keeps its data); others their own.
    assert home.node.data_dir == "/var/lib/rmq" and home.storage.data_dir == "/var/lib/rmq/storage"
    assert other.storage.data_dir == "/var/lib/rmq/worker-2/storage"
    assert [ls.protocol for ls in home.listeners] == ["mqtt", "kafka", "amqp"]
    assert [ls.protocol for ls in other.listeners] == ["mqtt"]
    assert home.mappings and not other.mappings
    # Node-wide limits: a share each, plus the headroom the hash needs.
    assert other.limits.max_connections == 263 and other.listeners[0].max_connections == 210
    assert other.limits.connection_rate == 100.0
    assert home.mqtt.sys_interval == 5 and other.mqtt.sys_interval == 0
    assert other.cluster.enabled and other.cluster.advertise == "unix:/run/n1/w2.link"
    assert other.placement.servers == ("unix:/run/n1/placement.sock",)
    assert other.placement.cluster_secret == "s3cret"
    assert other.http.auth == "none" and other.log.file == "-"


def test_contextRoundTrip(tmp_path: Path) -> None:
    context = WorkerContext(1, 2, str(tmp_path), "s", {0: 3, 2: 4})
    path = str(tmp_path / "w1.json")
    context.save(path)
    assert (tmp_path / "w1.json").stat().st_mode & 0o777 == 0o600
    assert WorkerContext.load(path) == context


def test_nodeAdminServesEveryDocumentedRoute() -> None:
    supervisor = types.SimpleNamespace(http=None, placement=None, workers=lambda: [], count=2)
    api = NodeAdminAPI(settingsFromMapping({}), supervisor, None, lambda: None)
    routes = {(r.method, r.path) for r in api.routes()}
    doc = json.loads((ROOT / "src" / "robustmq" / "admin" / "openapi.json").read_text())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


def test_metricsOfWorkersMergedWithAWorkerLabel() -> None:
    assert labelSample('a_total{x="1"} 3.0', 2) == 'a_total{worker="2",x="1"} 3.0'
    assert labelSample("b 1.0", 0) == 'b{worker="0"} 1.0'
    assert labelSample("c{} 1.0", 1) == 'c{worker="1"} 1.0'
    one = "# HELP a A\n# TYPE a gauge\na 1.0\n# HELP b B\n# TYPE b counter\nb_total 2.0\n"
    two = "# HELP a A\n# TYPE a gauge\na 5.0\n"
    merged = mergeExpositions([(0, one), (1, two)])
    assert merged == (
        "# HELP a A\n# TYPE a gauge\n"
        'a{worker="0"} 1.0\na{worker="1"} 5.0\n'
        '# HELP b B\n# TYPE b counter\nb_total{worker="0"} 2.0\n'
    )


def test_workerLogLinesTagged() -> None:
    line = "2026-12-08T00:09:03+0000 [robustmq.x#info] hello"
    assert logs.tagLine(line, "w1") == "2026-12-08T00:09:03+0000 [w1] [robustmq.x#info] hello"
    assert logs.tagLine("\tTraceback (most recent call last):", "w1") == (
        "[w1] \tTraceback (most recent call last):"
    )


def test_workersNeedABrokerOutsideABrokerCluster() -> None:
    import pytest

    from robustmq.config import ConfigError

    with pytest.raises(ConfigError, match="node.workers"):
        settingsFromMapping(
            {
                "node": {"workers": 2},
                "cluster": {"enabled": True, "takeover_timeout": 10.0},
                "placement": {"cluster_secret": "s"},
            }
        )
    with pytest.raises(ConfigError, match="node.workers"):
        settingsFromMapping({"node": {"workers": 0, "roles": ["placement"]}})
    assert settingsFromMapping({"node": {"workers": 0}}).node.workers == 0
