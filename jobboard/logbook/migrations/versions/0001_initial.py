"""The initial logbook schema: logbooks -> flowdetails -> atomdetails.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types in models.py at this revision.
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "logbooks",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_logbooks"),
    )
    op.create_index("ix_logbooks_created_at", "logbooks", ["created_at"])
    op.create_index("ix_logbooks_updated_at", "logbooks", ["updated_at"])
    op.create_table(
        "flowdetails",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("meta", Blob, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flowdetails"),
        sa.ForeignKeyConstraint(["job_id"], ["logbooks.job_id"], ondelete="CASCADE",
                                name="fk_flowdetails_job_id"),
        sa.UniqueConstraint("job_id", name="uq_flowdetails_job_id"),
    )
    op.create_table(
        "atomdetails",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("flow_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("result", Blob, nullable=True),
        sa.Column("failure", Blob, nullable=True),
        sa.Column("revert_failure", Blob, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("meta", Blob, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_atomdetails"),
        sa.ForeignKeyConstraint(["flow_id"], ["flowdetails.id"], ondelete="CASCADE",
                                name="fk_atomdetails_flow_id"),
        sa.UniqueConstraint("flow_id", "name", name="uq_atomdetails_flow_id"),
    )


def downgrade() -> None:
    op.drop_table("atomdetails")
    op.drop_table("flowdetails")
    op.drop_index("ix_logbooks_updated_at", table_name="logbooks")
    op.drop_index("ix_logbooks_created_at", table_name="logbooks")
    op.drop_table("logbooks")
