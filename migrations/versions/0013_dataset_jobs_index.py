"""a dataset's jobs in order

ListJobs filtered by dataset (`jobs list --dataset`) lists the dataset's jobs newest first. On
SQLite, without statistics, it read the project's index (project, created_at, id) backward and
looked up every job's row for its dataset, so a page of a dataset's jobs read the whole project
(40,000 jobs: 75-130 ms, and 150 ms with a state filter too). ix_jobs_dataset_id (dataset_id)
becomes (dataset_id, created_at, id): a page of a dataset's jobs is read in order from its
token's position, however many jobs the dataset has; the foreign key's SET NULL and
DeleteDataset's look for unfinished jobs read it by dataset_id as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 20:45:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_dataset_id")
        batch_op.create_index(
            "ix_jobs_dataset_id_created_at_id", ["dataset_id", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_dataset_id_created_at_id")
        batch_op.create_index("ix_jobs_dataset_id", ["dataset_id"], unique=False)
