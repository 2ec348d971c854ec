"""Jobs: what is posted, and the record kept for each in its znode.

A job record is one msgpack map with a format version (see
:mod:`jobboard.serialization`). Records are written by other processes,
possibly buggy or hostile ones, so :meth:`Job.decode` validates every field
where the record is read, and code past it works with typed values only:

======================  ====================================================
field                   accepted
======================  ====================================================
uuid                    canonical lowercase uuid, equal to the znode's name
name                    str of at most :data:`NAME_MAX_LENGTH` characters
factory                 ``package.module:function`` (:data:`FACTORY_PATTERN`),
                        at most :data:`FACTORY_MAX_LENGTH` characters
args, store, details    maps with str keys
priority                int (not bool) in ``[PRIORITY_MIN, PRIORITY_MAX]``
queue                   a queue name (:data:`~jobboard.board.layout.QUEUE_PATTERN`);
                        ``default`` when absent (records before queues)
created_at              epoch seconds (finite, 1970 .. 9999), stored as float
not_before, claimed_at,
finished_at             None or epoch seconds, as created_at
key, owner, transfer_to None or str
state                   one of :class:`~jobboard.states.JobState`'s values
claims                  int >= 0 (not bool): every claim of this attempt
deaths                  int >= 0: claims of this attempt that ended because
                        the holder died (``--max-claims`` counts these)
attempt                 int >= 1: the run of the flow (``retry`` adds one)
refusals                int >= 0: claims of this attempt given back by a
                        conductor that cannot import the factory
outcome                 None or a map with str keys whose ``results`` and
                        ``failure`` are None or maps and ``reason`` None or str
history                 list of maps with str keys, each with ``at`` (epoch
                        seconds) and ``event`` (str)
======================  ====================================================

``queue``, ``refusals``, ``details``, ``claims``, ``deaths``, ``attempt``, ``not_before``, ``key``,
``owner``, ``claimed_at``, ``finished_at``, ``outcome``, ``transfer_to`` and
``history`` may be absent
(they take their defaults); the others are required. A field that is present
must hold a valid value (``"details": None`` is malformed, not ``{}``).
Unknown fields are ignored, so a record written by a newer release still
reads. Values inside ``args``, ``store``, ``details`` and ``outcome`` are
plain msgpack data nested at most :data:`~jobboard.serialization.MAX_DEPTH`
deep, with no extension types (:func:`jobboard.serialization.loads`).

How it fails: a record that does not decode, has another format version,
lacks a required field or has a field of the wrong type or range raises
:class:`~jobboard.errors.MalformedData` (with the znode's ``path`` and a
reason naming the field) -- never another exception, whatever the bytes. The
board quarantines such a record: it lists it as MALFORMED with the reason and
keeps it out of every claim, at no cost to the other jobs.
"""

from __future__ import annotations

import re
import time
import uuid as uuid_module
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

from jobboard.board.layout import DEFAULT_QUEUE, PRIORITY_MAX, PRIORITY_MIN, is_queue_name
from jobboard.errors import InvalidArgument, MalformedData
from jobboard.serialization import pack_record, short_repr, unpack_record
from jobboard.states import FINISHED_JOB_STATES, JobState

HISTORY_LIMIT = 20
NAME_MAX_LENGTH = 1000
FACTORY_MAX_LENGTH = 512
FACTORY_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# Epoch seconds a record may carry: 1970-01-01 .. 9999-12-31 UTC, the range
# time.localtime and datetime.fromtimestamp handle everywhere.
TIMESTAMP_MAX = 253402300799.0


def new_job_id() -> str:
    return str(uuid_module.uuid4())


def check_job_id(job_id: str) -> str:
    """The canonical form of a job id (any spelling :class:`uuid.UUID` accepts).

    Raises:
        InvalidArgument: ``job_id`` is not a str holding a uuid
            (``argument == "job_id"``).
    """
    if not isinstance(job_id, str):
        raise InvalidArgument(f"a job id is a uuid string, not {type(job_id).__name__}",
                              argument="job_id")
    try:
        return str(uuid_module.UUID(job_id))
    except ValueError as exc:
        raise InvalidArgument(f"{short_repr(job_id)} is not a job id (a uuid)",
                              argument="job_id") from exc


