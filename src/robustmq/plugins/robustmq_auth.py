"""Registers the built-in authentication plugins."""

from robustmq.core.auth import allowAllPlugin

__all__ = ["allowAllPlugin"]
