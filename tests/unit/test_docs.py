"""The shipped config and the reference document cover every key."""

from __future__ import annotations

import tomllib
from pathlib import Path

from robustmq.config import describeDefaults

ROOT = Path(__file__).resolve().parents[2]


def test_everyKeyDocumentedAndShipped():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    shipped = tomllib.loads((ROOT / "etc" / "robustmq.toml").read_text())
    for section, keys in describeDefaults().items():
        assert f"`[{section}]`" in reference or f"`[[{section}]]`" in reference, section
        if section in ("listeners", "mappings"):
            keys = keys[0]
        for key in keys:
            assert f"| `{key}` |" in reference, (
                f"{section}.{key} missing from docs/configuration.md"
            )
            if section not in ("listeners", "mappings"):
                assert key in shipped.get(section, {}) or section in ("placement",), (
                    f"{section}.{key} missing from etc/robustmq.toml"
                )


def test_everyAPIPathDocumented():
    """Every path of the OpenAPI document appears in docs/operations.md."""
    import json

    operations = (ROOT / "docs" / "operations.md").read_text()
    openapi = json.loads((ROOT / "src" / "robustmq" / "admin" / "openapi.json").read_text())
    missing = [path for path in openapi["paths"] if path not in operations]
    assert missing == [], f"paths of openapi.json missing from docs/operations.md: {missing}"


def test_everyCtlCommandDocumented():
    """Every `robustmq ctl` command, and each of its actions, is in docs/operations.md."""
    import argparse

    from robustmq.ctl import buildParser

    operations = (ROOT / "docs" / "operations.md").read_text()
    parser = buildParser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in commands.choices.items():
        if f"| `{name}` |" not in operations or f"robustmq ctl {name}" not in operations:
            missing.append(name)
        for action in sub._actions:
            if action.dest in ("action", "what") and action.choices:
                for choice in action.choices:
                    if f"{choice}" not in operations.split(f"| `{name}` |", 1)[-1].split("\n")[0]:
                        missing.append(f"{name} {choice}")
    assert missing == [], f"ctl commands missing from docs/operations.md: {missing}"


def test_systemdRecipeInstallsTheProductionConfig():
    """The README's systemd recipe starts from etc/robustmq.production.toml (docs/security.md),
    not the developer default that lets anonymous clients in from loopback."""
    from robustmq.config import loadSettings

    readme = (ROOT / "README.md").read_text()
    recipe = readme.split("### Running under systemd", 1)[1].split("```sh", 1)[1].split("```")[0]
    assert "etc/robustmq.production.toml /etc/robustmq/robustmq.toml" in recipe
    assert "etc/robustmq.toml" not in recipe
    assert "ROBUSTMQ_HTTP__TOKEN" in recipe and "/etc/robustmq/robustmq.env" in recipe
    unit = (ROOT / "etc" / "systemd" / "robustmq.service").read_text()
    assert "EnvironmentFile=-/etc/robustmq/robustmq.env" in unit
    assert "LogsDirectory=robustmq" in unit  # the production config logs to /var/log/robustmq
    settings = loadSettings(
        str(ROOT / "etc" / "robustmq.production.toml"), {"ROBUSTMQ_HTTP__TOKEN": "t"}
    )
    assert settings.auth.allow_anonymous == "off"
    assert settings.log.file.startswith("/var/log/robustmq/")
