"""Schedules on the board: add, list, show, pause, resume, remove.

::

    {root}/schedules/{name}           the definition (msgpack, see _record)
    {root}/schedules/{name}/status    what the scheduler did: cursor, last fire, counters

Every write of a definition is guarded by its znode version (a pause racing a
resume: one wins, the other reads again and applies its change on top), and
every write changes the definition's data, which wakes the scheduler through
its watch. The status is written only by the scheduler.

How it fails: an unknown name -> :class:`ScheduleNotFound`; ``add`` of a name
in use without ``replace`` -> :class:`ScheduleExists`; a bad argument ->
:class:`~jobboard.errors.InvalidArgument`; a definition that does not
validate -> :class:`~jobboard.errors.MalformedData` from :meth:`get`, and a
``broken`` entry (with the reason) in :meth:`list`, never an error for the
other schedules; ZooKeeper unreachable ->
:class:`~jobboard.errors.BoardUnavailable`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from jobboard.errors import MalformedData
from jobboard.errors import ScheduleExists, ScheduleNotFound
from jobboard.schedules._record import (DEFAULT_CATCH_UP_LIMIT, DEFAULT_GRACE, MissedFires,
                                        Schedule, ScheduleStatus, check_name)
from jobboard.zkerrors import translated

if TYPE_CHECKING:
    from jobboard.board import Board

READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as listed: its definition (None when broken), its status,
    why it is broken, and its next fire time."""

    name: str
    schedule: Schedule | None
    status: ScheduleStatus | None
    broken: str | None = None
    version: int = -1
    status_version: int = -1

    @property
    def state(self) -> str:
        if self.broken is not None or self.schedule is None:
            return "broken"
        return "paused" if self.schedule.paused else "active"

    def next_fire(self, now: float | None = None) -> float | None:
        """The next fire time after ``now`` (None when paused, broken or never)."""
        if self.state != "active" or self.schedule is None:
            return None
        now = time.time() if now is None else now
        cursor = self.status.cursor if self.status else 0.0
        return self.schedule.next_fire(max(now, cursor, self.schedule.since))

    def overdue(self, now: float | None = None) -> float:
        """Seconds by which the first fire not yet handled is late (0 when it
        is not due yet, or the schedule is paused or broken). Near 0 while a
        scheduler leads; it grows when none fires (the alert's gauge)."""
        if self.state != "active" or self.schedule is None:
            return 0.0
        now = time.time() if now is None else now
        cursor = self.status.cursor if self.status else 0.0
        first = self.schedule.next_fire(max(cursor, self.schedule.since))
        return 0.0 if first is None else max(0.0, now - first)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (``schedule list/show --json``)."""
        now = time.time()
        doc: dict[str, Any] = {"name": self.name, "state": self.state, "broken": self.broken,
                               "next_fire": self.next_fire(now),
                               "overdue_seconds": self.overdue(now)}
        doc["schedule"] = self.schedule.to_dict() if self.schedule else None
        doc["status"] = self.status.to_dict() if self.status else None
        return doc


class Schedules:
    """The schedules of one board (the Python API behind ``jobboard schedule``).

    Args:
        board: the board; its client and root are used.
        clock: epoch seconds now (``since`` of added and resumed schedules).
    """

    def __init__(self, board: "Board", *, clock: Callable[[], float] = time.time) -> None:
        self.client = board.client
        self.paths = board.paths
        self.root = board.paths.schedules
        self.clock = clock

    def path(self, name: str) -> str:
        return self.paths.schedule(name)

    def status_path(self, name: str) -> str:
        return self.paths.schedule_status(name)

    # -- admin ---------------------------------------------------------------------

    def add(self, name: str, factory: str, *, cron: str | None = None,
            every: float | None = None, tz: str | None = None,
            args: dict[str, Any] | None = None, store: dict[str, Any] | None = None,
            queue: str | None = None, priority: int = 0,
            missed: MissedFires | str = MissedFires.SKIP,
            catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT, grace: float = DEFAULT_GRACE,
            paused: bool = False, replace: bool = False) -> Schedule:
        """Define a schedule: from now on, each fire time posts a job of
        ``factory`` with ``args``, ``store``, ``queue`` and ``priority``.

        Args:
            name: unique on the board (letters, digits, ``_.-``).
            cron: a cron expression (five fields or ``@daily``...), in ``tz``.
            every: a period in seconds (epoch-aligned); exactly one of cron and every.
            tz: IANA time zone of ``cron`` (default UTC).
            missed: :class:`MissedFires` after an outage.
            catch_up_limit: with ``catch-up``, how many missed fires are posted.
            grace: with ``skip``, how late (seconds) a fire may still be posted.
            paused: define it paused.
            replace: overwrite a schedule of that name (its status is kept;
                fire times before now are never due).

        Raises:
            InvalidArgument: a bad argument (nothing is written).
            ScheduleExists: the name is taken and ``replace`` is false.
        """
        now = self.clock()
        schedule = Schedule(name=name, factory=factory, cron=cron, every=every, tz=tz,
                            args=args or {}, store=store or {}, queue=queue,
                            priority=priority, missed=missed, catch_up_limit=catch_up_limit,
                            grace=grace, paused=paused, since=now, created_at=now)
        data = schedule.encode()
        Schedule.decode(data, path=self.path(name), name=name)   # what the scheduler will read
        with translated(f"adding schedule {name}"):
            self.client.retry(self.client.ensure_path, self.root)
            try:
                self.client.retry(self.client.create, self.path(name), data)
            except NodeExistsError:
                if not replace:
                    raise ScheduleExists(name) from None
                self.client.retry(self.client.set, self.path(name), data)
        return schedule

    def get(self, name: str) -> Schedule:
        """The definition of ``name``.

        Raises:
            ScheduleNotFound: no such schedule.
            MalformedData: its record does not validate.
        """
        return self._read(check_name(name))[0]

    def status(self, name: str) -> ScheduleStatus | None:
        """What the scheduler did for ``name`` (None before its first fire).

        Raises:
            ScheduleNotFound: no such schedule.
            MalformedData: the status record does not validate.
        """
        info = self.info(name)
        if info.status is None and info.status_version >= 0:   # there, but invalid
            return self._read_status(name)[0]
        return info.status

    def info(self, name: str) -> ScheduleInfo:
        """Definition, status and state of one schedule (broken ones included).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        check_name(name)
        return self._infos([name], missing_ok=False)[0]

    def list(self) -> list[ScheduleInfo]:
        """Every schedule, by name; broken ones carry the reason."""
        with translated("listing schedules"):
            try:
                names = self.client.retry(self.client.get_children, self.root)
            except NoNodeError:
                return []
        return self._infos(sorted(names), missing_ok=True)

    def pause(self, name: str) -> Schedule:
        """Stop firing ``name`` until :meth:`resume` (idempotent).

        Raises:
            ScheduleNotFound: no such schedule.
            MalformedData: its record does not validate (remove or add it again).
        """
        return self._update(name, lambda s: s if s.paused else s.replace(paused=True))

    def resume(self, name: str) -> Schedule:
        """Fire ``name`` again from now on: the fire times that passed while
        it was paused are not caught up. A status record that does not
        validate is reset.

        Raises:
            ScheduleNotFound: no such schedule.
            MalformedData: its definition does not validate.
        """
        schedule = self._update(name, lambda s: s if not s.paused
                                else s.replace(paused=False, since=self.clock()))
        try:
            self._read_status(name)
        except MalformedData:
            with translated(f"resetting the status of schedule {name}"):
                try:
                    self.client.retry(self.client.delete, self.status_path(name))
                except NoNodeError:
                    pass
        return schedule

    def remove(self, name: str) -> None:
        """Delete ``name`` and its status (fires already posted stay).

        Raises:
            ScheduleNotFound: no such schedule.
        """
        check_name(name)
        with translated(f"removing schedule {name}"):
            for _ in range(10):
                try:
                    self.client.retry(self.client.delete, self.status_path(name))
                except NoNodeError:
                    pass
                try:
                    self.client.retry(self.client.delete, self.path(name))
                    return
                except NoNodeError:
                    raise ScheduleNotFound(name) from None
                except NotEmptyError:   # the scheduler wrote a status meanwhile
                    continue
            self.client.retry(self.client.delete, self.path(name), recursive=True)

    # -- the scheduler's side ---------------------------------------------------------

    def load(self, watch: Callable[[Any], None] | None = None) -> list[ScheduleInfo]:
        """Every schedule with its status, setting ``watch`` on the list of
        schedules and on each definition (so any add, change or removal
        calls it once)."""
        with translated("loading schedules"):
            try:
                names = self.client.retry(self.client.get_children, self.root, watch=watch)
            except NoNodeError:
                # watch for the container itself: exists() sets a watch on creation
                self.client.retry(self.client.exists, self.root, watch=watch)
                return []
        return self._infos(sorted(names), missing_ok=True, watch=watch)

    def record(self, name: str, status: ScheduleStatus, version: int) -> int | None:
        """Write ``status`` over the version read (-1: create it); returns the
        new version, None when somebody else wrote it since (read it again).

        Raises:
            ScheduleNotFound: the schedule was removed.
        """
        data = status.encode()
        with translated(f"recording a fire of schedule {name}"):
            if version < 0:
                try:
                    self.client.retry(self.client.create, self.status_path(name), data)
                    return 0
                except NoNodeError:
                    raise ScheduleNotFound(name) from None
                except NodeExistsError:
                    return None
            try:
                return self.client.retry(self.client.set, self.status_path(name), data,
                                         version=version).version
            except BadVersionError:
                return None
            except NoNodeError:
                raise ScheduleNotFound(name) from None

    # -- reading ---------------------------------------------------------------------

    def _read(self, name: str) -> tuple[Schedule, int]:
        with translated(f"reading schedule {name}"):
            try:
                data, stat = self.client.retry(self.client.get, self.path(name))
            except NoNodeError:
                raise ScheduleNotFound(name) from None
        return Schedule.decode(data, path=self.path(name), name=name), stat.version

    def _read_status(self, name: str) -> tuple[ScheduleStatus | None, int]:
        with translated(f"reading the status of schedule {name}"):
            try:
                data, stat = self.client.retry(self.client.get, self.status_path(name))
            except NoNodeError:
                return None, -1
        return ScheduleStatus.decode(data, path=self.status_path(name)), stat.version

    def _infos(self, names: list[str], *, missing_ok: bool,
               watch: Callable[[Any], None] | None = None) -> list[ScheduleInfo]:
        """Definitions and statuses of ``names``, reads pipelined."""
        out: list[ScheduleInfo] = []
        with translated("reading schedules"):
            pending = [(name, self.client.get_async(self.path(name), watch=watch),
                        self.client.get_async(self.status_path(name))) for name in names]
            for name, definition, status in pending:
                try:
                    data, stat = definition.get(timeout=READ_TIMEOUT)
                except NoNodeError:
                    if not missing_ok:
                        raise ScheduleNotFound(name) from None
                    continue
                try:
                    status_data, status_stat = status.get(timeout=READ_TIMEOUT)
                except NoNodeError:
                    status_data, status_stat = None, None
                out.append(self._info(name, data, stat.version, status_data,
                                      status_stat.version if status_stat else -1))
        return out

    def _info(self, name: str, data: bytes, version: int, status_data: bytes | None,
              status_version: int) -> ScheduleInfo:
        broken = None
        schedule = status = None
        try:
            schedule = Schedule.decode(data, path=self.path(name), name=name)
        except MalformedData as exc:
            broken = str(exc)
        if status_data is not None:
            try:
                status = ScheduleStatus.decode(status_data, path=self.status_path(name))
            except MalformedData as exc:
                broken = broken or (f"{exc} (resume the schedule to reset its status)")
        return ScheduleInfo(name, schedule, status, broken, version, status_version)

    def _update(self, name: str, change: Callable[[Schedule], Schedule]) -> Schedule:
        check_name(name)
        while True:
            schedule, version = self._read(name)
            changed = change(schedule)
            if changed == schedule:
                return schedule
            with translated(f"updating schedule {name}"):
                try:
                    self.client.retry(self.client.set, self.path(name), changed.encode(),
                                      version=version)
                    return changed
                except BadVersionError:
                    continue   # changed meanwhile: apply ours on top of it
                except NoNodeError:
                    raise ScheduleNotFound(name) from None
