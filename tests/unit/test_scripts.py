"""`make test` and `make run` show progress while they install (they printed nothing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_venv_shows_progress(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    dry = subprocess.run(
        ["make", "-n", "-B", "venv", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert "--quiet" not in dry.stdout
    assert "pip install --progress-bar on -e '.[test]'" in dry.stdout
    assert "==> installing RobustMQ and its test dependencies" in dry.stdout


def test_system_deps_show_apt_output(tmp_path: Path) -> None:
    """With the tools missing, apt-get's own progress reaches the terminal."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "id").write_text("#!/bin/sh\necho 0\n")
    (stubs / "apt-get").write_text('#!/bin/sh\necho "apt-get $*"\necho "Setting up stub ..."\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "scripts" / "install-system-deps.sh")],
        env={"PATH": str(stubs)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("==> installing Debian packages: mosquitto-clients")
    assert "apt-get update -q" in lines
    assert any(line.startswith("apt-get install -y -q mosquitto-clients") for line in lines)
    assert "Setting up stub ..." in lines
    assert lines[-1] == "==> Debian packages installed"
