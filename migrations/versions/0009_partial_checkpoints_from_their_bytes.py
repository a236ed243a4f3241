"""partial checkpoints recognised by their bytes

0006 took every checkpoint written before it for a whole epoch's (`is_partial` false), but one a
stop or cancel wrote partway through an epoch says so in its own bytes: its trainer state's
`trainer.in_epoch` is 1 (what the worker marks partial since 0006). Taken for an epoch end, it tied
with the real one of its epoch and won "best" and "epoch/N" as the newer, and retention could
delete the real one. Every checkpoint neither final (its bytes are the weights alone) nor already
partial is read, one at a time, and marked partial when its state says an epoch was in progress.
One whose bytes are not a trainer state (damaged) is left as it is, and counted in a warning. The
downgrade keeps the marks: 0006 to 0008 hold the column too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 10:00:00.000000
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from trainwire.engine import load_state, saved_in_epoch

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("trainwire.server")

_checkpoints = sa.table(
    "checkpoints", sa.column("id", sa.Integer), sa.column("job_id", sa.String),
    sa.column("is_final", sa.Boolean), sa.column("is_partial", sa.Boolean),
)  # fmt: skip
_blobs = sa.table(
    "checkpoint_blobs", sa.column("checkpoint_id", sa.Integer), sa.column("data", sa.LargeBinary)
)


def _in_epoch(data: bytes) -> bool | None:
    """Whether a trainer state was saved partway through an epoch; None if `data` is not one."""
    try:
        arrays, _ = load_state(data)
        return saved_in_epoch(arrays)
    except (ValueError, KeyError):
        return None


def upgrade() -> None:
    connection = op.get_bind()
    candidates = connection.execute(
        sa.select(_checkpoints.c.id, _checkpoints.c.job_id)
        .where(_checkpoints.c.is_final == sa.false(), _checkpoints.c.is_partial == sa.false())
        .order_by(_checkpoints.c.id)
    ).all()
    partial: list[dict[str, int]] = []
    unreadable: list[str] = []
    for checkpoint_id, job_id in candidates:
        # One checkpoint's bytes at a time: together they may not fit in memory.
        data = connection.execute(
            sa.select(_blobs.c.data).where(_blobs.c.checkpoint_id == checkpoint_id)
        ).scalar_one_or_none()
        in_epoch = None if data is None else _in_epoch(bytes(data))
        if in_epoch is None:
            unreadable.append(f"jobs/{job_id}/checkpoints/{checkpoint_id}")
        elif in_epoch:
            partial.append({"checkpoint_id": checkpoint_id})
    if partial:
        connection.execute(
            _checkpoints.update()
            .where(_checkpoints.c.id == sa.bindparam("checkpoint_id"))
            .values(is_partial=True),
            partial,
        )
        log.info("marked %d checkpoints written partway through an epoch partial", len(partial))
    if unreadable:
        shown = ", ".join(unreadable[:10])
        more = f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
        log.warning(
            "%d checkpoints hold no readable trainer state, so whether they were written partway "
            "through an epoch is unknown; they stay whole epochs': %s%s",
            len(unreadable),
            shown,
            more,
        )


def downgrade() -> None:
    pass
