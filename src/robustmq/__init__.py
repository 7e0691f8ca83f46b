"""RobustMQ: a converged message broker on Twisted (MQTT, Kafka, AMQP)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
