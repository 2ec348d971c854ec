"""The logbook's SQL tables (SQLAlchemy 2.x typed declarative models).

``logbooks`` (one row per job, keyed by the job's uuid, holding the current
owner, its fencing token and the job's current attempt) -> ``flowdetails``
(one per attempt of the job: ``retry`` of a finished job starts a new one and
the earlier ones are kept) -> ``atomdetails`` (one per task and retry controller, unique by name within
the flow; ``kind`` "task" or "retry", ``version`` the task's version). Results, failures and ``meta`` are msgpack bytes. Timestamps are
UTC; SQLite and MySQL store them without a zone, so the store reattaches UTC
when it reads them back.

Schema changes go through an alembic revision in ``migrations/versions``;
``tests/test_logbook.py`` checks the migrated schema matches these models.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary,
                        MetaData, String, UniqueConstraint, text)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "LogBookRow", "FlowDetailRow", "AtomDetailRow", "Blob", "Timestamp",
           "JOB_ID_LENGTH", "NAME_LENGTH", "VALUE_COLUMNS"]

JOB_ID_LENGTH = 64
NAME_LENGTH = 255
STATE_LENGTH = 32
VERSION_LENGTH = 64
#: The atom columns a write sets, besides its name and timestamps.
VALUE_COLUMNS = ("kind", "state", "result", "failure", "revert_failure", "attempts", "meta",
                 "version", "started_at", "finished_at")

# MySQL: a plain BLOB stops at 64 KiB; DATETIME drops fractions of a second.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class LogBookRow(Base):
    __tablename__ = "logbooks"
    __table_args__ = (
        Index("ix_logbooks_created_at", "created_at"),
        Index("ix_logbooks_updated_at", "updated_at"),
    )

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    owner: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    token: Mapped[int | None] = mapped_column(BigInteger)
    #: The job's current attempt: writes go to the flow of this attempt.
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class FlowDetailRow(Base):
    __tablename__ = "flowdetails"
    __table_args__ = (UniqueConstraint("job_id", "attempt",
                                       name="uq_flowdetails_job_id_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(JOB_ID_LENGTH), ForeignKey("logbooks.job_id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    meta: Mapped[bytes] = mapped_column(Blob)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class AtomDetailRow(Base):
    __tablename__ = "atomdetails"
    __table_args__ = (UniqueConstraint("flow_id", "name", name="uq_atomdetails_flow_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("flowdetails.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    kind: Mapped[str] = mapped_column(String(STATE_LENGTH))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    result: Mapped[bytes | None] = mapped_column(Blob)
    failure: Mapped[bytes | None] = mapped_column(Blob)
    revert_failure: Mapped[bytes | None] = mapped_column(Blob)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[bytes] = mapped_column(Blob)
    #: The task's version that wrote the atom (NULL: saved before 0003).
    version: Mapped[str | None] = mapped_column(String(VERSION_LENGTH))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
