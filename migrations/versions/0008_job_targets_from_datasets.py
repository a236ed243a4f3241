"""job targets from their datasets, and a reason on every cancelled job

0003 added `jobs.target` (what a job keeps of its dataset for predictions: task, classes, widths)
as `{}` on the jobs that existed then, so predicting with one of them failed. Every job whose
dataset still exists now gets the target its dataset gives, and every job's target gains the
dataset's feature names (which `predict --input` matches a CSV header against); what a target
already holds is kept. A job whose dataset was deleted keeps its target as it is. Jobs cancelled
while queued, or rescued while cancelling, were left without the reason the others record in
`error`; they get it. The downgrade leaves both in place (they are valid at 0007 too).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 16:05:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table(
    "jobs", sa.column("id", sa.String), sa.column("dataset_id", sa.String),
    sa.column("target", sa.JSON), sa.column("state", sa.String), sa.column("error", sa.Text),
)  # fmt: skip
# What every path to CANCELLED records since this revision (server/store.py).
CANCELLED_BY_REQUEST = "cancelled by request"
_datasets = sa.table(
    "datasets", sa.column("id", sa.String), sa.column("task", sa.String),
    sa.column("num_classes", sa.Integer), sa.column("feature_shape", sa.JSON),
    sa.column("target_shape", sa.JSON), sa.column("feature_names", sa.JSON),
    sa.column("class_names", sa.JSON),
)  # fmt: skip


def _target_of(dataset: Any) -> dict[str, Any]:
    """What `Dataset.target()` gives (server/records.py) as of this revision."""
    target_shape = list(dataset.target_shape)
    return {
        "task": dataset.task,
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names or []),
        "feature_names": list(dataset.feature_names or []),
        "num_features": int(dataset.feature_shape[1]),
        "target_width": 1 if len(target_shape) == 1 else int(target_shape[1]),
    }


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_jobs.c.id, _jobs.c.target, *(c for c in _datasets.c if c.name != "id")).join(
            _datasets, _datasets.c.id == _jobs.c.dataset_id
        )
    ).all()
    filled = [
        {"job_id": row.id, "filled": {**_target_of(row), **(row.target or {})}}
        for row in rows
        if "task" not in (row.target or {}) or "feature_names" not in (row.target or {})
    ]
    if filled:
        connection.execute(
            _jobs.update()
            .where(_jobs.c.id == sa.bindparam("job_id"))
            .values(target=sa.bindparam("filled", type_=sa.JSON)),
            filled,
        )
    connection.execute(
        _jobs.update()
        .where(_jobs.c.state == "CANCELLED", _jobs.c.error == "")
        .values(error=CANCELLED_BY_REQUEST)
    )


def downgrade() -> None:
    pass
