"""
Append throughput of the segment store next to the raw speed of the disk.

For 100 B and 1 KiB records under each sync policy, appends batches of
C{--batch} records with C{--inflight} appends outstanding (as a broker
writing produce requests would), bounded by C{--seconds} and C{--max-mb} per
case, and prints a markdown table.  A second table measures the group
commit: C{--small-inflight} one-record appends outstanding over 16 shards
(as many MQTT QoS 1 publishers to persistent sessions make), C{always}
against C{interval}, with how many write batches each fsync round covered.  The disk's sequential write speed is
measured in the same run, on the same file system, with C{dd} (fdatasync at
the end, and O_DIRECT).

    .venv/bin/python bench/storage.py [--dir DIR] [--seconds 10]

With C{--s3} it instead compares the C{s3} store (against a SeaweedFS it
starts on loopback) with the C{segment} store in the same run: append
throughput and ack latency p50/p99 at a few batch sizes, then a Kafka
produce (confluent-kafka, idempotent, C{acks=all}, C{linger.ms=5}) to a node
on each store, throughput and delivery latency p50/p99:

    .venv/bin/python bench/storage.py --s3 [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from robustmq.config import StorageSettings
from robustmq.storage.segment import SegmentShardStore

MiB = 1024 * 1024


def dd(path: str, flag: str) -> float:
    """Run dd writing 256 MiB to C{path}; return bytes per second."""
    out = subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=256", flag],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    os.unlink(path)
    m = re.search(r"(\d+) bytes.*?copied, ([\d.]+) s", out)
    if not m:
        raise RuntimeError(f"cannot parse dd output: {out!r}")
    return int(m.group(1)) / float(m.group(2))


async def appendCase(
    reactor: Any,
    directory: str,
    sync: str,
    size: int,
    batch: int,
    inflight: int,
    seconds: float,
    maxBytes: int,
) -> tuple[int, float, float]:
    """
    Append C{size}-byte records until a bound is hit.

    @return: (records, seconds until the last append was acknowledged,
        seconds until C{close()} returned, i.e. everything fsynced unless
        the policy is C{os})
    """
    settings = StorageSettings(backend="segment", data_dir=directory, sync=sync)
    store = SegmentShardStore(settings, reactor)
    await store.open()
    await store.createShard("bench")
    value = os.urandom(size)
    records = [{"value": value} for _ in range(batch)]
    limit = maxBytes // size
    done = 0
    issued = 0
    start = time.perf_counter()
    deadline = start + seconds
    finished: defer.Deferred[None] = defer.Deferred()
    outstanding = 0

    def issue() -> None:
        nonlocal issued, outstanding
        while outstanding < inflight and issued < limit and time.perf_counter() < deadline:
            issued += batch
            outstanding += 1
            store.append("bench", records).addCallbacks(acked, finished.errback)
        if outstanding == 0 and not finished.called:
            finished.callback(None)

    def acked(offsets: list[int]) -> None:
        nonlocal done, outstanding
        done += len(offsets)
        outstanding -= 1
        issue()

    issue()
    await finished
    elapsed = time.perf_counter() - start
    await store.close()
    return done, elapsed, time.perf_counter() - start


async def smallCase(
    reactor: Any, directory: str, sync: str, inflight: int, seconds: float
) -> tuple[int, float, dict[str, int]]:
    """
    One-record 100 B appends spread over 16 shards, C{inflight} outstanding.

    @return: (records, seconds until the last was acknowledged, the store's counters)
    """
    settings = StorageSettings(backend="segment", data_dir=directory, sync=sync)
    store = SegmentShardStore(settings, reactor)
    await store.open()
    shards = [f"s{i}" for i in range(16)]
    for shard in shards:
        await store.createShard(shard)
    record = [{"value": os.urandom(100)}]
    done = issued = outstanding = 0
    start = time.perf_counter()
    deadline = start + seconds
    finished: defer.Deferred[None] = defer.Deferred()

    def issue() -> None:
        nonlocal issued, outstanding
        while outstanding < inflight and time.perf_counter() < deadline:
            outstanding += 1
            store.append(shards[issued % 16], record).addCallbacks(acked, finished.errback)
            issued += 1
        if outstanding == 0 and not finished.called:
            finished.callback(None)

    def acked(_: Any) -> None:
        nonlocal done, outstanding
        done += 1
        outstanding -= 1
        issue()

    issue()
    await finished
    elapsed = time.perf_counter() - start
    counters = store.statistics()
    await store.close()
    return done, elapsed, counters


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = tempfile.mkdtemp(prefix="robustmq-bench-", dir=args.dir)
    try:
        fdatasync = dd(os.path.join(base, "dd.bin"), "conv=fdatasync")
        direct = dd(os.path.join(base, "dd.bin"), "oflag=direct")
        rows = []
        for size in (100, 1024):
            for sync in ("always", "interval", "os"):
                directory = os.path.join(base, f"{sync}-{size}")
                n, elapsed, closed = await appendCase(
                    reactor,
                    directory,
                    sync,
                    size,
                    args.batch,
                    args.inflight,
                    args.seconds,
                    args.max_mb * MiB,
                )
                shutil.rmtree(directory)
                rate = n / elapsed
                mbs = rate * size / 1e6
                closedMbs = n * size / closed / 1e6
                rows.append(
                    (size, sync, n, elapsed, rate, mbs, mbs * 1e6 / fdatasync * 100, closedMbs)
                )
                print(
                    f"  {size:>5} B {sync:<8} {rate:>12,.0f} rec/s {mbs:8.1f} MB/s", file=sys.stderr
                )
        print(f"Disk sequential write (dd bs=1M count=256), {args.dir or tempfile.gettempdir()}:")
        print()
        print("| dd variant | MB/s |")
        print("| --- | ---: |")
        print(f"| conv=fdatasync | {fdatasync / 1e6:.0f} |")
        print(f"| oflag=direct | {direct / 1e6:.0f} |")
        print()
        print(
            f"Segment store appends: 1 shard, {args.batch} records per append, "
            f"{args.inflight} appends in flight, up to {args.seconds:g} s or {args.max_mb} MiB "
            "per case.  MB/s counts record values (framing adds 35 B per record); 'incl. "
            "close' divides by the time until close() returned, which fsyncs what the "
            "interval policy had not yet (os: nothing)."
        )
        print()
        print(
            "| record | sync | records | seconds | records/s | MB/s | % of dd fdatasync "
            "| MB/s incl. close |"
        )
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size, sync, n, elapsed, rate, mbs, pct, closedMbs in rows:
            print(
                f"| {size} B | {sync} | {n:,} | {elapsed:.2f} | {rate:,.0f} | {mbs:.1f} "
                f"| {pct:.0f}% | {closedMbs:.1f} |"
            )
        print()
        print(
            f"Group commit: one-record 100 B appends over 16 shards, {args.small_inflight} in "
            f"flight, {args.seconds:g} s per case.  An fsync round syncs every file written "
            "since the previous round began; 'batches per fsync round' is how many write "
            "batches (reactor turns) one round acknowledged."
        )
        print()
        print(
            "| sync | records/s | mean ack latency (ms) | fsync rounds | batches per fsync round |"
        )
        print("| --- | ---: | ---: | ---: | ---: |")
        for sync in ("interval", "always"):
            directory = os.path.join(base, f"small-{sync}")
            n, elapsed, counters = await smallCase(
                reactor, directory, sync, args.small_inflight, args.seconds
            )
            shutil.rmtree(directory)
            rounds = counters.get("fsync_rounds", 0)
            perRound = counters.get("fsync_batches", 0) / rounds if rounds else 0
            latency = args.small_inflight / (n / elapsed) * 1000 if n else 0
            print(
                f"| {sync} | {n / elapsed:,.0f} | {latency:.1f} | {rounds:,} | {perRound:.1f} |"
                if sync == "always"
                else f"| {sync} | {n / elapsed:,.0f} | {latency:.1f} | (every 200 ms) | n/a |"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def latencyCase(
    reactor: Any, store: Any, size: int, batch: int, inflight: int, seconds: float
) -> tuple[int, float, list[float]]:
    """Append C{batch} records of C{size} bytes, C{inflight} appends outstanding, for
    C{seconds}; return (records, elapsed, ack latencies in seconds)."""
    shard = f"bench-{batch}-{size}"
    await store.createShard(shard)
    value = os.urandom(size)
    records = [{"value": value} for _ in range(batch)]
    latencies: list[float] = []
    done = 0
    outstanding = 0
    start = time.perf_counter()
    deadline = start + seconds
    finished: defer.Deferred[None] = defer.Deferred()

    def issue() -> None:
        nonlocal outstanding
        while outstanding < inflight and time.perf_counter() < deadline:
            outstanding += 1
            t0 = time.perf_counter()
            store.append(shard, records).addCallbacks(acked, finished.errback, (t0,))
        if outstanding == 0 and not finished.called:
            finished.callback(None)

    def acked(offsets: list[int], t0: float) -> None:
        nonlocal done, outstanding
        latencies.append(time.perf_counter() - t0)
        done += len(offsets)
        outstanding -= 1
        issue()

    issue()
    await finished
    return done, time.perf_counter() - start, latencies


def kafkaProduce(
    bootstrap: str, seconds: float, size: int, partitions: int = 1, rate: float = 0.0
) -> tuple[int, float, list[float]]:
    """Produce C{size}-byte records (idempotent, acks=all, linger.ms=5) for C{seconds} to a
    new topic of C{partitions}: as fast as possible, or at C{rate} records/s; return
    (records acknowledged, elapsed, delivery latencies in seconds)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(20)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 200_000,
        }
    )
    p.list_topics(topic, timeout=20)
    value = os.urandom(size)
    for partition in range(partitions):  # warm up: producer id, leaders, connections
        p.produce(topic, value=value, partition=partition)
    p.flush(20)
    latencies: list[float] = []
    errors: list[Any] = []

    def report(err: Any, msg: Any, t0: float) -> None:
        if err:
            errors.append(err)
        else:
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    deadline = start + seconds
    sent = 0
    while sent < 5_000_000:
        now = time.perf_counter()
        if now >= deadline:
            break
        if rate and sent >= (now - start) * rate:
            p.poll(0.001)
            continue
        try:
            p.produce(topic, value=value, on_delivery=lambda e, m, t0=now: report(e, m, t0))
            sent += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
    p.flush(60)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} produce errors, first: {errors[0]}")
    return len(latencies), elapsed, latencies


