"""partial checkpoints

`checkpoints.is_partial` marks a checkpoint written when a run stopped or was cancelled partway
through an epoch: it carries the last whole epoch's number and metrics, but its weights are further
on, so it is never "best" and never answers "epoch/N". Rows from before are all taken as whole
epochs (false) here; 0009 then marks partial the ones a stop wrote, which their bytes tell apart
(the trainer state's `trainer.in_epoch`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 14:05:12.118310
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_partial", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("is_partial")
