"""An allowed factory module full of things that are not factories.

tests/test_factory_security.py allows ``hostile_flows`` (and sometimes
``jobboard.testing``) and posts references into this module that must be
refused before anything is called. Every callable here that would do harm
instead leaves a marker (:func:`hostile_helpers.touch`) so the tests can prove
it never ran; the os / subprocess / eval ones get args that would create a
marker file if they were called.

Two real factories sit among them: :func:`legit` (defined here) and ``noop``
(imported from the allowed ``jobboard.testing.flows``).
"""

from __future__ import annotations

import functools
import os  # noqa: F401 - the target of "hostile_flows:os.system"
import subprocess  # noqa: F401 - the target of "hostile_flows:subprocess.run"
from builtins import eval as evaluate  # noqa: F401
from collections import OrderedDict  # noqa: F401 - an imported class
from os import system  # noqa: F401 - a builtin imported from os
from typing import Any

from hostile_helpers import disguise, touch, touch_marker  # noqa: F401
from jobboard.engine import Task, flows
from jobboard.testing.flows import noop  # noqa: F401 - a factory from an allowed module

imported_helper = touch_marker     # a function defined outside the prefixes


# -- real factories -------------------------------------------------------------

class Mark(Task):
    def execute(self) -> str:
        return "legit ran"


def legit(label: str = "legit") -> flows.Flow:
    """A plain factory: must keep working."""
    return flows.linear(f"legit-{label}", Mark("mark"))


alias_of_legit = legit             # an alias of a local def: same function, allowed


def raises_system_exit() -> flows.Flow:
    raise SystemExit("factory called sys.exit")


def raises_keyboard_interrupt() -> flows.Flow:
    raise KeyboardInterrupt("factory interrupted")


def raises_generator_exit() -> flows.Flow:
    raise GeneratorExit("factory closed")


# -- not factories ---------------------------------------------------------------

class DefinedHere:
    """A class: calling it runs __init__."""

    def __init__(self, **kwargs: Any) -> None:
        touch("hostile_flows.DefinedHere")

    def method(self, **kwargs: Any) -> None:
        touch("hostile_flows.method")


class _Callable:
    def __call__(self, **kwargs: Any) -> None:
        touch("hostile_flows.instance")


class _PretendFunction:
    """An instance that claims (through __class__) to be a function."""

    @property
    def __class__(self):  # type: ignore[override]
        return type(legit)

    def __call__(self, **kwargs: Any) -> None:
        touch("hostile_flows.pretend")


def _private(**kwargs: Any) -> None:
    touch("hostile_flows._private")


def _make_runner():
    def runner(**kwargs: Any) -> None:
        touch("hostile_flows.closure")
    return runner


instance = _Callable()
pretend_function = _PretendFunction()
bound_method = DefinedHere.__new__(DefinedHere).method
partial = functools.partial(_private)
as_lambda = lambda **kwargs: touch("hostile_flows.lambda")  # noqa: E731
closure = _make_runner()


@disguise
def disguised(**kwargs: Any) -> None:
    """Looks like a def here; is really hostile_helpers' wrapper."""
    touch("hostile_flows.disguised-body")


def __getattr__(name: str) -> Any:
    """PEP 562: would hand out anything for an unknown name, if ever asked."""
    touch(f"hostile_flows.__getattr__.{name}")
    return touch_marker
