"""The Celery example of docs/amqp.md, run as written: its tasks.py (the broker URL pointed
at a test node's port), its worker command and its call, which prints the task's result
from the rpc:// result backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "amqp.md").read_text()
    section = text.split("\n## Celery\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def test_celeryExampleRunsAsDocumented(amqpNode, tmp_path: Path) -> None:
    (tasks,) = _blocks("python")
    assert 'broker="amqp://guest:guest@localhost:5672//"' in tasks
    assert 'backend="rpc://"' in tasks
    (tmp_path / "tasks.py").write_text(
        tasks.replace("localhost:5672", f"127.0.0.1:{amqpNode.amqpPort}")
    )
    (commands,) = _blocks("sh")
    worker, call = [line.split("#")[0].strip() for line in commands.strip().splitlines()]
    assert worker.endswith(" &")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["sh", "-c", f"exec {worker.removesuffix('&').strip()}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in (tmp_path / "worker.log").read_bytes():
            assert process.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        result = subprocess.run(
            ["sh", "-c", call.replace("python3 ", f"{sys.executable} ", 1)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "5"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
