"""CPU time and resident memory of a process, read from C{/proc} (Linux)."""

from __future__ import annotations

import os


def cpuSeconds(pid: int) -> float | None:
    """User + system CPU seconds process C{pid} has used (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rssBytes(pid: int) -> int | None:
    """Process C{pid}'s resident set size in bytes (C{VmRSS}), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


__all__ = ["cpuSeconds", "rssBytes"]
