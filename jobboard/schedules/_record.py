"""Schedule records: what an admin defines, and what the scheduler keeps.

Two znodes per schedule (see :mod:`jobboard.schedules._store`):

* the **definition** ``{root}/schedules/{name}``, written by ``add``,
  ``pause`` and ``resume``: a versioned msgpack map

  ==============  ==========================================================
  field           accepted
  ==============  ==========================================================
  name            ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 128 characters,
                  equal to the znode's name
  factory         ``package.module:function``
  cron, tz        a cron expression and its IANA time zone, or None
  every           a period in seconds (>= 1), or None; exactly one of
                  cron and every
  args, store     maps with str keys (the posted job's)
  queue           None or a queue name (``[A-Za-z0-9_.-]``, 1..64)
  priority        int in -9999..9999
  missed          ``skip`` or ``catch-up`` (:class:`MissedFires`)
  catch_up_limit  int in 1..1000
  grace           seconds >= 0
  paused          bool
  since           epoch seconds: only fire times after it are due (set by
                  ``add`` and ``resume``, so a pause is never caught up)
  created_at      epoch seconds
  ==============  ==========================================================

* the **status** ``{root}/schedules/{name}/status``, written by the scheduler
  only: ``cursor`` (the latest fire time handled, posted or skipped),
  ``last_fire`` and ``last_job`` (the latest posted fire), ``posted_at``
  (when it was posted), ``fires`` and ``skipped`` (counters), ``leader``
  (who wrote it), ``error`` (why the latest fire was not posted, if it was not).

Both are validated where they are read; a record that fails is reported
with the reason (:class:`~jobboard.errors.MalformedData`) and that schedule
does not fire, at no cost to the others.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from jobboard.board.job import check_factory
from jobboard.board.layout import check_priority, check_queue
from jobboard.errors import InvalidArgument, MalformedData
from jobboard.schedules._trigger import Trigger
from jobboard.serialization import pack_record, short_repr, unpack_record

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CATCH_UP_MAX = 1000
DEFAULT_CATCH_UP_LIMIT = 10
DEFAULT_GRACE = 60.0
KEY_PREFIX = "schedule:"


class MissedFires(str, Enum):
    """What a scheduler does with the fire times that passed while no
    scheduler could post them (an outage, a failover, a stalled leader).

    * ``SKIP`` (the default): post only the most recent of them, and only
      when it is at most ``grace`` seconds late; the others are skipped
      (counted in the status). Right for work where only the latest run
      matters (refresh a cache, send a digest).
    * ``CATCH_UP``: post the ``catch_up_limit`` most recent of them, oldest
      first, however late; older ones are skipped. Right for work done per
      period (bill each hour, roll each day's partition).
    """

    SKIP = "skip"
    CATCH_UP = "catch-up"


def check_name(name: Any) -> str:
    """``name`` if it can name a schedule (and its znode).

    Raises:
        InvalidArgument: it cannot.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"a schedule name is letters, digits, '_', '.', '-' (starting "
                              f"with a letter or digit, at most 128), not {short_repr(name)}",
                              argument="name")
    return name


def _check_queue(queue: Any) -> str | None:
    """None (the board's default queue) or a queue name the board accepts."""
    return None if queue is None else check_queue(queue)


