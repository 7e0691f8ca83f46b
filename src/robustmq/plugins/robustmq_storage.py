"""Registers the built-in shard store plugins (memory, segment, s3)."""

from robustmq.storage.plugins import memoryStorePlugin, s3StorePlugin, segmentStorePlugin

__all__ = ["memoryStorePlugin", "s3StorePlugin", "segmentStorePlugin"]
