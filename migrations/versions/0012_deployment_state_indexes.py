"""deployment state indexes

The server reads the deployment's state every 5 s for its metrics (queue depth by state and
queue), and `trainwire status` reads it and the newest failures; neither had an index to read.
Queue depth grouped every job by (state, queue) from the table itself: on PostgreSQL a scan of
the whole heap (100,000 jobs: 260 MB, 160-195 ms), on SQLite a walk of ix_jobs_lease that looked
up every job's row for its queue (190-350 ms). ix_jobs_lease gains `queue` as its last column:
the counts are read from the index alone (still an entry per job, a fraction of the bytes), and
the rescue reads it as before. An index on (state, queue) would have served too, but SQLite,
without statistics, then took ix_jobs_queued for a claim of several queues and read it past
every other queue's QUEUED jobs. The newest failures were every FAILED job, fetched and sorted
by ended_at (8,000 of 100,000: 45-175 ms): ix_jobs_failed, partial, gives them newest first.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FAILED_ONLY = {
    "postgresql_where": sa.text("state = 'FAILED'"),
    "sqlite_where": sa.text("state = 'FAILED'"),
}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_lease")
        batch_op.create_index("ix_jobs_lease", ["state", "lease_expires_at", "queue"], unique=False)
        batch_op.create_index("ix_jobs_failed", ["ended_at"], unique=False, **_FAILED_ONLY)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_failed")
        batch_op.drop_index("ix_jobs_lease")
        batch_op.create_index("ix_jobs_lease", ["state", "lease_expires_at"], unique=False)
