"""Errors raised by the shard stores, shared by every adapter.

A missing shard is reported with the builtin L{KeyError}, as the
L{robustmq.interfaces.IShardStore} contract says; the classes here cover
the other ways an operation can fail.
"""

from __future__ import annotations

__all__ = [
    "CorruptRecordError",
    "LimitExceededError",
    "NotCompactedError",
    "ShardFencedError",
    "ShardLimitError",
    "StorageClosedError",
    "StorageError",
    "StorageFailedError",
    "StorageUnavailableError",
]


class StorageError(Exception):
    """Base class of every storage failure other than a missing shard."""


class LimitExceededError(StorageError):
    """An operation would take a bounded collection past its configured bound."""


class ShardLimitError(LimitExceededError):
    """C{createShard} was refused: the store already holds C{max_shards} shards."""


class NotCompactedError(StorageError, ValueError):
    """A keyed operation (upsert, lookup, deleteKey, keys) on a shard that is not compacted."""


class CorruptRecordError(StorageError):
    """A stored record failed its CRC32C check (or its frame cannot be parsed)."""


class StorageClosedError(StorageError):
    """The store is not open (never opened, or already closed)."""


class StorageFailedError(StorageError):
    """
    An earlier write to disk failed, so the store refuses further writes.

    A log whose write failed half-way cannot tell which offsets reached the
    disk; like a Kafka log directory that goes offline, the store stops
    accepting appends until it is reopened (which runs recovery).
    """


class StorageUnavailableError(StorageError):
    """
    The object store did not store a write within the configured time.

    The records it carried are not acknowledged (they may or may not be in
    the bucket: the C{s3} store settles which before its next write to the
    shard); the store keeps working and later writes succeed once the object
    store answers again.
    """


class ShardFencedError(StorageError):
    """
    Another broker took the shard: this store may no longer write to it.

    The C{s3} store's fencing (docs/storage.md): a writer whose conditional
    PUT finds the sequence number taken by a successor stops writing that
    shard for good, so the log never forks.
    """
