"""twistd plugin: `twistd -n robustmq --config etc/robustmq.toml`."""

from twisted.application.service import ServiceMaker

robustmq = ServiceMaker(
    "RobustMQ",
    "robustmq.tap",
    "A converged message broker (MQTT, Kafka, AMQP) on Twisted.",
    "robustmq",
)
