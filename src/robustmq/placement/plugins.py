"""The built-in placement backend plugins, discovered through L{robustmq.plugins}."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from robustmq.interfaces import IPlacementBackend, IPlacementBackendPlugin


@implementer(IPlugin, IPlacementBackendPlugin)
class _EmbeddedPlugin:
    """Builds L{robustmq.placement.embedded.EmbeddedBackend} (C{backend = "embedded"})."""

    name = "embedded"

    def build(self, settings: Any, reactor: Any) -> IPlacementBackend:
        from robustmq.placement.embedded import EmbeddedBackend
        from robustmq.placement.server import embeddedDirectory

        return EmbeddedBackend(
            embeddedDirectory(settings), reactor, settings.placement.embedded_max_pending
        )


@implementer(IPlugin, IPlacementBackendPlugin)
class _EtcdPlugin:
    """Builds L{robustmq.placement.etcd.EtcdBackend} (C{backend = "etcd"})."""

    name = "etcd"

    def build(self, settings: Any, reactor: Any) -> IPlacementBackend:
        from robustmq.placement.etcd import EtcdBackend

        placement = settings.placement
        return EtcdBackend(
            placement.etcd_endpoints, reactor, placement.etcd_prefix, placement.etcd_timeout
        )


embeddedPlacementPlugin = _EmbeddedPlugin()
etcdPlacementPlugin = _EtcdPlugin()

__all__ = ["embeddedPlacementPlugin", "etcdPlacementPlugin"]
