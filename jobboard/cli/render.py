"""Results and failures as people read them: values as JSON text, a failure
as ``type: message`` followed by its traceback, indented (never a Python
dict repr with escaped newlines).

How it fails: it does not; a value that is not what a failure record
should be is shown as JSON.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["failure_lines", "outcome_lines", "value_text"]


def value_text(value: Any) -> str:
    """A value on one line, as JSON (text as a quoted string)."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _indent(text: str, prefix: str) -> list[str]:
    return [prefix + line for line in text.rstrip().splitlines()]


def failure_lines(failure: Any, indent: str = "  ") -> list[str]:
    """A failure record (``exc_type``, ``message``, ``traceback``) as
    ``failure: type: message`` and the traceback below it."""
    if not isinstance(failure, dict) or "exc_type" not in failure:
        return [f"{indent}failure: {value_text(failure)}"]
    message = str(failure.get("message") or "").strip()
    head = f"{indent}failure: {failure['exc_type']}" + (f": {message}" if message else "")
    lines = _indent(message, indent + "  ")[1:] if "\n" in message else []
    lines = [head.splitlines()[0], *lines]
    trace = str(failure.get("traceback") or "")
    if trace.strip():
        lines += _indent(trace, indent + "  ")
    return lines


def outcome_lines(outcome: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """What a finished job left (``results``, ``reason``, ``failure``), one
    result per line."""
    if not outcome:
        return []
    lines = []
    results = outcome.get("results") or {}
    if isinstance(results, dict):
        lines += [f"{indent}{name}: {value_text(value)}" for name, value in sorted(results.items())]
    else:
        lines.append(f"{indent}results: {value_text(results)}")
    if outcome.get("reason"):
        lines.append(f"{indent}reason: {outcome['reason']}")
    if outcome.get("failure") is not None:
        lines += failure_lines(outcome["failure"], indent)
    return lines
