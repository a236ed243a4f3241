"""checkpoint blobs

Checkpoint bytes move from `checkpoints.data` to their own table, `checkpoint_blobs`, so listing
checkpoints never reads them (on SQLite, reading `created_at`, stored after `data`, walked the
whole overflow chain of the bytes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 01:25:50.288784
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_blobs",
        sa.Column("checkpoint_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_blobs_checkpoint_id_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", name=op.f("pk_checkpoint_blobs")),
    )
    op.execute(
        "INSERT INTO checkpoint_blobs (checkpoint_id, data) SELECT id, data FROM checkpoints"
    )
    # On SQLite this rebuilds `checkpoints`; migrations run with foreign keys off (see env.py),
    # so dropping the old table does not cascade to the blobs just copied.
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("data")


def downgrade() -> None:
    # Nullable first: existing rows have no value until the copy below.
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data", sa.LargeBinary(), nullable=True))

    op.execute(
        "UPDATE checkpoints SET data = (SELECT checkpoint_blobs.data FROM checkpoint_blobs "
        "WHERE checkpoint_blobs.checkpoint_id = checkpoints.id)"
    )
    op.drop_table("checkpoint_blobs")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
