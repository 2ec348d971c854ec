"""The shared SQL logbook: LogBook (one per job) -> FlowDetail -> AtomDetail.

Implementation lives in ``records`` (plain dataclasses), ``models`` (the
SQLAlchemy tables), ``_db`` (engines, error translation, the retry
classifier), ``store`` (:class:`Logbook`) and ``migrations`` (alembic).
Every write is fenced by the writer's claim token (see ``store``). A job
keeps one flow per attempt (``Logbook.attempts``); ``Logbook.check()`` is the
readiness probe that tells an outage (``LogbookUnavailable``) from a missing
or outdated schema (``LogbookSchemaError``) from a misconfiguration
(``LogbookError``).
"""

from jobboard.logbook.records import AtomDetail, Failure, FlowDetail, LogBookInfo
from jobboard.logbook.store import Logbook

__all__ = ["Logbook", "FlowDetail", "AtomDetail", "Failure", "LogBookInfo"]
