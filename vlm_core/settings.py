"""Settings that enter a hash (a run's config hash, a cache key) only when they are set: a key added after
results existed changes nothing at its default, so leaving it out at its default keeps those results current.
The one place that rule lives."""
from __future__ import annotations

from dataclasses import MISSING, fields


def defaults(cls) -> dict:
    """A dataclass's field defaults, by name (a list's default too: its ``default_factory``'s value)."""
    return {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(cls)}


def without_unset(values: dict, cls, added_later: tuple[str, ...], keep: tuple[str, ...] = ()) -> dict:
    """``values`` less the keys of ``added_later`` that are at ``cls``'s default (unless named in ``keep``)."""
    base = defaults(cls)
    return {k: v for k, v in values.items() if not (k in added_later and k not in keep and v == base[k])}
