"""Log output for the node: level filtering and destination from C{[log]}.

twistd builds its log observer after C{makeService} ran, so C{configure}
(called from makeService) stores the settings that L{observer} then uses;
C{robustmq start} passes C{--logger robustmq.logs.observer} to twistd.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)

from robustmq.config import LogSettings

_settings = LogSettings()


def configure(settings: LogSettings) -> None:
    """Remember the log settings for L{observer}."""
    global _settings
    _settings = settings


def observer() -> ILogObserver:
    """A text log observer at the configured level and destination."""
    stream: TextIO
    if _settings.file in ("-", ""):
        stream = sys.stdout
    else:
        stream = open(_settings.file, "a", encoding="utf-8")  # noqa: SIM115
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(_settings.level))
    return FilteringLogObserver(textFileLogObserver(stream), [predicate])
