"""request ids per project

`jobs.request_id` was unique across the whole database, so a CreateJob whose request id another
project had used was refused FAILED_PRECONDITION "already used", telling it that the other
project's job exists. Request ids are now unique within a project: (project, request_id). Rows
from before were unique globally, so they are unique per project too. A downgrade is refused,
naming them, while two projects' jobs share a request id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:02:40.512904
"""

from collections.abc import Sequence

import sqlalchemy as sa
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
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT request_id, id, project FROM jobs WHERE request_id IN (SELECT request_id "
                "FROM jobs WHERE request_id IS NOT NULL GROUP BY request_id HAVING count(*) > 1) "
                "ORDER BY request_id, project, id"
            )
        )
        .all()
    )
    if shared:
        # 0006 holds a request id once in the whole database: adding that constraint back would
        # fail on these rows with the database's own error, which names one and no remedy.
        holders: dict[str, list[str]] = {}
        for request_id, job_id, project in shared:
            holders.setdefault(request_id, []).append(f"jobs/{job_id} in {project}")
        shown = "; ".join(
            f"{request_id!r}: {', '.join(held)}" for request_id, held in list(holders.items())[:10]
        )
        more = f"; and {len(holders) - 10} more" if len(holders) > 10 else ""
        raise RuntimeError(
            f"cannot downgrade below 0007: {len(holders)} request ids are each used by jobs of "
            "more than one project, which revision 0006 (a request id once in the whole database) "
            f"cannot hold: {shown}{more}; for each, delete the jobs of every project but one "
            "first (trainwire jobs delete, with an API key of the job's project; cancel an "
            "unfinished one first)"
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_project_request_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_request_id"), ["request_id"])
