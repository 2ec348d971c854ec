"""What the engine writes down as it runs, and the interface it writes to.

The engine records every transition of a job's flow in a journal before it
acts on it, and resumes from it after a crash. :class:`Journal` is all it
needs of one: four calls. The SQL logbook (:class:`jobboard.logbook.Logbook`)
implements it; the engine imports neither it nor SQLAlchemy.

Every call takes the writer's fencing ``token``: a journal refuses a write
whose token is not the newest that took the job over (``StaleOwner``), so a
paused holder's late writes never land.

The records are plain dataclasses. Results and ``meta`` must be
msgpack-native (see :mod:`jobboard.serialization`); a journal refuses
anything else with :class:`~jobboard.errors.MalformedData`.
:meth:`Failure.from_dict` raises ``MalformedData`` on a dict without
``exc_type``.
"""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from jobboard.errors import MalformedData
from jobboard.states import AtomState, FlowState

__all__ = ["AtomDetail", "Failure", "FlowDetail", "Journal"]


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
    version: str | None = None          # Task.version that wrote it; None: unknown
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


class Journal(Protocol):
    """Where the engine records a job's flow (see the module docstring).

    Each call is atomic: everything it names is saved, or nothing.
    """

    def take_over(self, job_id: str, token: int, owner: str, *, name: str = "",
                  attempt: int = 1, start: FlowState | None = None,
                  atoms: Sequence[AtomDetail] = ()) -> FlowDetail | None:
        """Become the job's writer with ``token`` (creating its journal when
        absent; an ``attempt`` above the current one starts that attempt
        afresh) and return the current attempt's flow with its atoms, or None
        when it saved none yet. With ``start``, an attempt without a flow
        gets one named ``name`` in that state, with ``atoms`` (all new), in
        the same transaction; an attempt with a flow is returned as it is,
        and nothing else is written.

        Raises:
            StaleOwner: a newer token took the job over.
        """

    def save_atoms(self, job_id: str, atoms: Sequence[AtomDetail], *, token: int) -> None:
        """Insert or update ``atoms`` (by name) in the current attempt's flow.

        Raises:
            StaleOwner: ``token`` is not the current one.
        """

    def save_flow(self, job_id: str, name: str, state: FlowState, *, token: int,
                  meta: dict | None = None, atoms: Sequence[AtomDetail] = ()) -> FlowDetail:
        """Create or update the current attempt's flow, and save ``atoms``
        with it in the same transaction.

        Raises:
            StaleOwner: ``token`` is not the current one.
        """
