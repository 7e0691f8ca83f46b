"""The twistd plugin's options and service maker: C{twistd -n robustmq --config FILE}."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from robustmq import logs
from robustmq.config import ConfigError, Settings, loadSettings, secretValues
from robustmq.service import makeService as _makeService


class Options(usage.Options):
    """Command-line options of C{twistd robustmq}."""

    optParameters = [
        ["config", "c", None, "Path of the TOML config file (default: built-in defaults)."],
    ]

    settings: Settings

    def postOptions(self) -> None:
        try:
            self.settings = loadSettings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


def makeService(options: Options) -> IService:
    """Build the node's services from validated options."""
    logs.configure(options.settings.log, secretValues(options.settings))
    try:
        return _makeService(options.settings)
    except ConfigError as e:
        raise SystemExit(f"configuration error: {e}") from None
