"""Wire protocols served by the broker; each one is a plugin (see robustmq.plugins)."""
