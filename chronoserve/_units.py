"""Parsing of human-friendly sizes and durations for options (``"2GB"``, ``"512MiB"``, ``"10ms"``)."""

from __future__ import annotations

import re

_BYTES = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SECONDS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: int | float | str) -> int:
    """``2GB`` -> 2_000_000_000, ``512MiB`` -> 536_870_912, ``1000`` -> 1000."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return int(value)
    match = _NUMBER.match(str(value))
    if not match or match.group(2).lower() not in _BYTES:
        raise ValueError(f"not a size: {value!r} (examples: 2GB, 512MiB, 1000000)")
    return int(float(match.group(1)) * _BYTES[match.group(2).lower()])


def parse_seconds(value: int | float | str) -> float:
    """``10ms`` -> 0.01, ``2m`` -> 120.0, ``0.5`` -> 0.5."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return float(value)
    match = _NUMBER.match(str(value))
    if not match or match.group(2).lower() not in _SECONDS:
        raise ValueError(f"not a duration: {value!r} (examples: 10ms, 2s, 5m)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
