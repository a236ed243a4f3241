"""job labels table

ListJobs' label filter (`jobs list --label KEY=VALUE`) on SQLite decoded every job's JSON labels
with json_each, newest first, until a page was full: a label few jobs hold read the whole
project, every page (100,000 jobs: 300-440 ms). PostgreSQL asked a GIN index of the labels as
jsonb (0014) for the jobs holding them, then fetched and sorted all of them for each page, or
read the project's jobs newest first (75-110 ms for a label 100 to 10,000 older jobs hold).
`job_labels` holds a row per label of each job (its key and value, and the job's project and
creation time, which never change), indexed by (project, key, value, created_at, job_id): a
label's jobs are read in the listing's order from a page token's position, on both databases,
and the GIN index goes. It is filled here from the jobs' labels; a job whose labels' JSON text
holds a NUL (stored before labels were checked) gets no rows, as it matches no filter (and
PostgreSQL holds no NUL in text), and neither does a label whose value is not a string (none is
stored; no filter ever matched one) or whose key or value is longer than the 256 characters
labels have been held to since the first days (the columns' size: one stored before would
have failed the migration on PostgreSQL).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 23:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Labels the code never wrote are passed over, not failed on: labels that are not a JSON object,
# and of a key given twice the last value (as Python's json and PostgreSQL's jsonb keep it).
_FILL_SQLITE = (
    "INSERT OR REPLACE INTO job_labels (job_id, key, value, project, created_at) "
    "SELECT jobs.id, label.key, label.value, jobs.project, jobs.created_at "
    "FROM jobs, json_each(jobs.labels) AS label "
    "WHERE json_valid(jobs.labels) AND json_type(jobs.labels) = 'object' "
    "AND instr(jobs.labels, '\\u0000') = 0 AND label.type = 'text' "
    "AND length(label.key) <= 256 AND length(label.value) <= 256"
)
# The CASE keeps PostgreSQL from converting labels holding a NUL, which it refuses (as 0014's
# index expression did).
_FILL_POSTGRESQL = (
    "INSERT INTO job_labels (job_id, key, value, project, created_at) "
    "SELECT jobs.id, label.key, label.value #>> '{}', jobs.project, jobs.created_at "
    "FROM jobs CROSS JOIN LATERAL jsonb_each(CASE WHEN "
    "strpos(CAST(jobs.labels AS TEXT), '\\u0000') = 0 "
    "AND json_typeof(jobs.labels) = 'object' THEN CAST(jobs.labels AS JSONB) END) "
    "AS label WHERE jsonb_typeof(label.value) = 'string' "
    "AND length(label.key) <= 256 AND length(label.value #>> '{}') <= 256"
)


def upgrade() -> None:
    op.create_table(
        "job_labels",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_labels_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "key", name=op.f("pk_job_labels")),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.execute(_FILL_SQLITE if sqlite else _FILL_POSTGRESQL)
    # Built once the rows are in: one sort, not an insert into the index per row.
    op.create_index(
        "ix_job_labels_listing",
        "job_labels",
        ["project", "key", "value", "created_at", "job_id"],
        unique=False,
    )
    if not sqlite:
        op.execute("DROP INDEX ix_jobs_labels")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute(
            "CREATE INDEX ix_jobs_labels ON jobs USING gin ((CASE WHEN "
            "strpos(CAST(labels AS TEXT), '\\u0000') = 0 THEN CAST(labels AS JSONB) END) "
            "jsonb_path_ops)"
        )
    op.drop_index("ix_job_labels_listing", table_name="job_labels")
    op.drop_table("job_labels")
