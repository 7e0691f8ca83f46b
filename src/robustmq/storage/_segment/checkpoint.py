"""
The recovery checkpoint: what the store last knew to be durable, per shard.

C{<data_dir>/checkpoint.json} holds, for every shard, one past its last
durable offset, its start offset and its config::

    {"version": 1, "shards": {"<name>": {"next": 4711, "start": 0, "config": {...}}}}

It is replaced atomically every few seconds (after the fsync that made those
offsets durable, under the C{interval} policy), when a shard is deleted, and
at a clean close.  Recovery compares each shard with it: a shard that comes
back shorter than its checkpoint lost acknowledged records (an emptied or
truncated segment file), and is logged and counted as such; a shard whose
C{shard.json} is unreadable gets its config back from here.  Kafka keeps a
recovery-point checkpoint per log directory for the same reasons.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["CHECKPOINT_FILE", "checkpointBytes", "readCheckpoint"]

CHECKPOINT_FILE = "checkpoint.json"


def checkpointBytes(shards: dict[str, dict[str, Any]]) -> bytes:
    """Serialize a checkpoint: shard name -> {"next", "start", "config"}."""
    return json.dumps({"version": 1, "shards": shards}, sort_keys=True).encode("utf-8")


def readCheckpoint(root: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """
    Read C{<root>/checkpoint.json}.

    @return: C{(shards, problem)}: the entries by shard name (empty when
        there is no usable file), and why the file was not usable (None when
        it was, or when there is none: a new data directory).
    """
    path = os.path.join(root, CHECKPOINT_FILE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as e:
        return {}, f"unreadable ({e})"
    shards = doc.get("shards") if isinstance(doc, dict) else None
    if not isinstance(shards, dict):
        return {}, "not a checkpoint document"
    out: dict[str, dict[str, Any]] = {}
    for name, entry in shards.items():
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("next"), int)
            and isinstance(entry.get("start"), int)
            and isinstance(entry.get("config"), dict)
        ):
            out[name] = entry
    return out, None
