"""Code OUTSIDE the allowed prefixes in tests/test_factory_security.py: things
:mod:`hostile_flows` imports or decorates with, to try to get them called.

Everything here that runs records itself with :func:`touch` in the directory
named by ``$HOSTILE_FLOWS_MARKERS``, so a test can prove nothing ran.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

MARKER_ENV = "HOSTILE_FLOWS_MARKERS"


def touch(what: str) -> None:
    """Leave a marker saying ``what`` ran (no-op when no directory is set)."""
    directory = os.environ.get(MARKER_ENV)
    if directory:
        Path(directory, what).touch()


def touch_marker(**kwargs: Any) -> None:
    """A function defined outside the allowed prefixes."""
    touch("hostile_helpers.touch_marker")


def disguise(func):
    """A decorator whose wrapper copies ``func``'s ``__module__`` and
    ``__qualname__`` (functools.wraps), so it claims to live where ``func``
    does, and runs its own code instead."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        touch("hostile_helpers.disguise")
        os.system(kwargs.get("command", "true"))

    return wrapper
