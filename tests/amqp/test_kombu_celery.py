"""kombu's producer/consumer and a real Celery worker (subprocess) through the broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import kombu
import pytest

TIMEOUT = 10.0


def test_kombuProducerConsumer(amqpNode, uniq):
    exchange = kombu.Exchange(f"{uniq}.ex", type="topic")
    queue = kombu.Queue(f"{uniq}.q", exchange, routing_key="a.#", auto_delete=True)
    received = []
    with kombu.Connection(amqpNode.url) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish({"n": 1}, exchange=exchange, routing_key="a.b", declare=[queue])
        producer.publish({"n": 2}, exchange=exchange, routing_key="a.c", declare=[queue])

        def onMessage(body, message):
            received.append(body)
            message.ack()

        with conn.Consumer(queue, callbacks=[onMessage], prefetch_count=1):
            for _ in range(20):
                if len(received) == 2:
                    break
                conn.drain_events(timeout=TIMEOUT)
    assert received == [{"n": 1}, {"n": 2}]


def test_kombuSimpleQueueRejectRequeue(amqpNode, uniq):
    with kombu.Connection(amqpNode.url) as conn:
        q = conn.SimpleQueue(uniq)
        q.put("hello")
        m = q.get(timeout=TIMEOUT)
        m.requeue()
        m = q.get(timeout=TIMEOUT)
        assert m.payload == "hello"
        m.ack()
        q.close()


TASKS = """
from celery import Celery

app = Celery("tasks", broker="{broker}", backend="rpc://")
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = "{queue}"

@app.task
def add(x, y):
    return x + y

@app.task(bind=True, max_retries=3)
def flaky(self, marker):
    import os
    count = int(open(marker).read()) if os.path.exists(marker) else 0
    with open(marker, "w") as f:
        f.write(str(count + 1))
    if count < 2:
        raise self.retry(countdown=0.3)
    return count
"""


@pytest.fixture
def celeryApp(amqpNode, uniq, tmp_path: Path):
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(TASKS.format(broker=amqpNode.url, queue=uniq))
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=info",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import tasks  # type: ignore[import-not-found]

        yield tasks, tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tasks", None)
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()


def test_celeryWorker(celeryApp):
    tasks, tmp = celeryApp
    try:
        assert tasks.add.apply_async((2, 3)).get(timeout=30) == 5
        assert tasks.flaky.delay(str(tmp / "marker")).get(timeout=30) == 2
        from celery import group

        result = group(tasks.add.s(i, i) for i in range(5)).apply_async()
        assert result.get(timeout=30) == [0, 2, 4, 6, 8]
    except Exception:
        print((tmp / "worker.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        tasks.app.close()
