"""When a schedule fires: a cron expression in a time zone, or a fixed period.

* ``cron``: five fields (minute hour day-of-month month day-of-week, as in
  Debian's cron, evaluated by `cronsim <https://pypi.org/project/cronsim/>`_),
  or one of ``@yearly @annually @monthly @weekly @daily @midnight @hourly``,
  in an IANA time zone (:mod:`zoneinfo`, default UTC). Daylight saving
  follows Debian's cron: a time skipped by the clock change fires right
  after it; a repeated time fires once.
* ``every``: a period of at least one second, in whole milliseconds, aligned
  on the Unix epoch (``every 30s`` fires at :00 and :30 of each minute,
  ``every 1h`` on the hour UTC), so every scheduler computes the same fire
  times whatever moment it starts.

Fire times are epoch seconds. A fire time is the identity of a tick: the
scheduler derives the idempotency key of the posted job from it.

How it fails: a bad expression, time zone or period ->
:class:`~jobboard.errors.InvalidArgument`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from jobboard.errors import InvalidArgument

MIN_EVERY = 1.0
MAX_EVERY = 366 * 86400.0
CRON_MAX_LENGTH = 200
# Counting the fires an outage skipped walks them one by one for cron
# expressions; past this many the count stops (it is reported as a lower bound).
COUNT_LIMIT = 10_000

ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}


def check_zone(tz: str) -> ZoneInfo:
    """The time zone named ``tz``.

    Raises:
        InvalidArgument: not an IANA time zone name known here.
    """
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise InvalidArgument(f"tz must be an IANA time zone name such as Europe/Paris, "
                              f"not {tz!r}", argument="tz")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"unknown time zone {tz!r} (an IANA name such as "
                              f"Europe/Paris or UTC)", argument="tz") from exc


def _to_ms(seconds: float) -> int:
    # fire times are whole milliseconds; absorb float noise around them
    return math.floor(seconds * 1000 + 1e-3)


class Trigger:
    """The fire times of a schedule (exactly one of ``cron`` and ``every``).

    Args:
        cron: a cron expression (see the module docstring).
        every: a period in seconds (>= 1, whole milliseconds).
        tz: the time zone of ``cron`` (``every`` is always epoch-aligned).

    Raises:
        InvalidArgument: neither or both given, or a bad value.
    """

    def __init__(self, *, cron: str | None = None, every: float | None = None,
                 tz: str | None = None) -> None:
        if (cron is None) == (every is None):
            raise InvalidArgument("a schedule needs exactly one of cron and every",
                                  argument="cron")
        self.cron = cron
        self.every = every
        self.tz = tz
        self._every_ms = 0
        self._zone: ZoneInfo | None = None
        self._expression = ""
        if every is not None:
            if tz is not None:
                raise InvalidArgument("tz applies to cron schedules only (every is aligned "
                                      "on the Unix epoch)", argument="tz")
            if (isinstance(every, bool) or not isinstance(every, (int, float))
                    or not math.isfinite(every) or not MIN_EVERY <= every <= MAX_EVERY):
                raise InvalidArgument(f"every must be between {MIN_EVERY:g}s and 366 days, "
                                      f"not {every!r}", argument="every")
            self._every_ms = round(every * 1000)
            self.every = self._every_ms / 1000
            return
        if not isinstance(cron, str) or not cron.strip() or len(cron) > CRON_MAX_LENGTH:
            raise InvalidArgument(f"cron must be a cron expression of at most "
                                  f"{CRON_MAX_LENGTH} characters", argument="cron")
        expression = ALIASES.get(cron.strip().lower(), cron.strip())
        if len(expression.split()) != 5:
            raise InvalidArgument(f"cron expression {cron!r} must have five fields (minute "
                                  f"hour day-of-month month day-of-week) or be one of "
                                  f"{', '.join(ALIASES)}", argument="cron")
        self._zone = check_zone(tz if tz is not None else "UTC")
        self.tz = self._zone.key
        try:
            CronSim(expression, datetime.now(self._zone))
        except CronSimError as exc:
            raise InvalidArgument(f"bad cron expression {cron!r}: {exc}",
                                  argument="cron") from exc
        self._expression = expression

    def __repr__(self) -> str:
        if self.cron is not None:
            return f"Trigger(cron={self.cron!r}, tz={self.tz!r})"
        return f"Trigger(every={self.every!r})"

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} ({self.tz})"
        from jobboard.schedules._duration import format_duration
        return f"every {format_duration(self.every or 0)}"

    def next_after(self, moment: float) -> float | None:
        """The first fire time strictly after ``moment`` (None: never again)."""
        if self._every_ms:
            return (_to_ms(moment) // self._every_ms + 1) * self._every_ms / 1000
        start = datetime.fromtimestamp(moment, self._zone)
        try:
            return next(CronSim(self._expression, start)).timestamp()
        except StopIteration:   # nothing in the next 50 years (e.g. "0 0 31 2 *")
            return None

    def due(self, after: float, until: float, keep: int) -> tuple[list[float], int]:
        """Fire times in ``(after, until]``: the latest ``keep`` of them (oldest
        first) and how many older ones there are (a lower bound past
        :data:`COUNT_LIMIT` for cron)."""
        if until <= after:
            return [], 0
        if self._every_ms:
            first = _to_ms(after) // self._every_ms + 1
            last = _to_ms(until) // self._every_ms
            count = max(0, last - first + 1)
            kept = list(range(max(first, last - keep + 1), last + 1)) if keep > 0 else []
            return [k * self._every_ms / 1000 for k in kept], count - len(kept)
        latest: list[float] = []
        # reverse from just past `until`, so a fire exactly at `until` counts
        start = datetime.fromtimestamp(until, self._zone) + timedelta(microseconds=1)
        for moment in CronSim(self._expression, start, reverse=True):
            fire = moment.timestamp()
            if fire <= after or len(latest) >= keep:
                break
            latest.append(fire)
        latest.reverse()
        older = 0
        bound = latest[0] if latest else until + 1e-3
        fire = self.next_after(after)
        while fire is not None and fire < bound and fire <= until and older < COUNT_LIMIT:
            older += 1
            fire = self.next_after(fire)
        return latest, older
