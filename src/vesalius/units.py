"""Quantities as people type them on a command line: durations (``30m``, ``7d``) and sizes (``512M``, ``2G``)."""

from __future__ import annotations

import math

from vesalius.errors import VesaliusError

__all__ = ["format_duration", "parse_duration", "parse_size"]


def parse_duration(text: str) -> float:
    """Seconds in ``"30m"``, ``"2h"``, ``"7d"``, ``"90s"`` or ``"1800"``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text[-1:].lower() in units else (text, "s")
    try:
        seconds = float(value) * units[unit.lower()]
    except ValueError:
        raise VesaliusError(f"cannot read the duration '{text}'", remedy="write it like 30m, 2h or 900s") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise VesaliusError(f"the duration '{text}' must be positive", remedy="write it like 30m, 2h or 900s")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` as people say it: ``45 s``, ``30 min``, ``2 h 5 min``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def parse_size(text: str) -> int:
    """Bytes in ``"512M"``, ``"2G"``, ``"100k"`` or ``"1000"`` (binary units: ``k`` is 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in units else (text, "")
    try:
        size = float(value) * units.get(unit, 1)
    except ValueError:
        raise VesaliusError(f"cannot read the size '{text}'", remedy="write it like 512M, 2G or 100k") from None
    if not (math.isfinite(size) and size >= 1):
        raise VesaliusError(f"the size '{text}' must be positive", remedy="write it like 512M, 2G or 100k")
    return int(size)