def _check_map(value: Any, argument: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidArgument(f"{argument} must be a dict with str keys", argument=argument)
    return dict(value)


def _check_seconds(value: Any, argument: str, *, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise InvalidArgument(f"{argument} must be a finite number of seconds >= 0, "
                              f"not {short_repr(value)}", argument=argument)
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """A schedule's definition (validated when made, and when read back)."""

    name: str
    factory: str
    cron: str | None = None
    every: float | None = None
    tz: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    missed: MissedFires = MissedFires.SKIP
    catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT
    grace: float = DEFAULT_GRACE
    paused: bool = False
    since: float = 0.0
    created_at: float = 0.0

    def __post_init__(self) -> None:
        check_name(self.name)
        check_factory(self.factory)
        trigger = Trigger(cron=self.cron, every=self.every, tz=self.tz)
        object.__setattr__(self, "tz", trigger.tz)
        object.__setattr__(self, "every", trigger.every)
        object.__setattr__(self, "args", _check_map(self.args, "args"))
        object.__setattr__(self, "store", _check_map(self.store, "store"))
        _check_queue(self.queue)
        check_priority(self.priority)
        try:
            object.__setattr__(self, "missed", MissedFires(self.missed))
        except ValueError:
            raise InvalidArgument(f"missed must be one of "
                                  f"{', '.join(m.value for m in MissedFires)}, not "
                                  f"{short_repr(self.missed)}", argument="missed") from None
        limit = self.catch_up_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= CATCH_UP_MAX:
            raise InvalidArgument(f"catch_up_limit must be an int in 1..{CATCH_UP_MAX}",
                                  argument="catch_up_limit")
        object.__setattr__(self, "grace", _check_seconds(self.grace, "grace"))
        if not isinstance(self.paused, bool):
            raise InvalidArgument("paused must be a bool", argument="paused")
        object.__setattr__(self, "since", _check_seconds(self.since, "since"))
        object.__setattr__(self, "created_at", _check_seconds(self.created_at, "created_at"))
        object.__setattr__(self, "_trigger", trigger)

    @property
    def trigger(self) -> Trigger:
        return self._trigger  # type: ignore[attr-defined]

    def next_fire(self, after: float) -> float | None:
        """The first fire time strictly after ``after`` (None: never)."""
        return self.trigger.next_after(after)

    def key(self, fire_time: float) -> str:
        """The idempotency key of the job posted for ``fire_time``."""
        return f"{KEY_PREFIX}{self.name}@{round(fire_time * 1000)}"

    def replace(self, **changes: Any) -> "Schedule":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        doc = {name: getattr(self, name) for name in _FIELDS}
        doc["missed"] = self.missed.value
        return doc

    def encode(self) -> bytes:
        return pack_record(self.to_dict())

    @classmethod
    def decode(cls, data: bytes, *, path: str, name: str) -> "Schedule":
        """Validate a definition read from ``path``.

        Raises:
            MalformedData: not a valid definition of schedule ``name``.
        """
        body = unpack_record(data, ("name", "factory"), path=path)
        if body.get("name") != name:
            raise MalformedData(f"schedule record names {short_repr(body.get('name'))}, "
                                f"not {name!r}", path=path)
        known = {key: body[key] for key in _FIELDS if key in body}
        try:
            return cls(**known)
        except (InvalidArgument, TypeError) as exc:
            raise MalformedData(f"invalid schedule record: {exc}", path=path) from exc


_FIELDS = tuple(name for name in Schedule.__dataclass_fields__)


@dataclass(frozen=True)
class ScheduleStatus:
    """What the scheduler has done for a schedule."""

    cursor: float = 0.0
    last_fire: float | None = None
    last_job: str | None = None
    posted_at: float | None = None
    fires: int = 0
    skipped: int = 0
    leader: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> bytes:
        return pack_record(self.to_dict())

    @classmethod
    def decode(cls, data: bytes, *, path: str) -> "ScheduleStatus":
        """Raises: MalformedData: not a valid status record."""
        body = unpack_record(data, ("cursor",), path=path)
        try:
            status = cls(**{key: body[key] for key in cls.__dataclass_fields__ if key in body})
            _check_seconds(status.cursor, "cursor")
            _check_seconds(status.last_fire, "last_fire", nullable=True)
            _check_seconds(status.posted_at, "posted_at", nullable=True)
            for counter in (status.fires, status.skipped):
                if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
                    raise InvalidArgument("fires and skipped must be ints >= 0")
            for text in (status.last_job, status.leader, status.error):
                if text is not None and not isinstance(text, str):
                    raise InvalidArgument("last_job, leader and error must be None or str")
        except (InvalidArgument, TypeError) as exc:
            raise MalformedData(f"invalid schedule status: {exc}", path=path) from exc
        return status
