"""Atoms record the version of the task that wrote them:
``atomdetails.version`` (NULL for atoms saved before; the engine reads NULL
as version "1"). Retry controllers need no schema change: they are atoms of
kind "retry" whose history lives in ``meta``.

Revision ID: 0003
Revises: 0002

A nullable column: adding it is instant on PostgreSQL and MySQL and needs no
table rebuild on SQLite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("atomdetails", sa.Column("version", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("atomdetails") as batch:
        batch.drop_column("version")
