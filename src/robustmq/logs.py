"""Log output for the node: level filtering and destination from C{[log]}.

twistd builds its log observer after C{makeService} ran, so C{configure}
(called from makeService) stores the settings that L{observer} then uses;
C{robustmq start} passes C{--logger robustmq.logs.observer} to twistd.

The observer also scrubs the configured secrets (C{robustmq.config.secretValues})
from every line it writes, as a last line of defence: no code logs them.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from robustmq.config import MASK, LogSettings

_settings = LogSettings()
_secrets: list[str] = []


def configure(settings: LogSettings, secrets: list[str] | None = None) -> None:
    """Remember the log settings (and the secret values to scrub) for L{observer}."""
    global _settings, _secrets
    _settings = settings
    _secrets = [s for s in (secrets or []) if len(s) >= 3]


@implementer(ILogObserver)
class SecretScrubber:
    """Passes events on with every configured secret value replaced by the mask."""

    def __init__(self, observer: ILogObserver, secrets: list[str]) -> None:
        self.observer = observer
        self.secrets = secrets

    def __call__(self, event: dict[str, Any]) -> None:
        if self.secrets:
            text = formatEvent(event)
            if any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, MASK)
                event = {k: v for k, v in event.items() if k != "log_failure"}
                event["log_format"] = text.replace("{", "{{").replace("}", "}}")
        self.observer(event)


def observer() -> ILogObserver:
    """A text log observer at the configured level and destination."""
    stream: TextIO
    if _settings.file in ("-", ""):
        stream = sys.stdout
    else:
        stream = open(_settings.file, "a", encoding="utf-8")  # noqa: SIM115
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(_settings.level))
    return FilteringLogObserver(
        SecretScrubber(textFileLogObserver(stream), _secrets), [predicate]
    )
