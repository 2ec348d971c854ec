"""Jobs: what is posted, and the record kept for each in its znode.

A job record is one msgpack map with a format version (see
:mod:`jobboard.serialization`). A record that does not decode, has another
version or lacks a field raises :class:`~jobboard.errors.MalformedData`; the
board reports such a znode once and keeps it out of every claim.
"""

from __future__ import annotations

import time
import uuid as uuid_module
from dataclasses import dataclass, field, replace
from typing import Any

from jobboard.errors import MalformedData
from jobboard.serialization import pack_record, unpack_record
from jobboard.states import FINISHED_JOB_STATES, JobState

REQUIRED_FIELDS = ("uuid", "name", "factory", "args", "store", "priority", "state",
                   "created_at")
HISTORY_LIMIT = 20


def new_job_id() -> str:
    return str(uuid_module.uuid4())


def check_job_id(job_id: str) -> str:
    try:
        return str(uuid_module.UUID(job_id))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{job_id!r} is not a job id (a uuid)") from exc


def is_job_id(name: str) -> bool:
    """Whether ``name`` is a job id as the board writes it (canonical uuid)."""
    try:
        return check_job_id(name) == name
    except ValueError:
        return False


@dataclass(frozen=True)
class Claim:
    """The holder's view of its claim: who, the fencing token, and the version of
    the job record it saw when it claimed (every ownership change bumps it)."""

    owner: str
    token: int
    record_version: int
    claimed_at: float


@dataclass(frozen=True)
class Job:
    uuid: str
    name: str
    factory: str
    args: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    not_before: float | None = None
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.UNCLAIMED
    claims: int = 0
    owner: str | None = None
    claimed_at: float | None = None
    finished_at: float | None = None
    outcome: dict[str, Any] | None = None
    transfer_to: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    claim: Claim | None = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_JOB_STATES

    @property
    def token(self) -> int | None:
        return self.claim.token if self.claim else None

    def with_event(self, event: str, **changes: Any) -> "Job":
        """A copy with ``changes`` applied and ``event`` appended to the history."""
        entry = {"at": time.time(), "event": event}
        owner = changes.get("owner", self.owner)
        if owner:
            entry["owner"] = owner
        history = (*self.history, entry)[-HISTORY_LIMIT:]
        return replace(self, history=history, **changes)

    def encode(self) -> bytes:
        return pack_record(self.to_dict())

    @classmethod
    def decode(cls, data: bytes, *, path: str | None = None) -> "Job":
        body = unpack_record(data, REQUIRED_FIELDS, path=path)
        try:
            state = JobState(body["state"])
            job = cls(
                uuid=str(body["uuid"]), name=str(body["name"]),
                factory=str(body["factory"]), args=dict(body["args"]),
                store=dict(body["store"]), priority=int(body["priority"]),
                not_before=body.get("not_before"), key=body.get("key"),
                details=dict(body.get("details") or {}),
                created_at=float(body["created_at"]), state=state,
                claims=int(body.get("claims") or 0), owner=body.get("owner"),
                claimed_at=body.get("claimed_at"), finished_at=body.get("finished_at"),
                outcome=body.get("outcome"), transfer_to=body.get("transfer_to"),
                history=tuple(body.get("history") or ()),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise MalformedData(f"job record has a bad field: {exc}", path=path) from exc
        return job

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``--json``)."""
        return {
            "uuid": self.uuid, "name": self.name, "factory": self.factory,
            "args": self.args, "store": self.store, "priority": self.priority,
            "not_before": self.not_before, "key": self.key, "details": self.details,
            "created_at": self.created_at, "state": self.state.value,
            "claims": self.claims, "owner": self.owner, "claimed_at": self.claimed_at,
            "finished_at": self.finished_at, "outcome": self.outcome,
            "transfer_to": self.transfer_to, "history": list(self.history),
        }


@dataclass(frozen=True)
class JobOutcome:
    """What :meth:`Board.wait` returns: the final state and what the flow left."""

    job_id: str
    state: JobState
    results: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is JobState.COMPLETE

    @classmethod
    def of(cls, job: Job) -> "JobOutcome":
        outcome = job.outcome or {}
        return cls(job.uuid, job.state, dict(outcome.get("results") or {}),
                   outcome.get("failure"), outcome.get("reason"))
