"""What reaches the database driver from a Logbook: every statement, whichever
way it was sent (through SQLAlchemy, or PostgreSQL's one-statement writes,
which go to psycopg directly), and every transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from jobboard.logbook import Logbook


class DriverLog:
    """``statements``: (first word upper-cased, run in autocommit) of each
    statement; ``commits``: transactions committed through SQLAlchemy;
    ``before``: called with each statement's text before it runs."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, bool]] = []
        self.commits = 0
        self.before: Callable[[str], None] | None = None

    @property
    def words(self) -> list[str]:
        return [word for word, _ in self.statements]

    @property
    def transactions(self) -> int:
        """Committed transactions, a statement in autocommit counting as one."""
        return self.commits + sum(autocommit for _, autocommit in self.statements)

    def clear(self) -> None:
        self.statements.clear()
        self.commits = 0

    def saw(self, statement: str, autocommit: bool) -> None:
        if self.before is not None:
            self.before(statement)
        self.statements.append((statement.split(None, 1)[0].upper(), autocommit))


def logged_logbook(url: str, **options: Any) -> tuple[Logbook, DriverLog]:
    """A Logbook on ``url`` whose driver traffic is recorded; its pool's
    first connection is already set up (the dialect's own queries are not
    in the log)."""
    log = DriverLog()
    engine_options: dict[str, Any] = {}
    if url.startswith("postgresql"):
        import psycopg

        class Recording(psycopg.Cursor):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                log.saw(str(query), self.connection.autocommit)
                return super().execute(query, params, **kwargs)

            def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
                log.saw(str(query), self.connection.autocommit)
                return super().executemany(query, params_seq, **kwargs)

        engine_options["connect_args"] = {"cursor_factory": Recording}
    book = Logbook(url, auto_upgrade=True, engine_options=engine_options, **options)
    if not url.startswith("postgresql"):
        event.listen(book._engine, "before_cursor_execute",
                     lambda _conn, _cursor, statement, *_: log.saw(statement, False))

    def committed(_conn: Any) -> None:
        log.commits += 1

    event.listen(book._engine, "commit", committed)
    book.current_token("")
    log.clear()
    return book, log
