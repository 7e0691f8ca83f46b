"""Registers the built-in Kafka protocol plugin."""

from robustmq.protocols.kafka import kafkaPlugin

__all__ = ["kafkaPlugin"]
