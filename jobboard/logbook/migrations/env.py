"""Alembic environment for the logbook, driven from code.

``jobboard.logbook._db.upgrade`` passes the connection to migrate on (the one
holding the migration lock) in ``config.attributes``; there is no
alembic.ini. Offline (SQL script) mode is not supported.
"""

from alembic import context

from jobboard.logbook._db import VERSION_TABLE
from jobboard.logbook.models import Base

config = context.config
connection = config.attributes["connection"]

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
