"""Registers the built-in MQTT protocol plugin."""

from robustmq.protocols.mqtt import mqttPlugin

__all__ = ["mqttPlugin"]
