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
    return p.parse_args(argv)


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
