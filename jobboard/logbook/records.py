"""The logbook's plain records. A flow's records (:class:`FlowDetail`,
:class:`AtomDetail`, :class:`Failure`) are the engine's, from
:mod:`jobboard.engine.journal`, the interface the logbook implements; the
logbook adds its own summary row, :class:`LogBookInfo`. None of them touches
the database: :mod:`jobboard.logbook.store` maps them to and from SQL rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jobboard.engine.journal import AtomDetail, Failure, FlowDetail
from jobboard.states import FlowState

__all__ = ["Failure", "AtomDetail", "FlowDetail", "LogBookInfo"]


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
