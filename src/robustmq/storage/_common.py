"""Helpers shared by the shard store adapters: per-shard config and settings defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustmq.config import StorageSettings

__all__ = ["defaultSettings", "normalizeShardConfig", "requireBytes"]


def defaultSettings() -> StorageSettings:
    """The node's default storage settings (used when a store is built without any)."""
    from robustmq.config import StorageSettings

    return StorageSettings()


def _nonNegativeInt(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"shard config {name!r} must be a non-negative integer, got {value!r}")
    return value


def normalizeShardConfig(
    config: Mapping[str, Any] | None, settings: StorageSettings, extra: Mapping[str, int] = {}
) -> dict[str, Any]:
    """
    Validate a per-shard config and fill in the store's defaults.

    Known keys: C{compacted} (bool), C{retention_ms} and C{retention_bytes}
    (non-negative ints, 0 = unbounded, defaulting to the store settings), and
    the integer keys of C{extra} with their defaults.  Other keys are kept as
    given, for layers above that attach their own metadata.

    @raise ValueError: a known key has a bad value.
    """
    given = dict(config or {})
    out: dict[str, Any] = {}
    compacted = given.pop("compacted", False)
    if not isinstance(compacted, bool):
        raise ValueError(f"shard config 'compacted' must be a boolean, got {compacted!r}")
    out["compacted"] = compacted
    out["retention_ms"] = _nonNegativeInt(
        "retention_ms", given.pop("retention_ms", settings.retention_ms)
    )
    out["retention_bytes"] = _nonNegativeInt(
        "retention_bytes", given.pop("retention_bytes", settings.retention_bytes)
    )
    for name, default in extra.items():
        out[name] = _nonNegativeInt(name, given.pop(name, default))
    out.update(given)
    return out


def requireBytes(name: str, value: Any) -> None:
    """Raise L{TypeError} unless C{value} is bytes-like or None."""
    if value is not None and not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes or None, not {type(value).__name__}")
