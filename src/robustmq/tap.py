"""The twistd plugin's options and service maker: C{twistd -n robustmq --config FILE}."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from robustmq import logs
from robustmq.config import ConfigError, Settings, loadSettings, secretValues
from robustmq.service import makeService as _makeService

log = Logger(namespace="robustmq.node")


class Options(usage.Options):
    """Command-line options of C{twistd robustmq}."""

    optParameters = [
        ["config", "c", None, "Path of the TOML config file (default: built-in defaults)."],
        [
            "worker",
            None,
            None,
            "Run as one of a node's worker processes, described by this file "
            "(set by the node itself; see docs/workers.md).",
        ],
    ]

    settings: Settings

    def postOptions(self) -> None:
        try:
            self.settings = loadSettings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


def makeService(options: Options) -> IService:
    """Build the node's services from validated options."""
    from twisted.internet import reactor

    from robustmq.workers import (
        WorkerContext,
        raiseFileLimit,
        resolvedWorkers,
        tuneGarbageCollector,
    )

    settings = options.settings
    logs.configure(settings.log, secretValues(settings))
    worker = WorkerContext.load(options["worker"]) if options["worker"] else None
    limit = raiseFileLimit(settings)
    tuneGarbageCollector(reactor)
    count = 1 if worker is not None else resolvedWorkers(settings)
    log.info(
        "open files: soft limit {soft} (was {before}, hard limit {hard}): room for about "
        "{n} connections in this process{node}",
        soft=limit.soft,
        before=limit.before,
        hard=limit.hard,
        n=limit.connections,
        node=f"; {count} workers: about {count * limit.connections} for the node"
        if count > 1
        else "",
    )
    try:
        return _makeService(settings, configPath=options["config"], worker=worker)
    except ConfigError as e:
        raise SystemExit(f"configuration error: {e}") from None
