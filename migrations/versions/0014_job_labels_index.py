"""job labels index (PostgreSQL)

ListJobs' label filter (`jobs list --label KEY=VALUE`) decoded the labels of the project's jobs
one by one, newest first, until a page was full: a label few jobs hold (an experiment, a run)
read the whole project, every page (40,000 jobs: 150-270 ms on PostgreSQL). A GIN index of each
job's labels as jsonb (jsonb_path_ops: containment only) gives the jobs holding a label; the
filter asks for them with `@>`. A job whose labels' text holds a NUL (stored before labels were
checked) is indexed as NULL, as its labels match no filter: PostgreSQL converts no such text to
jsonb. SQLite has neither jsonb nor GIN: nothing changes there.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 21:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_jobs_labels ON jobs USING gin ((CASE WHEN "
        "strpos(CAST(labels AS TEXT), '\\u0000') = 0 THEN CAST(labels AS JSONB) END) "
        "jsonb_path_ops)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_jobs_labels")
