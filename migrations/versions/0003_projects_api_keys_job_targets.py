"""projects, api keys, job targets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 19:46:19.595852
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("salt", sa.LargeBinary(length=16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("project", sa.String(length=64), nullable=False, server_default="default")
        )
        batch_op.create_index(batch_op.f("ix_datasets_project"), ["project"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Rows from before projects belong to the open server's "default" project.
        batch_op.add_column(
            sa.Column("project", sa.String(length=64), nullable=False, server_default="default")
        )
        batch_op.add_column(sa.Column("target", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.alter_column("dataset_id", existing_type=sa.VARCHAR(length=32), nullable=True)
        batch_op.create_index(batch_op.f("ix_jobs_project"), ["project"], unique=False)
        batch_op.drop_constraint(batch_op.f("fk_jobs_dataset_id_datasets"), type_="foreignkey")
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_dataset_id_datasets"),
            "datasets",
            ["dataset_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    orphans = (
        op.get_bind()
        .execute(sa.text("SELECT id FROM jobs WHERE dataset_id IS NULL ORDER BY id"))
        .scalars()
        .all()
    )
    if orphans:
        # Before 0003 every job had its dataset; a NOT NULL column cannot take these rows back.
        shown = ", ".join(f"jobs/{job_id}" for job_id in orphans[:10])
        more = f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""
        raise RuntimeError(
            f"cannot downgrade below 0003: {len(orphans)} jobs have no dataset (it was deleted), "
            f"which revision 0002 cannot hold: {shown}{more}; delete them first "
            "(trainwire jobs delete)"
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_dataset_id_datasets"), type_="foreignkey")
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_dataset_id_datasets"), "datasets", ["dataset_id"], ["id"]
        )
        batch_op.drop_index(batch_op.f("ix_jobs_project"))
        batch_op.alter_column("dataset_id", existing_type=sa.VARCHAR(length=32), nullable=False)
        batch_op.drop_column("target")
        batch_op.drop_column("project")

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_project"))
        batch_op.drop_column("project")

    op.drop_table("api_keys")
