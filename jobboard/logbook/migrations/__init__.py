"""Alembic migrations of the logbook schema, run from code by ``Logbook.upgrade()``."""