def is_job_id(name: str) -> bool:
    """Whether ``name`` is a job id as the board writes it (canonical uuid)."""
    try:
        return check_job_id(name) == name
    except InvalidArgument:
        return False


def check_factory(factory: str) -> str:
    """``factory`` if it has the shape ``package.module:function``.

    Raises:
        InvalidArgument: another shape, or longer than
            :data:`FACTORY_MAX_LENGTH` (``argument == "factory"``).
    """
    if (not isinstance(factory, str) or len(factory) > FACTORY_MAX_LENGTH
            or not FACTORY_PATTERN.fullmatch(factory)):
        raise InvalidArgument(f"factory must look like 'package.module:function' "
                              f"(at most {FACTORY_MAX_LENGTH} characters), "
                              f"not {short_repr(factory)}", argument="factory")
    return factory


# -- record validation: one checker per field --------------------------------
#
# A checker takes the decoded value and returns it as the Job holds it, or
# raises _Rejected saying what the field must be.


class _Rejected(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Checker = Callable[[Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timestamp(value: Any) -> float:
    if _is_number(value) and 0 <= value <= TIMESTAMP_MAX:   # NaN fails the test
        return float(value)
    raise _Rejected(f"must be epoch seconds (a number in [0, {TIMESTAMP_MAX:.0f}])")


def _integer(low: int, high: int | None) -> Checker:
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"

    def check(value: Any) -> int:
        if (isinstance(value, int) and not isinstance(value, bool)
                and low <= value and (high is None or value <= high)):
            return value
        raise _Rejected(f"must be an int {bounds}")
    return check


def _text(max_length: int | None = None) -> Checker:
    limit = "" if max_length is None else f" of at most {max_length} characters"

    def check(value: Any) -> str:
        if isinstance(value, str) and (max_length is None or len(value) <= max_length):
            return value
        raise _Rejected(f"must be a str{limit}")
    return check


def _nullable(check: Checker) -> Checker:
    def nullable(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Rejected as exc:
            raise _Rejected(f"must be None or {exc.expected.removeprefix('must be ')}") from None
    return nullable


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    raise _Rejected("must be a map with str keys")


def _uuid(value: Any) -> str:
    if is_job_id(value):
        return value
    raise _Rejected("must be a canonical lowercase uuid")


def _queue(value: Any) -> str:
    if is_queue_name(value):
        return value
    raise _Rejected("must be a queue name (a lowercase letter, then up to 31 of a-z0-9_-)")


def _factory(value: Any) -> str:
    try:
        return check_factory(value)
    except InvalidArgument:
        raise _Rejected(f"must be a str 'package.module:function' of at most "
                        f"{FACTORY_MAX_LENGTH} characters") from None


_STATE_VALUES = frozenset(state.value for state in JobState)


def _state(value: Any) -> JobState:
    if isinstance(value, str) and value in _STATE_VALUES:
        return JobState(value)
    raise _Rejected(f"must be one of {', '.join(state.value for state in JobState)}")


_OUTCOME_PARTS: dict[str, Checker] = {
    "results": _nullable(_mapping), "failure": _nullable(_mapping),
    "reason": _nullable(_text()),
}


def _outcome(value: Any) -> dict[str, Any]:
    outcome = _mapping(value)
    for part, check in _OUTCOME_PARTS.items():
        try:
            check(outcome.get(part))
        except _Rejected as exc:
            raise _Rejected(f"{exc.expected} in its {part!r}") from None
    return outcome


def _history(value: Any) -> tuple[dict[str, Any], ...]:
    expected = ("must be a list of maps with str keys, each with 'at' (epoch seconds) "
                "and 'event' (a str)")
    if not isinstance(value, (list, tuple)):
        raise _Rejected(expected)
    entries = []
    for index, entry in enumerate(value):
        try:
            entry = _mapping(entry)
            at = _timestamp(entry.get("at"))
            if not isinstance(entry.get("event"), str):
                raise _Rejected(expected)
        except _Rejected:
            raise _Rejected(f"{expected} (entry {index} is not)") from None
        entries.append({**entry, "at": at})
    return tuple(entries)


class _Field(NamedTuple):
    check: Checker
    default: Callable[[], Any] | None = None   # None: the field is required


_FIELDS: dict[str, _Field] = {
    "uuid": _Field(_uuid),
    "name": _Field(_text(NAME_MAX_LENGTH)),
    "factory": _Field(_factory),
    "args": _Field(_mapping),
    "store": _Field(_mapping),
    "priority": _Field(_integer(PRIORITY_MIN, PRIORITY_MAX)),
    "queue": _Field(_queue, lambda: DEFAULT_QUEUE),
    "not_before": _Field(_nullable(_timestamp), lambda: None),
    "key": _Field(_nullable(_text()), lambda: None),
    "details": _Field(_mapping, dict),
    "created_at": _Field(_timestamp),
    "state": _Field(_state),
    "claims": _Field(_integer(0, None), lambda: 0),
    "deaths": _Field(_integer(0, None), lambda: 0),
    "attempt": _Field(_integer(1, None), lambda: 1),
    "refusals": _Field(_integer(0, None), lambda: 0),
    "owner": _Field(_nullable(_text()), lambda: None),
    "claimed_at": _Field(_nullable(_timestamp), lambda: None),
    "finished_at": _Field(_nullable(_timestamp), lambda: None),
    "outcome": _Field(_nullable(_outcome), lambda: None),
    "transfer_to": _Field(_nullable(_text()), lambda: None),
    "history": _Field(_history, tuple),
}
REQUIRED_FIELDS = tuple(name for name, spec in _FIELDS.items() if spec.default is None)


@dataclass(frozen=True)
class Claim:
    """The holder's view of its claim: who, the fencing token, and the version of
    the job record it saw when it claimed (every ownership change bumps it).
    ``working``: the claim's transaction also set the job's working marker
    (a job never claimed before: no earlier run to wait for)."""

    owner: str
    token: int
    record_version: int
    claimed_at: float
    working: bool = False


@dataclass(frozen=True)
class Job:
    uuid: str
    name: str
    factory: str
    args: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    not_before: float | None = None
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    state: JobState = JobState.UNCLAIMED
    claims: int = 0
    deaths: int = 0
    attempt: int = 1
    refusals: int = 0
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

    @property
    def run_mark(self) -> str:
        """Tells this claim of the job from every other (the attempt and the
        claim count): what a run writes into the job's working marker."""
        return f"{self.attempt}.{self.claims}"

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
    def decode(cls, data: bytes, *, path: str | None = None,
               job_id: str | None = None) -> "Job":
        """Decode and validate a job record, field by field (see the module
        docstring for what each field must be). Unknown fields are ignored, for
        records written by newer releases.

        Args:
            data: the znode's bytes, from anybody.
            path: the znode's path, for the error.
            job_id: the znode's name; the record's ``uuid`` must equal it.

        Returns:
            A Job whose every field has the type and range the module
            docstring lists.

        Raises:
            MalformedData: for any bytes that are not such a record (and no
                other exception, whatever ``data`` holds); its message names
                the offending field.
        """
        body = unpack_record(data, REQUIRED_FIELDS, path=path)
        values: dict[str, Any] = {}
        for name, spec in _FIELDS.items():
            if name not in body:
                values[name] = spec.default()   # required ones were checked above
                continue
            try:
                values[name] = spec.check(body[name])
            except _Rejected as exc:
                raise MalformedData(f"job record field {name!r} {exc.expected}, "
                                    f"not {short_repr(body[name])}", path=path) from None
        if job_id is not None and values["uuid"] != job_id:
            raise MalformedData(f"job record field 'uuid' is {values['uuid']} but the "
                                f"znode is named {short_repr(job_id)}", path=path)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``--json``)."""
        return {
            "uuid": self.uuid, "name": self.name, "factory": self.factory,
            "args": self.args, "store": self.store, "priority": self.priority,
            "queue": self.queue, "refusals": self.refusals,
            "not_before": self.not_before, "key": self.key, "details": self.details,
            "created_at": self.created_at, "state": self.state.value,
            "claims": self.claims, "deaths": self.deaths, "attempt": self.attempt,
            "owner": self.owner, "claimed_at": self.claimed_at,
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
