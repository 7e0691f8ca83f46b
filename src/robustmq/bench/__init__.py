"""``robustmq bench``: a load generator that measures MQTT brokers over loopback.

Subcommands: ``pub``, ``sub``, ``throughput``, ``latency`` and ``conn``; see
``bench/README.md`` and ``docs/performance.md``.  The ``robustmq`` command
calls :func:`main` with the arguments that follow ``bench``.
"""

from ._cli import main

__all__ = ["main"]
