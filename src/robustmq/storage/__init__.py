"""
Shard stores: the L{robustmq.interfaces.IShardStore} adapters.

  - C{memory} (L{robustmq.storage.memory.MemoryShardStore}): in-process, for
    tests and transient data.
  - C{segment} (L{robustmq.storage.segment.SegmentShardStore}): a crash-safe
    local log of CRC-framed records in segment files (docs/storage.md).
  - C{s3} (L{robustmq.storage.s3.S3ShardStore}): shards as objects in an
    S3-compatible bucket, one fenced writer per shard (docs/storage.md).

Both are found by the broker as plugins (L{robustmq.storage.plugins}); this
package never imports the broker core or the protocols.
"""

from robustmq.storage.errors import (
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
