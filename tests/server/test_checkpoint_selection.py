"""Which checkpoint a prediction's selector names: "latest", "best", "epoch/N".

A partial checkpoint (written when a run stops or is cancelled mid-epoch) carries the epoch and
metrics of the last epoch end, but its weights are partway into the next epoch: it may be the
latest, never the best, and never answers "epoch/N".
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from trainwire.server.errors import FailedPrecondition, InvalidArgument, NotFound
from trainwire.server.predictions import PredictionService
from trainwire.server.records import Checkpoint, Job
from trainwire.server.store import best_checkpoint, utcnow


def checkpoint(
    checkpoint_id: int, epoch: int, val_loss: float, is_partial: bool = False
) -> Checkpoint:
    return Checkpoint(
        id=checkpoint_id,
        job_id="j" * 32,
        epoch=epoch,
        step=checkpoint_id * 10,
        metrics={"loss": 1.0, "val_loss": val_loss},
        is_final=False,
        size_bytes=1,
        created_at=utcnow(),
        is_partial=is_partial,
    )


class StubJob:
    """All `resolve` reads of a job that has checkpoints: its id and training settings."""

    id = "j" * 32
    training: dict[str, Any] = {}  # noqa: RUF012 (read, never written)


@pytest.fixture
def service() -> PredictionService:
    # Selection reads nothing: no store, pool or cache is used.
    return PredictionService(cast(Any, None), cast(Any, None), 0)


def resolve(service: PredictionService, selector: str, checkpoints: list[Checkpoint]) -> int:
    return service.resolve(cast(Job, StubJob()), selector, checkpoints).id


def test_a_partial_checkpoint_is_the_latest_but_never_best_nor_an_epoch(
    service: PredictionService,
) -> None:
    checkpoints = [checkpoint(1, 1, 0.2), checkpoint(2, 2, 0.5), checkpoint(3, 2, 0.5, True)]
    assert resolve(service, "latest", checkpoints) == 3
    assert resolve(service, "", checkpoints) == 3
    assert resolve(service, "best", checkpoints) == 1
    assert resolve(service, "epoch/2", checkpoints) == 2


def test_a_partial_checkpoint_tying_with_the_best_is_not_best(
    service: PredictionService,
) -> None:
    checkpoints = [checkpoint(1, 1, 0.3), checkpoint(2, 1, 0.3, True)]
    assert resolve(service, "best", checkpoints) == 1
    assert resolve(service, "epoch/1", checkpoints) == 1
    assert best_checkpoint(checkpoints) == checkpoints[0]


def test_best_is_judged_by_the_jobs_early_stopping_monitor(service: PredictionService) -> None:
    checkpoints = [checkpoint(1, 1, 0.2), checkpoint(2, 2, 0.5)]
    checkpoints[1].metrics["val_accuracy"] = 0.9
    checkpoints[0].metrics["val_accuracy"] = 0.8
    job = StubJob()
    job.training = {"early_stopping": {"monitor": "val_accuracy"}}
    assert service.resolve(cast(Job, job), "best", checkpoints).id == 2
    assert resolve(service, "best", checkpoints) == 1, "without a monitor: the lowest val_loss"


def test_only_a_partial_checkpoint_answers_latest_alone(service: PredictionService) -> None:
    """A job cancelled in its first epoch."""
    checkpoints = [checkpoint(1, 0, 0.3, True)]
    assert resolve(service, "latest", checkpoints) == 1
    assert best_checkpoint(checkpoints) is None
    with pytest.raises(FailedPrecondition, match="no checkpoint taken at an epoch's end"):
        resolve(service, "best", checkpoints)
    with pytest.raises(NotFound, match=r"no checkpoint at epoch 0; it has \[\]"):
        resolve(service, "epoch/0", checkpoints)


def test_a_non_finite_score_is_never_best(service: PredictionService) -> None:
    checkpoints = [checkpoint(1, 1, 0.5), checkpoint(2, 2, float("nan"))]
    assert resolve(service, "best", checkpoints) == 1


def test_a_checkpoint_of_another_job_is_refused_naming_both_jobs(
    service: PredictionService,
) -> None:
    other = "0123456789abcdef" * 2
    with pytest.raises(InvalidArgument) as refused:
        resolve(service, f"jobs/{other}/checkpoints/1", [checkpoint(1, 1, 0.2)])
    assert refused.value.violations[0].field == "checkpoint"
    assert refused.value.message.startswith(
        f"checkpoint: names a checkpoint of jobs/{other}, but the request is for jobs/{StubJob.id}"
    )


@pytest.mark.parametrize(
    "selector", ["jobs/xyz/checkpoints/1", f"jobs/{'j' * 32}/checkpoints/one", "newest"]
)
def test_a_selector_of_no_known_shape_gets_the_list_of_shapes(
    service: PredictionService, selector: str
) -> None:
    with pytest.raises(InvalidArgument, match="must be '', 'latest', 'best', 'epoch/<n>'"):
        resolve(service, selector, [checkpoint(1, 1, 0.2)])
