"""The logbook's plain records: what the engine and the conductor read and write.

These dataclasses never touch the database; :mod:`jobboard.logbook.store`
maps them to and from SQL rows. Results and ``meta`` must be msgpack-native
(see :mod:`jobboard.serialization`); anything else is refused with
:class:`~jobboard.errors.MalformedData` when the record is saved.
:meth:`Failure.from_dict` raises ``MalformedData`` on a dict without
``exc_type``.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobboard.errors import MalformedData
from jobboard.states import AtomState, FlowState

__all__ = ["Failure", "AtomDetail", "FlowDetail", "LogBookInfo"]


@dataclass
class Failure:
    """A captured exception: its class, message and formatted traceback."""

    exc_type: str          # "module.QualName" of the exception class
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> "Failure":
        """Capture ``exc`` (with its traceback, when it was raised)."""
        klass = type(exc)
        name = f"{klass.__module__}.{klass.__qualname__}"
        text = "".join(_traceback.format_exception(klass, exc, exc.__traceback__))
        return cls(exc_type=name, message=str(exc), traceback=text)

    def to_dict(self) -> dict:
        return {"exc_type": self.exc_type, "message": self.message,
                "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: dict) -> "Failure":
        if not isinstance(data, dict) or "exc_type" not in data:
            raise MalformedData(f"not a failure record: {data!r:.200}")
        return cls(exc_type=str(data["exc_type"]), message=str(data.get("message", "")),
                   traceback=str(data.get("traceback") or ""))

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"


@dataclass
class AtomDetail:
    """The persisted state of one task or retry controller."""

    name: str
    kind: str = "task"                  # "task" | "retry"
    state: AtomState = AtomState.PENDING
    result: Any = None                  # msgpack-native
    failure: Failure | None = None      # failure of execute
    revert_failure: Failure | None = None
    attempts: int = 0
    meta: dict = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass
class FlowDetail:
    """The persisted state of one attempt of a job's flow and all of its atoms.

    ``attempt`` counts from 1; ``jobboard retry`` of a finished job runs its
    flow afresh as the next attempt, and the earlier attempts stay stored.
    """

    job_id: str
    name: str
    state: FlowState = FlowState.PENDING
    meta: dict = field(default_factory=dict)
    atoms: dict[str, AtomDetail] = field(default_factory=dict)   # by atom name
    created_at: datetime | None = None
    updated_at: datetime | None = None
    attempt: int = 1


@dataclass
class LogBookInfo:
    """A logbook's summary row: who owns it, with which token, how far it got
    (``flow_state`` is the state of the current ``attempt``'s flow, None
    before that attempt saved one)."""

    job_id: str
    name: str
    owner: str | None
    token: int | None
    flow_state: FlowState | None
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
