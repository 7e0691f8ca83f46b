"""Log output for the node: level filtering and destination from C{[log]}.

twistd builds its log observer after C{makeService} ran, so C{configure}
(called from makeService) stores the settings that L{observer} then uses;
C{robustmq start} passes C{--logger robustmq.logs.observer} to twistd.

A node with worker processes has one log stream: each worker logs to its
standard output, and the node writes every line it reads there to its own
destination with the worker's tag after the timestamp (L{relay}).

The observer also scrubs the configured secrets (C{robustmq.config.secretValues})
from every line it writes, as a last line of defence: no code logs them.
"""

from __future__ import annotations

import re
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
#: Where the observer writes (relayed worker lines go to the same place).
_stream: TextIO | None = None
#: A log line's leading timestamp (twistd's classic text format).
_STAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\S+) ")
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
    global _stream
    stream: TextIO
    if _settings.file in ("-", ""):
        stream = sys.stdout
    else:
        stream = open(_settings.file, "a", encoding="utf-8")  # noqa: SIM115
    _stream = stream
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(_settings.level))
    return FilteringLogObserver(SecretScrubber(textFileLogObserver(stream), _secrets), [predicate])


def tagLine(line: str, tag: str) -> str:
    """C{line} with C{[tag]} after its timestamp, or in front of it if it has none
    (a traceback's continuation lines, a worker's own output on stderr)."""
    stamped = _STAMPED.match(line)
    if stamped is None:
        return f"[{tag}] {line}"
    return f"{stamped.group(1)} [{tag}] {line[stamped.end() :]}"


def relay(line: str, tag: str) -> None:
    """Write a line a worker logged, tagged, where this process logs (its standard
    output when twistd runs with its own logger, whose observer we do not know)."""
    stream = _stream or sys.__stdout__
    try:
        stream.write(tagLine(line, tag) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # the log destination is gone (closed at exit): nothing to do
