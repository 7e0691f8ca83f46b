"""Topic rewrite rules and auto-subscriptions from config (EMQX-style)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from robustmq.core.topics import topicMatches


def expand(template: str, clientId: str, username: str | None) -> str:
    """Fill C{${clientid}} and C{${username}} in a topic template."""
    return template.replace("${clientid}", clientId).replace("${username}", username or "")


class TopicRewriter:
    """Applies the first matching rule of C{[[mqtt.rewrite]]} to a topic or filter.

    A rule applies when its C{action} covers the operation (C{publish},
    C{subscribe} or C{all}), its C{source_topic} filter matches, and its
    regular expression C{re} matches; C{dest_topic} may use C{$1}..C{$9},
    C{${clientid}} and C{${username}}.
    """

    def __init__(self, rules: Sequence[Any]) -> None:
        self._rules = [(r.action, r.source_topic, re.compile(r.re), r.dest_topic) for r in rules]
        #: False when there are no rules (a plain attribute: read on every PUBLISH)
        self.active = bool(self._rules)

    def __bool__(self) -> bool:
        return self.active

    def rewrite(self, topic: str, action: str, clientId: str, username: str | None) -> str:
        """The rewritten topic, or C{topic} unchanged."""
        for ruleAction, source, pattern, dest in self._rules:
            if ruleAction not in ("all", action):
                continue
            if not (topicMatches(source, topic) or source == topic):
                continue
            m = pattern.match(topic)
            if m is None:
                continue
            out = dest
            for i, group in enumerate(m.groups(), start=1):
                out = out.replace(f"${i}", group or "")
            return expand(out, clientId, username)
        return topic
