"""Which fire times to post now: the missed-fire policy, as a pure function.

The scheduler keeps a **cursor** per schedule (in its status znode): the
latest fire time it has handled, posted or skipped. Fire times after
``max(cursor, since)`` and not after ``now`` are due. Normally one is (the
scheduler woke for it); after an outage there may be many, and the
schedule's :class:`~jobboard.schedules.MissedFires` policy picks:

* ``skip``: the latest due fire, if it is at most ``grace`` seconds late;
* ``catch-up``: the latest ``catch_up_limit`` due fires.

The rest are skipped: the cursor moves past them and the status counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobboard.schedules._record import MissedFires, Schedule

# A cursor just before a fire time (fire times are whole milliseconds).
_BEFORE = 0.001


@dataclass(frozen=True)
class FirePlan:
    """What to do for one schedule now.

    Attributes:
        post: fire times to post, oldest first.
        skipped: how many due fire times are given up (older than ``post``).
        skip_to: the cursor once the skipped ones are given up (None: none are).
        next_fire: the first fire time after ``now`` (None: never again).
    """

    post: tuple[float, ...]
    skipped: int
    skip_to: float | None
    next_fire: float | None


def plan_fires(schedule: Schedule, cursor: float, now: float) -> FirePlan:
    """The plan for ``schedule`` whose status cursor is ``cursor``, at ``now``."""
    after = max(cursor, schedule.since)
    keep = schedule.catch_up_limit if schedule.missed is MissedFires.CATCH_UP else 1
    fires, older = schedule.trigger.due(after, now, keep)
    skip_to = None
    if schedule.missed is MissedFires.SKIP and fires and now - fires[-1] > schedule.grace:
        skip_to, fires, older = fires[-1], [], older + 1
    elif older:
        skip_to = fires[0] - _BEFORE
    return FirePlan(tuple(fires), older, skip_to, schedule.next_fire(max(now, after)))
