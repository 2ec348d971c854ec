"""Retry controllers: atoms that run a whole subflow again when part of it fails.

A controller is attached to a flow (``flows.linear("x", ..., retry=Times(3))``)
and becomes the first atom of that flow (its *scope*): it runs before every
other item of the flow, and what it returns is saved under its ``provides``
(``ForEach`` hands each attempt the next value, e.g. another host).

When a task of the scope fails for good (after its own :class:`Retry`
policy, if any, gave up), the engine asks the innermost controller
enclosing it, :meth:`RetryController.on_failure`, for a :class:`Decision`:

* ``RETRY``: revert what ran in the scope (latest first), then run the
  controller and the scope again;
* ``REVERT``: give up on this scope; the next enclosing controller decides
  in turn, and without one the whole flow reverts;
* ``REVERT_ALL``: revert the whole flow, whatever the enclosing controllers.

A controller is stored in the journal as an atom of kind ``"retry"``: its
``result`` is the value of the current attempt, ``attempts`` counts the
attempts made and ``meta["history"]`` lists the failed ones (value and the
failures that ended it), so a resumed engine continues the same sequence.
Controllers run inline on the engine's thread (they only compute a value and
a decision): keep them quick and deterministic.

How it fails: an ``execute`` that raises (``ForEach`` out of values) fails
the controller's atom like a task, which the next enclosing controller (or
the whole flow) then handles; an ``on_failure`` that raises, or returns
something that is not a :class:`Decision`, reverts the whole flow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jobboard.engine.journal import Failure
from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid

__all__ = ["Decision", "Attempt", "History", "RetryController", "Times", "ForEach",
           "ParameterizedForEach"]


class Decision(str, Enum):
    """What a controller decides when its scope failed."""

    RETRY = "RETRY"            # revert the scope and run it again
    REVERT = "REVERT"          # revert the scope; the enclosing controller decides
    REVERT_ALL = "REVERT_ALL"  # revert the whole flow

    def __str__(self) -> str:
        return self.value


@dataclass
class Attempt:
    """One failed attempt of a scope: the controller's value and the failures."""

    value: Any
    failures: dict[str, Failure] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value,
                "failures": {n: f.to_dict() for n, f in self.failures.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Attempt":
        return cls(data.get("value"), {str(n): Failure.from_dict(f)
                                       for n, f in (data.get("failures") or {}).items()})


class History(Sequence[Attempt]):
    """The failed attempts of a scope, oldest first (``len()``: how many)."""

    def __init__(self, attempts: Sequence[Attempt] = ()) -> None:
        self._attempts = list(attempts)

    def __getitem__(self, index: Any) -> Any:
        return self._attempts[index]

    def __len__(self) -> int:
        return len(self._attempts)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(self._attempts)

    @property
    def values(self) -> list[Any]:
        """The value of each failed attempt."""
        return [a.value for a in self._attempts]

    @property
    def last_failures(self) -> dict[str, Failure]:
        """The failures that ended the latest attempt (empty before any)."""
        return dict(self._attempts[-1].failures) if self._attempts else {}

    def to_list(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self._attempts]

    @classmethod
    def from_list(cls, data: Any) -> "History":
        return cls([Attempt.from_dict(d) for d in (data or []) if isinstance(d, Mapping)])

    def __repr__(self) -> str:
        return f"History({self._attempts!r})"


class RetryController(Task):
    """Base of the retry controllers: subclass and implement :meth:`on_failure`
    (and :meth:`execute` to hand each attempt a value).

    ``execute`` and ``on_failure`` take ``history`` (a :class:`History`) plus
    the inputs the controller requires, declared as for a task.

    Args:
        name: The atom's name in the journal; by default the flow's name
            followed by ``":retry"``.
        provides: Name(s) the value of ``execute`` is saved under.
        requires, rebind, inject: As for :class:`~jobboard.engine.tasks.Task`.
        revert_all: When out of attempts, revert the whole flow
            (``REVERT_ALL``) instead of deferring to the enclosing controller.
    """

    _reserved_params = ("history",)

    def __init__(self, name: str | None = None, *, provides: str | Sequence[str] | None = None,
                 requires: Sequence[str] | Mapping[str, str] | None = None,
                 rebind: Sequence[str] | Mapping[str, str] | None = None,
                 inject: Mapping[str, Any] | None = None, revert_all: bool = False) -> None:
        self.auto_named = name is None
        super().__init__(name or type(self).__name__, provides=provides, requires=requires,
                         rebind=rebind, inject=inject)
        self.revert_all = revert_all

    @property
    def out_of_attempts(self) -> Decision:
        """The decision once no attempt is left."""
        return Decision.REVERT_ALL if self.revert_all else Decision.REVERT

    def execute(self, history: History, **inputs: Any) -> Any:  # type: ignore[override]
        """The value of the next attempt; by default its number (1-based)."""
        return len(history) + 1

    def on_failure(self, history: History, **inputs: Any) -> Decision:
        """Decide what to do now that attempt ``len(history)`` failed
        (``history[-1]`` holds its value and failures)."""
        raise NotImplementedError(f"retry controller {self.name} does not implement on_failure()")

    def revert(self, *, result: Any = None, failure: Any = None, **inputs: Any) -> None:
        """Nothing to undo: a controller only computes values."""


class Times(RetryController):
    """Run the scope at most ``attempts`` times (the first included).

    ``execute`` provides the attempt's number (1-based) under ``provides``.
    """

    def __init__(self, attempts: int, name: str | None = None, **options: Any) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise FlowInvalid(f"Times: attempts must be a positive int, got {attempts!r}")
        super().__init__(name, **options)
        self.attempts = attempts

    def on_failure(self, history: History, **inputs: Any) -> Decision:
        return Decision.RETRY if len(history) < self.attempts else self.out_of_attempts

    def __repr__(self) -> str:
        return f"<Times {self.name!r} attempts={self.attempts}>"


class ForEach(RetryController):
    """Run the scope once per value, in order, until one attempt succeeds.

    Each attempt gets the next of ``values`` under ``provides``.
    """

    def __init__(self, values: Sequence[Any], name: str | None = None, **options: Any) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise FlowInvalid(f"ForEach: values must be a sequence, got {values!r}")
        super().__init__(name, **options)
        self.values = list(values)

    def execute(self, history: History) -> Any:  # type: ignore[override]
        return _pick(self.name, self.values, history)

    def on_failure(self, history: History) -> Decision:  # type: ignore[override]
        return Decision.RETRY if len(history) < len(self.values) else self.out_of_attempts


class ParameterizedForEach(RetryController):
    """:class:`ForEach` over a list read from the store (or an earlier task)
    under ``key`` when the controller runs.
    """

    def __init__(self, key: str, name: str | None = None, **options: Any) -> None:
        if not isinstance(key, str) or not key:
            raise FlowInvalid(f"ParameterizedForEach: key must be a non-empty str, got {key!r}")
        options.setdefault("rebind", {"values": key})
        super().__init__(name, **options)
        self.key = key

    def execute(self, history: History, values: Sequence[Any]) -> Any:  # type: ignore[override]
        return _pick(self.name, list(values), history)

    def on_failure(self, history: History, values: Sequence[Any]) -> Decision:  # type: ignore[override]
        return Decision.RETRY if len(history) < len(values) else self.out_of_attempts


def _pick(name: str, values: list[Any], history: History) -> Any:
    if len(history) >= len(values):
        raise FlowInvalid(f"retry controller {name}: no value left for attempt "
                          f"{len(history) + 1} (it has {len(values)})")
    return values[len(history)]
