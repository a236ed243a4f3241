"""request ids per project

`jobs.request_id` was unique across the whole database, so a CreateJob whose request id another
project had used was refused FAILED_PRECONDITION "already used", telling it that the other
project's job exists. Request ids are now unique within a project: (project, request_id). Rows
from before were unique globally, so they are unique per project too. A downgrade fails if two
projects have used one request id since.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:02:40.512904
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_request_id"), type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_jobs_project_request_id"), ["project", "request_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_project_request_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_request_id"), ["request_id"])
