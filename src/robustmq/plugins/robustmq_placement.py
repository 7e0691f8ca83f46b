"""Registers the built-in placement backend plugins (embedded, etcd)."""

from robustmq.placement.plugins import embeddedPlacementPlugin, etcdPlacementPlugin

__all__ = ["embeddedPlacementPlugin", "etcdPlacementPlugin"]
