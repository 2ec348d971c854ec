"""Schedules: periodic and cron jobs posted by one scheduler at a time.

A schedule lives on the board (``{root}/schedules/{name}``) and names a flow
factory, its arguments and a trigger (a cron expression in a time zone, or a
fixed period). The :class:`Scheduler`, elected among the processes that run
one (conductors, unless ``--no-scheduler``), posts each fire exactly once
with an idempotency key made of the schedule's name and the fire time.

::

    from jobboard import Board
    from jobboard.schedules import Schedules

    with Board.connect("127.0.0.1:2181") as board:
        schedules = Schedules(board)
        schedules.add("nightly-report", "myapp.flows:report", cron="0 3 * * *",
                      tz="Europe/Paris", args={"format": "pdf"})
        schedules.add("heartbeat", "myapp.flows:ping", every=30)
        schedules.pause("heartbeat")
"""

from jobboard.errors import ScheduleExists, ScheduleNotFound
from jobboard.schedules._duration import format_duration, parse_duration
from jobboard.schedules._plan import FirePlan, plan_fires
from jobboard.schedules._record import MissedFires, Schedule, ScheduleStatus
from jobboard.schedules._scheduler import Scheduler
from jobboard.schedules._store import ScheduleInfo, Schedules
from jobboard.schedules._trigger import Trigger

__all__ = [
    "FirePlan",
    "MissedFires",
    "Schedule",
    "ScheduleExists",
    "ScheduleInfo",
    "ScheduleNotFound",
    "ScheduleStatus",
    "Scheduler",
    "Schedules",
    "Trigger",
    "format_duration",
    "parse_duration",
    "plan_fires",
]
