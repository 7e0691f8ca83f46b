"""The open-file limit: raised to the hard limit at start, and what it allows.

Every client connection holds one file descriptor, so a process holds at
most about as many connections as its soft C{RLIMIT_NOFILE} allows.  Every
RobustMQ process (a single-process node, a node's supervisor, each worker)
raises its soft limit to the hard limit at start; the systemd units set the
hard limit (C{LimitNOFILE}).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from robustmq.config import Settings

#: Descriptors kept for what is not a client: listening sockets, links, logs, pipes.
RESERVED = 128


@dataclass(frozen=True)
class FileLimit:
    """The open-file limits after L{raiseFileLimit}, and the connections they leave room for."""

    before: int
    soft: int
    hard: int
    connections: int


def raiseFileLimit(settings: Settings) -> FileLimit:
    """Raise this process's soft open-file limit to its hard limit.

    The connections it leaves room for are the soft limit less the storage's
    open segment files (C{[storage] max_open_files}) and L{RESERVED}.
    """
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit for files; the kernel's ceiling applies.
        target = _kernelMax()
    else:
        target = hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    room = max(0, soft - settings.storage.max_open_files - RESERVED)
    return FileLimit(before, soft, hard, room)


def _kernelMax() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


__all__ = ["RESERVED", "FileLimit", "raiseFileLimit"]
