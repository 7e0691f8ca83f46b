"""Idle connection cost: open N MQTT sessions, read the broker's RSS before and after.

Connections are opened without blocking, a bounded window of handshakes at a
time (so the broker's listen backlog never overflows into SYN retries), by
several processes when N is more than one process may hold open.  Every
session is clean, has its own client id and a 60 s keepalive; sessions are
held only a short while, well inside the keepalive, unless ``hold`` asks
for longer, in which case each gets a PINGREQ every half keepalive.
"""

from __future__ import annotations

import errno
import multiprocessing.synchronize
import resource
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _mqtt_wire as wire
from ._client import BenchError, check_loopback
from ._workers import WorkerGroup, split

# The per-process open-file limit here is 20,000; keep well below it.
DEFAULT_PER_PROCESS = 5000
FD_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One idle-connection run."""

    host: str
    port: int
    connections: int
    pid: int | None
    per_process: int = DEFAULT_PER_PROCESS
    #: more processes whose RSS is added to ``pid``'s (a node's worker processes)
    more_pids: tuple[int, ...] = ()
    #: local addresses the generator processes connect from, in turn (127.0.0.x):
    #: each address has its own ~28,000 ephemeral ports towards one broker port
    sources: tuple[str, ...] = ()
    window: int = 256
    keepalive: int = 60
    settle: float = 1.0
    hold: float = 0.0
    duration: float = 120.0
    client_prefix: str = "bench-conn"


def read_rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB, from ``/proc/PID/status``."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise BenchError(f"cannot read the RSS of pid {pid}: {exc}") from exc
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-file limit toward its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_HEADROOM
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < want:
        raise BenchError(f"{needed} connections need {want} open files, the hard limit is {hard}")
    return soft


def open_idle(spec: ConnSpec, indices: range, source: str = "") -> list[socket.socket]:
    """Open one session per index, at most ``spec.window`` handshakes in flight,
    from local address ``source`` (empty: the kernel's choice)."""
    raise_fd_limit(len(indices))
    deadline = time.monotonic() + spec.duration
    address = (spec.host, spec.port)
    selector = selectors.DefaultSelector()
    todo = iter(indices)
    pending = 0
    left = len(indices)
    opened: list[socket.socket] = []
    try:
        while left:
            while pending < spec.window and pending < left:
                index = next(todo, None)
                if index is None:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if source:
                    # Any port of this address: IP_BIND_ADDRESS_NO_PORT lets the kernel pick
                    # it at connect time, per destination, instead of one port per bind.
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((source, 0))
                sock.setblocking(False)
                err = sock.connect_ex(address)
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    raise BenchError(f"connect to {address}: {errno.errorcode.get(err, err)}")
                hello = wire.connect(f"{spec.client_prefix}-{index}", spec.keepalive)
                selector.register(sock, selectors.EVENT_WRITE, [hello, b""])
                pending += 1
            if time.monotonic() >= deadline:
                raise BenchError(f"timed out with {len(opened)} of {len(indices)} connections open")
            for key, _ in selector.select(timeout=0.5):
                sock, state = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                if state[0]:  # connected: send CONNECT, then wait for CONNACK
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"connect to {address}: {errno.errorcode.get(err, err)}")
                    sock.send(state[0])  # a few dozen bytes into an empty buffer
                    state[0] = b""
                    selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                chunk = sock.recv(4 - len(state[1]))
                if not chunk:
                    raise BenchError("the broker closed a connection during the handshake")
                state[1] += chunk
                if len(state[1]) < 4:
                    continue
                if state[1][0] != wire.CONNACK or state[1][3] != 0:
                    raise BenchError(f"connection refused: CONNACK {state[1].hex()}")
                selector.unregister(sock)
                opened.append(sock)
                pending -= 1
                left -= 1
    except BaseException:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        for sock in opened:
            sock.close()
        raise
    finally:
        selector.close()
    return opened


def _rss(pids: list[int]) -> int | None:
    """The resident sets of ``pids`` added up, in KiB (None without pids)."""
    return sum(read_rss_kb(pid) for pid in pids) if pids else None


def hold_idle(socks: list[socket.socket], until: Callable[[float], bool], keepalive: int) -> None:
    """Keep sessions open until ``until(timeout)`` is true, pinging every half keepalive."""
    while not until(keepalive / 2):
        for sock in socks:
            try:
                sock.send(wire.PINGREQ)
            except OSError:
                pass
            _discard_pending(sock)


def _discard_pending(sock: socket.socket) -> None:
    try:
        sock.recv(4096, socket.MSG_DONTWAIT)
    except OSError:
        pass


def close_all(socks: list[socket.socket]) -> None:
    """DISCONNECT and close every session."""
    for sock in socks:
        try:
            sock.send(wire.DISCONNECT)
        except OSError:
            pass
        sock.close()


#: Linux's IP_BIND_ADDRESS_NO_PORT (not in Python's socket module before 3.12).
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _job(spec: ConnSpec, indices: range, source: str) -> Callable[..., dict[str, Any]]:
    def job(
        ready: Callable[[], None], release: multiprocessing.synchronize.Event
    ) -> dict[str, Any]:
        started = time.perf_counter()
        socks = open_idle(spec, indices, source)
        seconds = time.perf_counter() - started
        try:
            ready()
            hold_idle(socks, release.wait, spec.keepalive)
        finally:
            close_all(socks)
        return {"opened": len(socks), "seconds": seconds}

    return job


def run(spec: ConnSpec) -> dict[str, Any]:
    """Open ``spec.connections`` idle sessions and report the broker's memory per session."""
    check_loopback(spec.host)
    if spec.connections < 1:
        raise BenchError("--connections must be at least 1")
    per_process = max(1, spec.per_process)
    parts = -(-spec.connections // per_process)
    pids = ([spec.pid] if spec.pid else []) + list(spec.more_pids)
    for source in spec.sources:
        check_loopback(source)
    rss_before = _rss(pids)
    group = WorkerGroup()
    started = time.perf_counter()
    try:
        names = []
        for n, indices in enumerate(split(spec.connections, parts)):
            names.append(f"connections-{n}")
            source = spec.sources[n % len(spec.sources)] if spec.sources else ""
            group.start(names[-1], _job(spec, indices, source))
        group.wait_ready(names, spec.duration + 10.0)
        open_seconds = time.perf_counter() - started
        time.sleep(spec.settle)
        rss_after = _rss(pids)
        by_process = {pid: read_rss_kb(pid) for pid in pids}
        if spec.hold:
            time.sleep(spec.hold)
        group.release()
        done = group.wait_done(30.0)
    finally:
        group.stop()
    opened = sum(d["opened"] for d in done.values())
    result: dict[str, Any] = {
        "connections": opened,
        "processes": parts,
        "open_seconds": round(open_seconds, 3),
        "connects_per_sec": round(opened / open_seconds, 1) if open_seconds else 0.0,
        "pid": spec.pid,
        "pids": pids,
        "rss_by_process_kb": by_process,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "kb_per_connection": None,
    }
    if rss_before is not None and rss_after is not None:
        result["kb_per_connection"] = round((rss_after - rss_before) / opened, 3)
    return result
