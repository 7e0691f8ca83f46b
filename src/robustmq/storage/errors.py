"""Errors raised by the shard stores, shared by every adapter.

A missing shard is reported with the builtin L{KeyError}, as the
L{robustmq.interfaces.IShardStore} contract says; the classes here cover
the other ways an operation can fail.  They are defined in
L{robustmq.interfaces} (so the core and the protocols can tell them apart
without importing a store) and re-exported here for the adapters.
"""

from __future__ import annotations

from robustmq.interfaces import (
    CorruptRecordError,
    LimitExceededError,
    NotCompactedError,
    ShardFencedError,
    ShardLimitError,
    StorageClosedError,
    StorageError,
    StorageFailedError,
    StorageFullError,
    StorageUnavailableError,
)

__all__ = [
    "CorruptRecordError",
    "LimitExceededError",
    "NotCompactedError",
    "ShardFencedError",
    "ShardLimitError",
    "StorageClosedError",
    "StorageError",
    "StorageFailedError",
    "StorageFullError",
    "StorageUnavailableError",
]
