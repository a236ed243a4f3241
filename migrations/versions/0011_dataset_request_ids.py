"""dataset request ids

UploadDataset was never retried: an upload whose answer was lost (a server restarting, a dropped
connection) could not tell whether its dataset was stored, and a second upload stored it twice.
`datasets.request_id` holds the upload's idempotency key (`DatasetHeader.request_id`), unique
within a project as `jobs.request_id` is since 0007: a retry finds the dataset its first attempt
stored, and of two concurrent uploads with one key the constraint lets one store its dataset.
Rows from before have none (NULL, which a unique constraint never compares equal).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 16:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_datasets_project_request_id"), ["project", "request_id"]
        )


def downgrade() -> None:
    # The keys go with the column; the datasets stay (0010 has no place for a key).
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_datasets_project_request_id"), type_="unique")
        batch_op.drop_column("request_id")
