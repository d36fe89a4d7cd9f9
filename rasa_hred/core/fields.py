"""Settings read from files (config.json, YAML, credentials) are checked against the
dataclass they fill, so that a misspelt key is an error rather than silently ignored."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


def unknown_keys(settings: type[Any] | Iterable[str], given: Iterable[Any]) -> list[str]:
    """The keys of ``given`` that name no field of the dataclass ``settings`` (or no name in
    an iterable of allowed names), sorted; empty when all are known."""
    if isinstance(settings, type) and dataclasses.is_dataclass(settings):
        known = {f.name for f in dataclasses.fields(settings)}
    else:
        known = set(settings)  # type: ignore[arg-type]
    return sorted(str(key) for key in given if key not in known)


def check_known_keys(
    settings: type[Any] | Iterable[str],
    given: Iterable[Any],
    what: str,
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error("unknown {what}: a, b")`` when ``given`` has keys ``settings`` lacks."""
    unknown = unknown_keys(settings, given)
    if unknown:
        raise error(f"unknown {what}: {', '.join(unknown)}")
