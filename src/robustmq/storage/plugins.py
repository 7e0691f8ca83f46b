"""The built-in shard store plugins, discovered through L{robustmq.plugins}."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IShardStore, IShardStorePlugin

__all__ = ["memoryStorePlugin", "s3StorePlugin", "segmentStorePlugin"]


@implementer(IPlugin, IShardStorePlugin)
class _MemoryStorePlugin:
    """Builds L{robustmq.storage.memory.MemoryShardStore} (C{[storage] backend = "memory"})."""

    name = "memory"

    def build(self, settings: Any, reactor: Any) -> IShardStore:
        """Return an unopened memory store using C{settings.storage}'s bounds."""
        from robustmq.storage.memory import MemoryShardStore

        return MemoryShardStore(settings.storage, clock=reactor)


@implementer(IPlugin, IShardStorePlugin)
class _SegmentStorePlugin:
    """Builds L{robustmq.storage.segment.SegmentShardStore} (C{[storage] backend = "segment"})."""

    name = "segment"

    def build(self, settings: Any, reactor: Any) -> IShardStore:
        """Return an unopened segment store under C{settings.storage.data_dir}."""
        from robustmq.storage.segment import SegmentShardStore

        return SegmentShardStore(settings.storage, reactor)


@implementer(IPlugin, IShardStorePlugin)
class _S3StorePlugin:
    """Builds L{robustmq.storage.s3.S3ShardStore} (C{[storage] backend = "s3"})."""

    name = "s3"

    def build(self, settings: Any, reactor: Any) -> IShardStore:
        """Return an unopened s3 store for C{settings.storage}'s bucket and prefix."""
        from robustmq.storage.s3 import S3ShardStore

        return S3ShardStore(settings.storage, reactor)


memoryStorePlugin = _MemoryStorePlugin()
s3StorePlugin = _S3StorePlugin()
segmentStorePlugin = _SegmentStorePlugin()
