"""Durations, sizes and ratios as the rule language writes them.

Each parser takes the literal exactly as lexed (`250ms`, `1MiB`, `12.5%`) and
returns its meaning, or None when the literal is not valid. They never raise:
the transformer stores None in the AST and validation reports it with
`duration_problem` / `size_problem`, which say what is wrong in words.
"""

from __future__ import annotations

import math
import re

DURATION_UNITS_S: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE_UNITS_BYTES: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z%]*)\Z")


def _split(raw: str) -> tuple[str, str] | None:
    m = _QUANTITY.match(raw)
    return (m.group(1), m.group(2)) if m else None


def parse_duration(raw: str) -> float | None:
    """`1.5s` -> 1.5 (seconds). None for an unknown unit or a non-finite value."""
    parts = _split(raw)
    if parts is None or parts[1] not in DURATION_UNITS_S:
        return None
    seconds = float(parts[0]) * DURATION_UNITS_S[parts[1]]
    return seconds if math.isfinite(seconds) else None


def duration_problem(raw: str) -> str:
    """Why `raw` is not a duration (only meaningful when parse_duration gave None)."""
    parts = _split(raw)
    if parts is None:
        return f'"{raw}" is not a duration'
    if not parts[1]:
        return f'duration "{raw}" needs a unit: ms, s, m or h'
    if parts[1] not in DURATION_UNITS_S:
        return f'unknown duration unit "{parts[1]}" in "{raw}" (use ms, s, m or h)'
    return f'duration "{raw}" is out of range'


def parse_size(raw: str) -> int | None:
    """`1MiB` -> 1048576. Sizes are whole numbers; None otherwise or for an unknown unit."""
    parts = _split(raw)
    if parts is None or "." in parts[0] or parts[1] not in SIZE_UNITS_BYTES:
        return None
    return int(parts[0]) * SIZE_UNITS_BYTES[parts[1]]


def size_problem(raw: str) -> str:
    """Why `raw` is not a size (only meaningful when parse_size gave None)."""
    parts = _split(raw)
    if parts is None:
        return f'"{raw}" is not a size'
    if parts[1] not in SIZE_UNITS_BYTES:
        units = ", ".join(SIZE_UNITS_BYTES)
        return f'unknown size unit "{parts[1]}" in "{raw}" (use {units})'
    return f'size "{raw}" must be a whole number of {parts[1]}'


def parse_ratio(raw: str) -> float | None:
    """`12.5%` -> 0.125, `0.125` -> 0.125. Range is validation's business."""
    parts = _split(raw)
    if parts is None or parts[1] not in ("", "%"):
        return None
    value = float(parts[0])
    if parts[1] == "%":
        value /= 100.0
    return value if math.isfinite(value) else None


def parse_number(raw: str) -> float | None:
    """A bare number (`8`, `0.5`); None if it does not parse or is not finite."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
