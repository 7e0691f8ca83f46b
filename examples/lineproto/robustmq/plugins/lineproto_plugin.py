"""Registers the example line protocol with RobustMQ (found by twisted.plugin.getPlugins)."""

from lineproto import linePlugin

__all__ = ["linePlugin"]