async def compareS3(reactor: Any, args: argparse.Namespace) -> None:
    """The s3 store next to the segment store: appends, then Kafka produce through a node."""
    from robustmq.storage.s3 import S3ShardStore
    from robustmq.testing.seaweedfs import SeaweedFSProcess

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "kafka"))
    from kafkanode import KafkaNodeProcess

    weed = SeaweedFSProcess().start()
    os.environ.update(weed.credentials())
    base = tempfile.mkdtemp(prefix="robustmq-bench-", dir=args.dir)
    size = 1024
    try:
        rows = []
        for name in ("segment", "s3"):
            if name == "segment":
                settings = StorageSettings(
                    backend="segment", data_dir=os.path.join(base, "seg"), sync="interval"
                )
                store: Any = SegmentShardStore(settings, reactor)
            else:
                settings = StorageSettings(
                    backend="s3",
                    s3_endpoint=weed.endpoint,
                    s3_bucket="bench",
                    s3_prefix=f"b{os.getpid()}/",
                )
                store = S3ShardStore(settings, reactor)
            await store.open()
            for batch in (1, 10, 100, 1000):
                n, elapsed, lat = await latencyCase(
                    reactor, store, size, batch, args.inflight, args.seconds
                )
                rows.append((name, batch, n, elapsed, lat))
                print(f"  {name} batch {batch}: {n / elapsed:,.0f} rec/s", file=sys.stderr)
            await store.close()
        print(
            f"Store appends: 1 KiB records, {args.inflight} appends in flight, "
            f"{args.seconds:g} s per case; segment with sync = interval, s3 against SeaweedFS "
            "(`weed mini`) on loopback with the default s3_flush_interval_ms = 5."
        )
        print()
        print("| store | records/append | records/s | MB/s | ack p50 ms | ack p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, batch, n, elapsed, lat in rows:
            print(
                f"| {name} | {batch} | {n / elapsed:,.0f} | {n * size / elapsed / 1e6:.1f} "
                f"| {_percentile(lat, 0.5) * 1000:.1f} | {_percentile(lat, 0.99) * 1000:.1f} |"
            )
        print()
        kafkaRows = []
        for name in ("segment", "s3"):
            if name == "segment":
                extra = '[storage]\nbackend = "segment"\nsync = "interval"\n'
            else:
                extra = (
                    f'[storage]\nbackend = "s3"\ns3_endpoint = "{weed.endpoint}"\n'
                    f's3_bucket = "bench"\ns3_prefix = "k{os.getpid()}/"\n'
                )
            node = KafkaNodeProcess(extra, logLevel="info")  # debug lines cost time
            node.start()
            try:
                for partitions in (1, 4):
                    n, elapsed, lat = await _inThread(
                        reactor, kafkaProduce, node.bootstrap, args.seconds, size, partitions
                    )
                    # ack latency at a steady load: 5,000 records/s
                    _, _, steady = await _inThread(
                        reactor, kafkaProduce, node.bootstrap, args.seconds, size, partitions, 5000
                    )
                    kafkaRows.append((name, partitions, n, elapsed, lat, steady))
                    print(
                        f"  kafka on {name}, {partitions} partition(s): {n / elapsed:,.0f} rec/s",
                        file=sys.stderr,
                    )
            finally:
                node.cleanup()
        print(
            "Kafka produce through a node: confluent-kafka, 1 KiB records, linger.ms = 5, "
            f"acks = all, idempotent, {args.seconds:g} s per case, as fast as it goes "
            "(throughput; p50/p99 there include the producer's own queue) and then at a "
            "steady 5,000 records/s (ack latency of a produce that does not queue)."
        )
        print()
        print(
            "| store | partitions | records/s | MB/s | % of segment | saturated p50/p99 ms "
            "| at 5,000/s p50 ms | at 5,000/s p99 ms |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = {parts: n / el for name, parts, n, el, _, _ in kafkaRows if name == "segment"}
        for name, partitions, n, elapsed, lat, steady in kafkaRows:
            rate = n / elapsed
            print(
                f"| {name} | {partitions} | {rate:,.0f} | {rate * size / 1e6:.1f} "
                f"| {rate / base[partitions] * 100:.0f}% "
                f"| {_percentile(lat, 0.5) * 1000:.0f} / {_percentile(lat, 0.99) * 1000:.0f} "
                f"| {_percentile(steady, 0.5) * 1000:.1f} | {_percentile(steady, 0.99) * 1000:.1f} |"
            )
    finally:
        weed.cleanup()
        shutil.rmtree(base, ignore_errors=True)


async def _inThread(reactor: Any, f: Any, *args: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *args)


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="directory on the disk to test (default: $TMPDIR)")
    p.add_argument("--seconds", type=float, default=10.0, help="time bound per case")
    p.add_argument("--max-mb", type=int, default=1024, help="data bound per case (MiB)")
    p.add_argument("--batch", type=int, default=500, help="records per append call")
    p.add_argument("--inflight", type=int, default=4, help="append calls outstanding")
    p.add_argument(
        "--small-inflight",
        type=int,
        default=1000,
        help="one-record appends outstanding in the group-commit table",
    )
    p.add_argument(
        "--s3", action="store_true", help="compare the s3 store with the segment store instead"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    run = compareS3 if options.s3 else main
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))
