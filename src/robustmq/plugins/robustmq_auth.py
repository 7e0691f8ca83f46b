"""Registers the built-in authentication plugins."""

from robustmq.core.auth import allowAllPlugin
from robustmq.core.scram import scramSha256Plugin

__all__ = ["allowAllPlugin", "scramSha256Plugin"]
