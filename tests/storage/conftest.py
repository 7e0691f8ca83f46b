"""Run storage tests in a per-test temporary directory, so trial's C{mktemp()}
paths (relative to the working directory) never land in the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _inTemporaryDirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
