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
