"""Durations as people write them on a command line: `90`, `90s`, `45m`, `1h30m`, `2d`."""

from __future__ import annotations

import re

from shared.errors import SpecError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str | int | float, field: str = "timeout") -> float:
    """Seconds in `text`; a bare number is seconds. Raises SpecError naming `field`."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", value):
            seconds = float(value)
        elif value and _PART.sub("", value) == "" and _PART.match(value):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
        else:
            raise SpecError(field, f"expected a duration such as 90s, 45m or 1h30m, got {text!r}")
    if seconds <= 0:
        raise SpecError(field, f"expected a positive duration, got {text!r}")
    return seconds
