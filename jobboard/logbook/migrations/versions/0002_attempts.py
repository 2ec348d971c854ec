"""Every attempt of a job keeps its flow: ``logbooks.attempt`` (the job's
current attempt) and ``flowdetails.attempt``; a flow is unique by
(job_id, attempt). Existing flows become attempt 1.

Revision ID: 0002
Revises: 0001

On SQLite the flowdetails table is rebuilt (batch mode); ``_db.upgrade``
turns foreign keys off around it so the rebuild does not cascade to the
atoms. On MySQL the new unique index is created before the old one is
dropped: the foreign key on job_id needs an index that starts with job_id.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _attempt() -> sa.Column:
    return sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False)


def upgrade() -> None:
    op.add_column("logbooks", _attempt())
    with op.batch_alter_table("flowdetails") as batch:
        batch.add_column(_attempt())
        batch.create_unique_constraint("uq_flowdetails_job_id_attempt", ["job_id", "attempt"])
        batch.drop_constraint("uq_flowdetails_job_id", type_="unique")


def downgrade() -> None:
    """Keeps only each job's current attempt (0001 holds one flow per job).
    The atoms of the others go explicitly: SQLite migrates with foreign keys
    off, so ON DELETE CASCADE would not remove them."""
    earlier = ("SELECT flowdetails.id FROM flowdetails JOIN logbooks"
               " ON logbooks.job_id = flowdetails.job_id"
               " WHERE flowdetails.attempt <> logbooks.attempt")
    op.execute(f"DELETE FROM atomdetails WHERE flow_id IN ({earlier})")
    op.execute(
        "DELETE FROM flowdetails WHERE attempt <> "
        "(SELECT logbooks.attempt FROM logbooks WHERE logbooks.job_id = flowdetails.job_id)")
    with op.batch_alter_table("flowdetails") as batch:
        batch.create_unique_constraint("uq_flowdetails_job_id", ["job_id"])
        batch.drop_constraint("uq_flowdetails_job_id_attempt", type_="unique")
        batch.drop_column("attempt")
    with op.batch_alter_table("logbooks") as batch:
        batch.drop_column("attempt")
