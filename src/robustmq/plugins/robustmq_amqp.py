"""Registers the built-in AMQP 0-9-1 protocol plugin."""

from robustmq.protocols.amqp import amqpPlugin

__all__ = ["amqpPlugin"]
