"""Durations as people write them: ``30s``, ``5m``, ``1h30m``, ``2d``, ``1.5h``,
or a plain number of seconds.

How it fails: anything else, a negative or non-finite value ->
:class:`~jobboard.errors.InvalidArgument` naming the argument.
"""

from __future__ import annotations

import math
import re

from jobboard.errors import InvalidArgument

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | int | float, *, argument: str = "duration") -> float:
    """Seconds in ``text``.

    Args:
        text: ``"30s"``, ``"1h30m"``, ``"2d"``, ``"250ms"``, ``"90"`` (seconds),
            or a number of seconds.
        argument: the name used in the error.

    Raises:
        InvalidArgument: not a duration, negative, or not finite.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        compact = text.strip().replace(" ", "").lower()
        try:
            seconds = float(compact)
        except ValueError:
            seconds = _parse_units(compact, text, argument)
    else:
        raise InvalidArgument(f"{argument} must be a duration such as 30s, 5m, 1h30m or 2d, "
                              f"not {type(text).__name__}", argument=argument)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{argument} must be a finite duration >= 0, not {text!r}",
                              argument=argument)
    return seconds


def _parse_units(compact: str, text: str, argument: str) -> float:
    position, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        position = match.end()
    if position != len(compact) or not compact:
        raise InvalidArgument(f"{argument}: {text!r} is not a duration (examples: 30s, 5m, "
                              f"1h30m, 2d, 250ms)", argument=argument)
    return total


def format_duration(seconds: float) -> str:
    """``90`` -> ``"1m30s"``; whole milliseconds below a second (``"250ms"``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = seconds
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        if rest >= size:
            count = int(rest // size)
            out.append(f"{count}{unit}")
            rest -= count * size
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)
