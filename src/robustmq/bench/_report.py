"""Turning benchmark results into numbers people read and JSON scripts parse."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, TextIO


def cpuModel() -> str:
    """The CPU's model name, for benchmark reports ("?" without /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of a list of latencies in ns, reported in ms."""
    ordered = sorted(latencies_ns)

    def ms(ns: float) -> float:
        return round(ns / 1e6, 4)

    return {
        "min_ms": ms(ordered[0] if ordered else 0),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "p999_ms": ms(percentile(ordered, 0.999)),
        "max_ms": ms(ordered[-1] if ordered else 0),
        "mean_ms": ms(sum(ordered) / len(ordered) if ordered else 0),
    }


def _human(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


_HEADLINES = {
    "throughput": ("msgs_per_sec", "msg/s received"),
    "pub": ("publish_msgs_per_sec", "msg/s published"),
    "sub": ("msgs_per_sec", "msg/s received"),
    "latency": ("p99_ms", "ms p99"),
    "conn": ("kb_per_connection", "KB per idle connection"),
}


def render_text(result: dict[str, Any]) -> str:
    """A short human summary: the headline number first, then every field."""
    mode = result.get("mode", "")
    lines = []
    if mode in _HEADLINES:
        key, unit = _HEADLINES[mode]
        if result.get(key) is not None:
            lines.append(f"{mode}: {_human(result[key])} {unit}")
    width = max((len(k) for k in result), default=0)
    lines += [f"  {key:<{width}}  {_human(value)}" for key, value in result.items()]
    return "\n".join(lines)


def emit(result: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """Write one result, as a JSON object on one line or as text."""
    if as_json:
        out.write(json.dumps(result, sort_keys=False) + "\n")
    else:
        out.write(render_text(result) + "\n")
    out.flush()
