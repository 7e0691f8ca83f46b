"""Registers the built-in shard store plugins (memory, segment)."""

from robustmq.storage.plugins import memoryStorePlugin, segmentStorePlugin

__all__ = ["memoryStorePlugin", "segmentStorePlugin"]
