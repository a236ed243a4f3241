"""The job service's checks of CreateJob, against a real store (SQLite and PostgreSQL): what it
accepts must train and be shown; what would fail later is refused at once, naming the field."""

from __future__ import annotations

import base64
import itertools
import json
import tracemalloc
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from trainwire.engine import save_state
from trainwire.engine.model import Model
from trainwire.server.api import event_batches
from trainwire.server.config import Settings
from trainwire.server.convert import job_to_proto, training_to_proto
from trainwire.server.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from trainwire.server.jobs import JobService
from trainwire.server.models import JobRow
from trainwire.server.records import Dataset, JobState, MetricValue, TaskKind
from trainwire.server.store import Store, new_id, page_scope
from trainwire.server.training import (
    MAX_KEEP_CHECKPOINTS,
    check_model_fits_dataset,
    normalised_training,
    training_from_proto,
)
from trainwire.v1 import jobs_pb2, models_pb2, tensor_pb2

from .test_worker import regression_dataset, run_next


def dense(units: int) -> models_pb2.LayerSpec:
    return models_pb2.LayerSpec(dense=models_pb2.DenseLayer(units=units))


def activation(name: str, **params: float) -> models_pb2.LayerSpec:
    return models_pb2.LayerSpec(activation=models_pb2.ActivationLayer(name=name, params=params))


def request(
    dataset: Dataset, *layers: models_pb2.LayerSpec, **training: Any
) -> jobs_pb2.CreateJobRequest:
    return jobs_pb2.CreateJobRequest(
        dataset=f"datasets/{dataset.id}",
        model=models_pb2.ModelSpec(layers=layers or [dense(1)]),
        training=models_pb2.TrainingConfig(**training),
    )


def test_a_prelu_activation_layer_is_shown_as_it_was_given(store: Store) -> None:
    dataset = regression_dataset(store)
    service = JobService(store, Settings())
    job = service.create(
        request(dataset, dense(4), activation("prelu", init=0.1), dense(1)), "default"
    )
    assert job.model_spec["layers"][1] == {"type": "prelu", "init": 0.1}
    # Every answer that shows the job converts the stored spec: CreateJob, GetJob, ListJobs.
    for shown in (
        job,
        service.get(f"jobs/{job.id}", "default"),
        store.list_jobs(10, "", project="default")[0][0],
    ):
        layer = job_to_proto(shown).model.layers[1]
        assert layer.WhichOneof("kind") == "activation"
        assert layer.activation.name == "prelu" and dict(layer.activation.params) == {"init": 0.1}


def test_a_spec_that_cannot_be_shown_is_refused_not_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = regression_dataset(store)

    def cannot_show(spec: dict[str, Any]) -> models_pb2.ModelSpec:
        raise ValueError("layers[0].type must be one of: dense. Received: type='dense'")

    # raising=False: the check must call it by this name (a job stored is the failure).
    monkeypatch.setattr("trainwire.server.jobs.model_spec_to_proto", cannot_show, raising=False)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(request(dataset), "default")
    assert refused.value.violations[0].field == "model"
    assert "cannot express" in refused.value.message
    assert store.list_jobs(10, "")[0] == []


EARLY_VAL_LOSS = models_pb2.EarlyStopping(monitor="val_loss", patience=2)
REDUCE_ON_PLATEAU = models_pb2.ScheduleSpec(name="reduce_on_plateau")


def test_a_model_too_large_to_show_in_an_answer_is_refused_not_stored(store: Store) -> None:
    """Every answer about a job shows its normalised spec, many times the request's size:
    120,000 dense(4) layers sent in 720 KB were stored, queued and trained while CreateJob
    answered RESOURCE_EXHAUSTED, and every later GetJob or ListJobs showing the job failed."""
    dataset = regression_dataset(store)
    service = JobService(store, Settings(max_message_bytes=64 * 1024))
    many = request(dataset, *[dense(4)] * 2000, dense(1))
    with pytest.raises(ResourceExhausted, match=r"^model.layers is limited to 30720\. ") as refused:
        service.create(many, "default")
    assert "TRAINWIRE_MAX_MESSAGE_BYTES" in refused.value.message
    assert store.list_jobs(10, "")[0] == []
    job = service.create(request(dataset, *[dense(4)] * 500, dense(1)), "default")
    assert len(job_to_proto(job).model.layers) == 501


def test_metrics_are_paged_to_fit_the_message_limit_and_joined_in_order(store: Store) -> None:
    """A job logging every step had more points than one ListJobMetrics answer could carry, and
    then none could be read: pages now hold what fits, and follow on by (name, step)."""
    service = JobService(store, Settings(max_message_bytes=64 * 1024))
    job = service.create(request(regression_dataset(store)), "default")
    claim = store.claim_job("w")
    assert claim is not None
    steps = range(1, 4001)
    recorded = [
        *(MetricValue("batch_loss", s, 1, s / 7) for s in steps),
        *(MetricValue("loss", s, s, 1 / s) for s in range(1, 11)),
        # Gaps in the steps, and steps past those of the metric before it.
        *(MetricValue("accuracy", s, s // 100, s / 9000) for s in range(7, 9000, 300)),
    ]
    store.record_metrics(claim, recorded)
    expected = sorted(recorded, key=lambda value: (value.name, value.step))
    name = f"jobs/{job.id}"
    with pytest.raises(ResourceExhausted, match=r"page_size: 0 asks for every point") as refused:
        service.metrics(jobs_pb2.ListJobMetricsRequest(name=name), "default")
    assert "is limited to" in refused.value.message  # the SDK does not retry it
    points: list[MetricValue] = []
    token, pages = "", 0
    while True:
        page = jobs_pb2.ListJobMetricsRequest(name=name, page_size=2**31 - 1, page_token=token)
        series, token = service.metrics(page, "default")
        points += [value for values in series.values() for value in values]
        pages += 1
        shown = jobs_pb2.ListJobMetricsResponse(
            series=[
                jobs_pb2.MetricSeries(
                    name=metric,
                    steps=[v.step for v in values],
                    epochs=[v.epoch for v in values],
                    values=[v.value for v in values],
                )
                for metric, values in series.items()
            ],
            next_page_token=token,
        )
        assert shown.ByteSize() <= Settings(max_message_bytes=64 * 1024).max_answer_bytes()
        if not token:
            break
    assert pages == 2 and points == expected
    # Every page size, of every metric or of some: each point once, in (name, step) order.
    for names, page_sizes in (([], (999, 4096)), (["loss", "accuracy"], (1, 3, 7, 40))):
        for page_size in page_sizes:
            points, token = [], ""
            while True:
                asked = jobs_pb2.ListJobMetricsRequest(
                    name=name, metric_names=names, page_size=page_size, page_token=token
                )
                series, token = service.metrics(asked, "default")
                assert sum(len(values) for values in series.values()) <= page_size
                points += [value for metric in sorted(series) for value in series[metric]]
                if not token:
                    break
            assert points == [v for v in expected if not names or v.name in names], page_size
    only_loss = jobs_pb2.ListJobMetricsRequest(name=name, metric_names=["loss"], page_size=4)
    series, token = service.metrics(only_loss, "default")
    assert [v.step for v in series["loss"]] == [1, 2, 3, 4] and token
    only_loss.page_token = token
    assert [v.step for v in service.metrics(only_loss, "default")[0]["loss"]] == [5, 6, 7, 8]
    with pytest.raises(InvalidArgument, match="page_token: is not a token"):
        service.metrics(jobs_pb2.ListJobMetricsRequest(name=name, page_token="x"), "default")


@pytest.mark.parametrize(
    ("training", "field", "says"),
    [
        ({"early_stopping": EARLY_VAL_LOSS}, "training.early_stopping.monitor", "holds out none"),
        # 40 examples * 0.02 = 0.8: the worker's split holds out int(0.8) = 0 rows.
        (
            {"early_stopping": EARLY_VAL_LOSS, "validation_fraction": 0.02},
            "training.early_stopping.monitor",
            "holds out none of the 40 examples",
        ),
        (
            {
                "early_stopping": models_pb2.EarlyStopping(monitor="bogus"),
                "validation_fraction": 0.25,
            },
            "training.early_stopping.monitor",
            "it logs: loss, mae, r2, val_loss, val_mae, val_r2",
        ),
        ({"schedule": REDUCE_ON_PLATEAU}, "training.schedule", "monitors 'val_loss'"),
        (
            {"early_stopping": models_pb2.EarlyStopping(monitor="val_loss\x00")},
            "training.early_stopping.monitor",
            "U+0000 at position 8",
        ),
        (
            {"early_stopping": models_pb2.EarlyStopping(monitor="v" * 100_000)},
            "training.early_stopping.monitor",
            "at most 64 characters",
        ),
    ],
)
def test_a_monitor_the_fit_will_not_log_is_refused_at_create(
    store: Store, training: dict[str, Any], field: str, says: str
) -> None:
    dataset = regression_dataset(store)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(request(dataset, **training), "default")
    assert refused.value.violations[0].field == field
    assert says in refused.value.message
    assert store.list_jobs(10, "")[0] == []


@pytest.mark.parametrize(
    ("training", "field", "received"),
    [
        (
            {"schedule": models_pb2.ScheduleSpec(params={"step_size": 3, "gamma": 0.5})},
            "training.schedule.params",
            "given without training.schedule.name; name a schedule or drop the params. "
            "Received: 'gamma'=0.5",
        ),
        (
            {"early_stopping": models_pb2.EarlyStopping(patience=-3)},
            "training.early_stopping.patience",
            "Received: -3",
        ),
        (
            {"early_stopping": models_pb2.EarlyStopping(min_delta=float("nan"))},
            "training.early_stopping.min_delta",
            "Received: nan",
        ),
        (
            {"early_stopping": models_pb2.EarlyStopping(restore_best_weights=True)},
            "training.early_stopping.restore_best_weights",
            "Received: True",
        ),
    ],
)
def test_settings_without_the_name_that_turns_them_on_are_refused_not_ignored(
    store: Store, training: dict[str, Any], field: str, received: str
) -> None:
    dataset = regression_dataset(store)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(request(dataset, **training), "default")
    violation = refused.value.violations[0]
    assert violation.field == field
    assert violation.description.endswith(received)
    if field.startswith("training.early_stopping"):
        assert "given without training.early_stopping.monitor" in violation.description
    assert store.list_jobs(10, "")[0] == []


def test_a_monitor_is_accepted_when_the_workers_split_holds_out_one_row(store: Store) -> None:
    dataset = regression_dataset(store)
    # 40 examples * 0.025 = 1 row held out: val_loss is logged, and the job trains.
    job = JobService(store, Settings()).create(
        request(
            dataset,
            early_stopping=EARLY_VAL_LOSS,
            schedule=REDUCE_ON_PLATEAU,
            validation_fraction=0.025,
            epochs=2,
        ),
        "default",
    )
    assert run_next(store) is JobState.SUCCEEDED, store.get_job(job.id).error


def test_a_fraction_that_holds_out_no_row_trains_without_validation(store: Store) -> None:
    """40 examples * 0.02 = 0.8: the worker holds out int(0.8) = 0 rows and passes no
    validation set (the engine refuses one of 0 rows); with nothing monitoring val_* keys the
    job trains and logs none of them, rather than failing after an epoch."""
    dataset = regression_dataset(store)
    job = JobService(store, Settings()).create(
        request(dataset, validation_fraction=0.02, epochs=2), "default"
    )
    assert run_next(store) is JobState.SUCCEEDED, store.get_job(job.id).error
    names = {value.name for value in store.metric_values(job.id)}
    assert "loss" in names and not any(name.startswith("val_") for name in names)


def test_a_model_is_checked_without_being_allocated(store: Store) -> None:
    """5,000,001 float32 parameters: building the model (weights, gradients, Adam's two slots)
    to check it would take over 80 MB."""
    dataset = regression_dataset(store)
    service = JobService(store, Settings())
    tracemalloc.start()
    try:
        job = service.create(request(dataset, dense(1_000_000), dense(1)), "default")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert job.model_spec["layers"][0]["units"] == 1_000_000
    assert peak < 8 << 20, f"CreateJob allocated {peak} bytes at its peak"


def test_activations_past_max_batch_bytes_are_refused_naming_the_limit(store: Store) -> None:
    dataset = regression_dataset(store)  # 3 features, 40 examples
    service = JobService(store, Settings(max_batch_bytes=500_000))
    wide = (dense(10_000), dense(1))
    # Batches of 4 rows: 4 x 10,000 units x 4 bytes = 160,000 bytes.
    service.create(request(dataset, *wide, batch_size=4), "default")
    # Validation passes take max(batch_size, 1024) rows, here the 20 held out: 800,000 bytes.
    with pytest.raises(ResourceExhausted) as refused:
        service.create(request(dataset, *wide, batch_size=4, validation_fraction=0.5), "default")
    assert refused.value.message.startswith(
        "max_batch_bytes is limited to 500000. Received: 800000 (20 rows in a pass x 10000 "
    )
    # float64 doubles it: 4 rows x 10,000 x 8 = 320,000; 16 rows, 1,280,000.
    with pytest.raises(ResourceExhausted, match="Received: 1280000"):
        service.create(
            request(dataset, *wide, batch_size=16, dtype=tensor_pb2.DATA_TYPE_FLOAT64), "default"
        )
    assert len(store.list_jobs(10, "")[0]) == 1


def test_a_growing_decay_schedule_is_refused_at_create(store: Store) -> None:
    dataset = regression_dataset(store)
    schedule = models_pb2.ScheduleSpec(name="exponential", params={"gamma": 1e10})
    with pytest.raises(InvalidArgument, match=r"gamma must be a number in \(0.0, 1.0\]"):
        JobService(store, Settings()).create(request(dataset, schedule=schedule), "default")


def test_a_retry_gets_its_job_even_where_the_request_would_now_be_refused(store: Store) -> None:
    """The retry of a CreateJob whose answer was lost must find the job it created: after a
    restart with a lower max_epochs, or once that job's dataset was deleted, the same request
    sent fresh is refused."""
    dataset = regression_dataset(store)
    create = request(dataset, epochs=5)
    create.request_id = "retried"
    job = JobService(store, Settings()).create(create, "default")
    restarted = JobService(store, Settings(max_epochs=2))
    assert restarted.create(create, "default").id == job.id
    store.cancel_job(job.id)
    store.delete_dataset(dataset.id)
    assert restarted.create(create, "default").id == job.id
    assert [j.id for j in store.list_jobs(10, "")[0]] == [job.id]
    # A request_id is still checked first.
    create.request_id = "x" * 129
    with pytest.raises(InvalidArgument) as refused:
        restarted.create(create, "default")
    assert refused.value.violations[0].field == "request_id"


@pytest.mark.parametrize(
    ("change", "differing"),
    [
        (lambda create: setattr(create.training, "epochs", 3), "training.epochs"),
        (lambda create: create.model.layers.insert(0, dense(4)), "model.layers"),
        (lambda create: create.labels.update(team="b"), "labels.team"),
        (lambda create: setattr(create, "display_name", "other"), "display_name"),
        (lambda create: setattr(create, "queue", "gpu"), "queue"),
        (lambda create: setattr(create, "priority", 1), "priority"),
        (lambda create: setattr(create, "max_attempts", 7), "max_attempts"),
    ],
)
def test_a_request_id_sent_with_another_request_is_refused(
    store: Store, change: Any, differing: str
) -> None:
    """The second request was answered with the first one's job: what it changed was dropped
    without a word."""
    dataset = regression_dataset(store)
    service = JobService(store, Settings())
    create = request(dataset)
    create.request_id = "abc"
    job = service.create(create, "default")
    # The defaults spelled out are the same request, as stored.
    spelled_out = request(dataset, epochs=10, batch_size=32, loss="mse")
    spelled_out.request_id, spelled_out.queue = "abc", "default"
    spelled_out.max_attempts = Settings().default_max_attempts
    assert service.create(spelled_out, "default").id == job.id
    change(create)
    with pytest.raises(AlreadyExists, match=rf"used by jobs/{job.id}, .* different {differing};"):
        service.create(create, "default")
    assert len(store.list_jobs(10, "")[0]) == 1


def test_a_retry_of_a_request_an_older_server_took_gets_its_job(store: Store) -> None:
    """Schedule params without a schedule, and early stopping settings without a monitor, were
    dropped before CreateJob refused them: the retry of such a request, whose first answer was
    lost before an upgrade, was refused INVALID_ARGUMENT instead of getting its job."""
    dataset = regression_dataset(store)
    stored = request(dataset)  # what an older server stored for `sent`: the settings dropped
    stored.request_id = "before-upgrade"
    job = JobService(store, Settings()).create(stored, "default")
    sent = request(dataset)
    sent.request_id = "before-upgrade"
    sent.training.early_stopping.patience = 5
    sent.training.schedule.params["gamma"] = 0.5
    assert JobService(store, Settings()).create(sent, "default").id == job.id
    sent.request_id = "after-upgrade"  # sent fresh, it is refused
    with pytest.raises(InvalidArgument, match="given without training"):
        JobService(store, Settings()).create(sent, "default")


def test_keep_checkpoints_above_its_bound_is_refused_naming_the_field_and_the_bound(
    store: Store,
) -> None:
    """Every kept checkpoint is in the one ListCheckpoints page a client from before paging
    reads (an unpaged answer of some 30,000 passed the 4 MiB message limit)."""
    dataset = regression_dataset(store)
    service = JobService(store, Settings())
    with pytest.raises(InvalidArgument) as refused:
        service.create(request(dataset, keep_checkpoints=MAX_KEEP_CHECKPOINTS + 1), "default")
    assert refused.value.violations[0].field == "training.keep_checkpoints"
    assert f"must be in [0, {MAX_KEEP_CHECKPOINTS}] (0: keep 3)" in refused.value.message
    assert "Received: 1001" in refused.value.message and MAX_KEEP_CHECKPOINTS == 1000
    assert store.list_jobs(10, "")[0] == []
    job = service.create(request(dataset, keep_checkpoints=MAX_KEEP_CHECKPOINTS), "default")
    assert job.training["keep_checkpoints"] == MAX_KEEP_CHECKPOINTS


def test_a_retry_of_a_job_stored_with_more_checkpoints_kept_than_now_allowed_gets_its_job(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server stored keep_checkpoints above today's bound: the retry of that request,
    whose first answer was lost before the upgrade, still finds its job."""
    dataset = regression_dataset(store)
    sent = request(dataset, keep_checkpoints=5000)
    sent.request_id = "before-the-bound"
    monkeypatch.setattr("trainwire.server.training.MAX_KEEP_CHECKPOINTS", 10**6)
    job = JobService(store, Settings()).create(sent, "default")
    monkeypatch.undo()
    assert JobService(store, Settings()).create(sent, "default").id == job.id
    sent.request_id = "after-the-bound"  # sent fresh, it is refused
    with pytest.raises(InvalidArgument, match=r"keep_checkpoints: must be in \[0, 1000\]"):
        JobService(store, Settings()).create(sent, "default")


def test_a_retry_that_reaches_a_server_with_another_default_gets_its_job(store: Store) -> None:
    """max_attempts 0 asks for the server's default: a retry after a restart that changed it
    (or sent to another server) was refused ALREADY_EXISTS as a different request."""
    create = request(regression_dataset(store))
    create.request_id = "abc"
    job = JobService(store, Settings(default_max_attempts=3)).create(create, "default")
    retried = JobService(store, Settings(default_max_attempts=5)).create(create, "default")
    assert retried.id == job.id and retried.max_attempts == 3


def test_a_request_id_sent_for_another_dataset_is_refused(store: Store) -> None:
    first, second = regression_dataset(store), regression_dataset(store)
    service = JobService(store, Settings())
    create = request(first)
    create.request_id = "abc"
    job = service.create(create, "default")
    create.dataset = f"datasets/{second.id}"
    with pytest.raises(AlreadyExists, match=f"jobs/{job.id}, created with a different dataset;"):
        service.create(create, "default")


def test_an_empty_label_key_is_refused(store: Store) -> None:
    create = request(regression_dataset(store))
    create.labels[""] = "x"
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(create, "default")
    assert refused.value.violations[0] == FieldViolation("labels", "label keys must not be empty")


@pytest.mark.parametrize(
    ("task", "metrics"),
    [
        (TaskKind.REGRESSION, ["mae", "r2"]),
        (TaskKind.BINARY_CLASSIFICATION, ["accuracy"]),
        (TaskKind.MULTICLASS_CLASSIFICATION, ["accuracy"]),
    ],
)
def test_empty_metrics_take_the_defaults_models_proto_documents(
    store: Store, task: TaskKind, metrics: list[str]
) -> None:
    dataset = replace(regression_dataset(store), task=task)
    assert training_from_proto(models_pb2.TrainingConfig(), dataset)["metrics"] == metrics


def test_two_units_on_binary_labels_are_refused_saying_what_to_change(store: Store) -> None:
    # The README's first script once did this; the message must give both ways out.
    dataset = replace(regression_dataset(store), task=TaskKind.BINARY_CLASSIFICATION)
    summary = Model.describe_spec({"input_dim": 3, "layers": [{"type": "dense", "units": 2}]})
    with pytest.raises(InvalidArgument) as refused:
        check_model_fits_dataset(summary, {"loss": "binary_cross_entropy"}, dataset)
    violation = refused.value.violations[0]
    assert violation.field == "model.layers"
    assert "gives 2 outputs" in violation.description
    assert "give the last layer 1 unit" in violation.description
    assert 'task "multiclass"' in violation.description


def test_one_unit_on_three_classes_is_refused_in_the_singular(store: Store) -> None:
    dataset = replace(
        regression_dataset(store), task=TaskKind.MULTICLASS_CLASSIFICATION, num_classes=3
    )
    summary = Model.describe_spec({"input_dim": 3, "layers": [{"type": "dense", "units": 1}]})
    with pytest.raises(InvalidArgument) as refused:
        check_model_fits_dataset(summary, {"loss": "softmax_cross_entropy"}, dataset)
    assert refused.value.violations[0].description == (
        "the last layer gives 1 output but the dataset needs one logit per class (3 classes): "
        "give the last layer 3 units"
    )


def test_more_units_than_classes_are_refused_naming_the_class_count_to_upload(
    store: Store,
) -> None:
    """Labels 0-8 of ten classes (digits without its 9s) count 9 classes. The refusal of a
    10-unit head said only "give the last layer 9 units", a model that can never predict 9."""
    dataset = replace(
        regression_dataset(store), task=TaskKind.MULTICLASS_CLASSIFICATION, num_classes=9
    )
    summary = Model.describe_spec({"input_dim": 3, "layers": [{"type": "dense", "units": 10}]})
    with pytest.raises(InvalidArgument) as refused:
        check_model_fits_dataset(summary, {"loss": "softmax_cross_entropy"}, dataset)
    assert refused.value.violations[0].description == (
        "the last layer gives 10 outputs but the dataset needs one logit per class (9 classes): "
        "give the last layer 9 units, or, if the data has 10 classes and some are absent from "
        "these rows, upload it again with num_classes=10"
    )


def labelled_dataset(store: Store, task: TaskKind, classes: int) -> Dataset:
    """`regression_dataset`'s record, stored again with `classes` class labels as its targets."""
    base = regression_dataset(store)
    x = np.random.default_rng(1).normal(size=base.feature_shape).astype(np.float32)
    y = np.arange(base.num_examples, dtype=np.int64) % classes
    record = replace(
        base, id=new_id(), task=task, num_classes=classes, target_dtype="int64", sha256="1" * 64
    )
    return store.create_dataset(record, save_state({"features": x, "targets": y}))


@pytest.mark.parametrize(
    ("task", "units", "metrics", "fitting", "shape"),
    [
        (TaskKind.MULTICLASS_CLASSIFICATION, 3, ["accuracy", "r2"], "use accuracy", "[40]"),
        (TaskKind.MULTICLASS_CLASSIFICATION, 3, ["mae"], "use accuracy", "[40]"),
        (TaskKind.BINARY_CLASSIFICATION, 1, ["r2"], "use accuracy", "[40]"),
        (TaskKind.REGRESSION, 1, ["accuracy"], "use mae, r2", "[40]"),
    ],
)
def test_a_metric_that_does_not_fit_the_targets_is_refused_naming_the_ones_that_do(
    store: Store, task: TaskKind, units: int, metrics: list[str], fitting: str, shape: str
) -> None:
    # mae or r2 of three logits against one label failed the job at its first epoch ("cannot
    # reshape array of size 30 into shape (30,3)"); accuracy of a regression meant nothing.
    if task is TaskKind.REGRESSION:
        dataset = regression_dataset(store)
    else:
        dataset = labelled_dataset(store, task, 3 if units == 3 else 2)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(
            request(dataset, dense(units), metrics=metrics), "default"
        )
    violation = refused.value.violations[0]
    assert violation.field == f"training.metrics[{len(metrics) - 1}]"
    assert f"{metrics[-1]!r} does not fit datasets/{dataset.id}" in violation.description
    assert f"{task.value.lower()} with" in violation.description
    assert f"of shape {shape}: {fitting}," in violation.description
    assert store.list_jobs(10, "")[0] == []


@pytest.mark.parametrize("task", [TaskKind.BINARY_CLASSIFICATION, TaskKind.REGRESSION])
def test_metrics_that_fit_the_targets_are_accepted(store: Store, task: TaskKind) -> None:
    dataset = (
        regression_dataset(store)
        if task is TaskKind.REGRESSION
        else labelled_dataset(store, task, 2)
    )
    metrics = ["accuracy"] if task.is_classification else ["r2", "mae"]
    job = JobService(store, Settings()).create(request(dataset, metrics=metrics), "default")
    assert job.training["metrics"] == metrics


def test_a_watch_after_the_jobs_last_event_is_refused_naming_it(store: Store) -> None:
    """A watch after a number the job's events never reached stayed silent until its deadline
    while the job ran, and ended at once, as if caught up, once it had finished."""
    service = JobService(store, Settings())
    job = service.create(request(regression_dataset(store), epochs=1), "default")
    name = f"jobs/{job.id}"
    assert service.watched_job(name, 1, "default") == job.id  # the QUEUED event: caught up
    with pytest.raises(InvalidArgument) as beyond:
        service.watched_job(name, 2, "default")
    assert beyond.value.violations[0].field == "after_sequence"
    assert beyond.value.message.startswith(
        f"after_sequence: is beyond {name}'s last event, number 1. Received: 2"
    )
    assert run_next(store) is JobState.SUCCEEDED
    last = store.job_events(job.id)[-1].sequence
    assert service.watched_job(name, last, "default") == job.id
    assert service.new_events(job.id, last, "default") == ([], True)  # over, nothing replayed
    with pytest.raises(InvalidArgument, match=rf"last event, number {last}\. Received: {last + 1}"):
        service.watched_job(name, last + 1, "default")


def test_a_parameter_name_is_quoted_where_an_error_shows_it(store: Store) -> None:
    """A NUL or a control character in a name the client sent reached the message raw."""
    service = JobService(store, Settings())
    adam = models_pb2.OptimizerSpec(name="adam", params={"a\x00\x07": 1.0})
    with pytest.raises(InvalidArgument) as refused:
        service.create(request(regression_dataset(store), optimizer=adam), "default")
    assert "Received: 'a\\x00\\x07'=1.0" in refused.value.message
    assert "\x00" not in refused.value.message and "\x07" not in refused.value.message


@pytest.mark.parametrize(
    ("optimizer", "flag"),
    [
        (
            models_pb2.OptimizerSpec(name="sgd", params={"momentum": 0.9, "nesterov": 0.5}),
            "nesterov",
        ),
        (models_pb2.OptimizerSpec(name="rmsprop", params={"centered": -1.0}), "centered"),
    ],
)
def test_an_optimizer_flag_other_than_one_or_zero_is_refused_naming_it(
    store: Store, optimizer: models_pb2.OptimizerSpec, flag: str
) -> None:
    """The engine refused it, naming no field: the refusal named `training`."""
    service = JobService(store, Settings())
    with pytest.raises(InvalidArgument) as refused:
        service.create(request(regression_dataset(store), optimizer=optimizer), "default")
    assert refused.value.violations[0].field == f"training.optimizer.params['{flag}']"
    assert "1 (true) or 0 (false)" in refused.value.message
    accepted = models_pb2.OptimizerSpec(name=optimizer.name, params={flag: 1.0, "momentum": 0.5})
    assert service.create(request(regression_dataset(store), optimizer=accepted), "default")


def test_a_learning_rate_given_both_in_its_field_and_in_params_is_refused_naming_it(
    store: Store,
) -> None:
    """The one in params replaced training.optimizer.learning_rate without a word: a job asked
    for 0.1 trained at 0.5."""
    service = JobService(store, Settings())
    both = models_pb2.OptimizerSpec(name="adam", learning_rate=0.1, params={"learning_rate": 0.5})
    with pytest.raises(InvalidArgument) as refused:
        service.create(request(regression_dataset(store), optimizer=both), "default")
    assert refused.value.violations == (
        FieldViolation(
            "training.optimizer.params['learning_rate']",
            "is given in training.optimizer.learning_rate too (0.1); give it once, in "
            "training.optimizer.learning_rate. Received: 'learning_rate'=0.5",
        ),
    )
    # Either alone is taken, as before.
    alone = models_pb2.OptimizerSpec(name="adam", params={"learning_rate": 0.5})
    job = service.create(request(regression_dataset(store), optimizer=alone), "default")
    assert job.training["optimizer"]["learning_rate"] == 0.5


@pytest.mark.parametrize(
    ("training", "field", "says"),
    [
        (
            {"optimizer": models_pb2.OptimizerSpec(name="sgd", params={"momentum": -1})},
            "training.optimizer",
            "momentum must be a number in [0.0, 1.0). Received: momentum=-1.0",
        ),
        (
            {"optimizer": models_pb2.OptimizerSpec(name="nope")},
            "training.optimizer.name",
            "Unknown optimizer 'nope'; expected one of: adagrad, adam, adamw, rmsprop, sgd",
        ),
        ({"loss": "nope"}, "training.loss", "Unknown loss 'nope'"),
        ({"metrics": ["mae", "nope"]}, "training.metrics[1]", "Unknown metric 'nope'"),
        (
            {"schedule": models_pb2.ScheduleSpec(name="step", params={"step_size": 0})},
            "training.schedule",
            "step_size must be an integer >= 1. Received: step_size=0",
        ),
        (
            {"schedule": models_pb2.ScheduleSpec(name="nope")},
            "training.schedule.name",
            "Unknown schedule 'nope'",
        ),
        (
            {"early_stopping": models_pb2.EarlyStopping(monitor="loss", patience=-1)},
            "training.early_stopping",
            "patience must be an integer >= 0. Received: patience=-1",
        ),
    ],
    ids=["momentum", "optimizer", "loss", "metric", "schedule", "schedule name", "patience"],
)
def test_a_setting_the_engine_refuses_is_refused_naming_its_part_of_training(
    store: Store, training: dict[str, Any], field: str, says: str
) -> None:
    """The trainer, which builds them all, was refused under the field `training`, whichever
    part it was."""
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(
            request(regression_dataset(store), **training), "default"
        )
    [violation] = refused.value.violations
    assert violation.field == field and violation.description.startswith(says)


def _forged_token(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def test_a_metrics_page_token_is_refused_when_forged_or_made_for_another_listing(
    store: Store,
) -> None:
    """The token had its own format: a step past int64 raised OverflowError on SQLite, a name
    with a lone surrogate UnicodeEncodeError (INTERNAL), and it named no scope, so another
    job's token or one for other metric_names went on from its position, skipping points."""
    service = JobService(store, Settings())
    dataset = regression_dataset(store)
    jobs = [service.create(request(dataset), "default") for _ in range(2)]
    for job in jobs:
        claim = store.claim_job("w")
        assert claim is not None and claim.job.id == job.id
        store.record_metrics(claim, [MetricValue(n, s, 1, 0.5) for n in ("a", "b") for s in (1, 2)])
    first, other = (f"jobs/{job.id}" for job in jobs)
    _, token = service.metrics(jobs_pb2.ListJobMetricsRequest(name=first, page_size=3), "default")
    series, _ = service.metrics(
        jobs_pb2.ListJobMetricsRequest(name=first, page_size=3, page_token=token), "default"
    )
    assert [(v.name, v.step) for v in series["b"]] == [("b", 2)]
    # Forged with the listing's own scope, so that only the position can refuse them.
    scope = page_scope("metrics", jobs[0].id, [])
    forged = [
        _forged_token("loss", 2**70, scope),
        _forged_token("\ud800", 1, scope),
        _forged_token("a\x00b", 1, scope),
        _forged_token("a", "1", scope),
        _forged_token("a", 1),  # no scope: every metrics token names its own
    ]
    assert service.metrics(
        jobs_pb2.ListJobMetricsRequest(name=first, page_token=_forged_token("a", 1, scope)),
        "default",
    )[0], "a well-formed token of this scope pages on: the forged ones differ by their position"
    for page_token in forged:
        with pytest.raises(InvalidArgument) as refused:
            service.metrics(
                jobs_pb2.ListJobMetricsRequest(name=first, page_token=page_token), "default"
            )
        assert refused.value.message == (
            "page_token: is not a token returned by a previous List call"
        ), page_token
    elsewhere = [
        jobs_pb2.ListJobMetricsRequest(name=other, page_token=token),
        jobs_pb2.ListJobMetricsRequest(name=first, metric_names=["b"], page_token=token),
    ]
    for misused in elsewhere:
        with pytest.raises(InvalidArgument) as refused:
            service.metrics(misused, "default")
        assert refused.value.violations[0].field == "page_token"
        assert "start again without page_token" in refused.value.message
    # The metric names' order is not the listing's: the same names continue it.
    named = jobs_pb2.ListJobMetricsRequest(name=first, metric_names=["b", "a"], page_size=1)
    _, token = service.metrics(named, "default")
    named.metric_names[:] = ["a", "b"]
    named.page_token = token
    assert [(v.name, v.step) for v in service.metrics(named, "default")[0]["a"]] == [("a", 2)]


def test_metric_names_the_job_never_logs_are_refused_naming_those_it_does(store: Store) -> None:
    """An unknown name answered no points, as a name not logged yet does: the CLI then read
    every point of the job to list its names, and refused a configured metric of a job that had
    not finished an epoch as if it did not exist."""
    service = JobService(store, Settings())
    dataset = regression_dataset(store)
    job = service.create(
        request(dataset, validation_fraction=0.25, log_every_steps=2, metrics=["MAE"]), "default"
    )
    name = f"jobs/{job.id}"

    def listed(*names: str) -> dict[str, list[MetricValue]]:
        asked = jobs_pb2.ListJobMetricsRequest(name=name, metric_names=names)
        return service.metrics(asked, "default")[0]

    # Queued, nothing recorded: what its training logs is known all the same.
    assert listed("loss", "mae", "val_loss", "val_mae", "batch_loss") == {}
    with pytest.raises(InvalidArgument) as refused:
        listed("loss", "nosuch")
    violation = refused.value.violations[0]
    assert violation.field == "metric_names[1]"
    assert violation.description == (
        f"{name} has no metric 'nosuch'; its metrics: batch_loss, loss, mae, val_loss, val_mae"
    )
    # A name recorded outside its settings (by an older server, say) is listed too.
    claim = store.claim_job("w")
    assert claim is not None and claim.job.id == job.id
    store.record_metrics(claim, [MetricValue("kept", 3, 1, 0.5)])
    assert [v.step for v in listed("kept")["kept"]] == [3]
    with pytest.raises(InvalidArgument, match="its metrics: batch_loss, kept, loss, mae, val_"):
        listed("val_r2")
    # Without a schedule, validation or per-step logging, their keys are unknown.
    plain = service.create(request(dataset, metrics=["r2"]), "default")
    with pytest.raises(
        InvalidArgument, match=r"has no metric 'learning_rate'; its metrics: loss, r2$"
    ):
        service.metrics(
            jobs_pb2.ListJobMetricsRequest(
                name=f"jobs/{plain.id}", metric_names=["r2", "learning_rate"]
            ),
            "default",
        )
    scheduled = service.create(
        request(dataset, schedule=models_pb2.ScheduleSpec(name="cosine", params={"total": 10})),
        "default",
    )
    assert service.metrics(
        jobs_pb2.ListJobMetricsRequest(name=f"jobs/{scheduled.id}", metric_names=["learning_rate"]),
        "default",
    ) == ({}, "")


def test_a_metric_name_with_a_nul_is_refused_naming_it(store: Store) -> None:
    """It reached the query, where PostgreSQL refused it: INTERNAL."""
    service = JobService(store, Settings())
    job = service.create(request(regression_dataset(store)), "default")
    asked = jobs_pb2.ListJobMetricsRequest(name=f"jobs/{job.id}", metric_names=["loss", "a\x00"])
    with pytest.raises(InvalidArgument) as refused:
        service.metrics(asked, "default")
    assert refused.value.violations[0].field == "metric_names[1]"
    assert "U+0000 at position 1" in refused.value.message


def test_metrics_of_a_job_whose_training_no_longer_builds_are_listed(store: Store) -> None:
    """The check of asked names built the job's trainer for every listing, even one asking for
    every metric: a job stored by an older server whose training no longer builds failed
    every listing of its metrics. Asked for all, it builds nothing; asked by name, the names it
    has points of judge."""
    service = JobService(store, Settings())
    job = service.create(request(regression_dataset(store)), "default")
    with store.db.write() as session:
        row = session.get(JobRow, job.id)
        assert row is not None
        row.training = {**row.training, "loss": "a_loss_no_longer_known"}
    claim = store.claim_job("w")
    assert claim is not None and claim.job.id == job.id
    store.record_metrics(claim, [MetricValue("loss", 1, 1, 0.5)])

    def listed(*names: str) -> dict[str, list[MetricValue]]:
        asked = jobs_pb2.ListJobMetricsRequest(name=f"jobs/{job.id}", metric_names=names)
        return service.metrics(asked, "default")[0]

    assert [v.value for v in listed()["loss"]] == [0.5]
    assert [v.value for v in listed("loss")["loss"]] == [0.5]
    with pytest.raises(InvalidArgument, match=r"has no metric 'mae'; its metrics: loss$"):
        listed("mae")


def test_watch_batches_fill_messages_in_order_under_the_limit() -> None:
    """WatchJobBatches' messages: every event once, in order, each message within the answer
    limit; one event bigger than the limit goes alone (and fails on the wire as it would in
    WatchJob)."""
    events = [
        jobs_pb2.JobEvent(sequence=number, message="m" * (100 + 37 * number))
        for number in range(1, 40)
    ]
    limit = 2_000
    batches = list(event_batches(events, limit))
    assert [event for batch in batches for event in batch] == events
    assert len(batches) > 5
    assert all(jobs_pb2.JobEventBatch(events=batch).ByteSize() <= limit for batch in batches)
    # Each message is as full as the next event allows.
    assert all(
        jobs_pb2.JobEventBatch(events=[*batch, after[0]]).ByteSize() > limit
        for batch, after in itertools.pairwise(batches)
    )
    huge = jobs_pb2.JobEvent(sequence=99, message="h" * 3_000)
    assert list(event_batches([events[0], huge, events[1]], limit)) == [
        [events[0]], [huge], [events[1]]
    ]  # fmt: skip


def test_a_schedules_text_options_are_stored_trained_and_shown(store: Store) -> None:
    """A schedule's text parameters (interval, monitor, mode, threshold_mode) could not be sent:
    ScheduleSpec carried numbers only, so reduce_on_plateau always watched val_loss and a
    StepDecay always decayed per epoch. They travel in `options`, merged into the stored
    schedule, and GetJob shows them back."""
    dataset = regression_dataset(store)
    service = JobService(store, Settings())
    schedule = models_pb2.ScheduleSpec(
        name="reduce_on_plateau",
        params={"factor": 0.5, "patience": 0},
        options={"monitor": "val_r2", "mode": "max", "threshold_mode": "abs"},
    )
    job = service.create(
        request(dataset, schedule=schedule, validation_fraction=0.25, epochs=2), "default"
    )
    assert job.training["schedule"] == {
        "name": "reduce_on_plateau",
        "factor": 0.5,
        "patience": 0,
        "monitor": "val_r2",
        "mode": "max",
        "threshold_mode": "abs",
    }
    shown = job_to_proto(service.get(f"jobs/{job.id}", "default")).training
    assert shown.schedule == schedule
    # Sent again as shown, the settings are the same job's.
    assert training_from_proto(shown, dataset) == job.training
    assert run_next(store) is JobState.SUCCEEDED, store.get_job(job.id).error


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "step", "step_size": 2, "gamma": 0.5, "interval": "step"},
        {"name": "cosine", "total": 10, "warmup": 2, "interval": "epoch"},
        {"name": "exponential", "gamma": 0.9},
        {"name": "constant", "interval": "step"},
        {"name": "reduce_on_plateau", "monitor": "val_loss", "factor": 0.1, "cooldown": 1},
    ],
)
def test_a_stored_schedule_converts_to_its_spec_and_back(schedule: dict[str, Any]) -> None:
    """GetJob showed a stored schedule's numbers only: its text parameters were dropped, and
    the settings shown, sent again, made another job."""
    config = models_pb2.TrainingConfig(epochs=2)
    training = {**normalised_training(config, TaskKind.REGRESSION), "schedule": schedule}
    spec = training_to_proto(training).schedule
    assert spec.name == schedule["name"]
    text = {k: v for k, v in schedule.items() if isinstance(v, str) and k != "name"}
    assert dict(spec.options) == text
    numbers = {k: float(v) for k, v in schedule.items() if k != "name" and k not in text}
    assert dict(spec.params) == numbers
    assert normalised_training(training_to_proto(training), TaskKind.REGRESSION) == training


def schedule_spec(name: str, options: dict[str, str], **params: float) -> models_pb2.ScheduleSpec:
    return models_pb2.ScheduleSpec(name=name, params=params, options=options)


@pytest.mark.parametrize(
    ("training", "field", "says"),
    [
        (
            {"schedule": schedule_spec("step", {"monitor": "loss"}, step_size=2)},
            "training.schedule.options['monitor']",
            "is not a parameter of schedule 'step', which takes: step_size, gamma, interval. "
            "Received: 'monitor'='loss'",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"interval": "step"})},
            "training.schedule.options['interval']",
            "is not a parameter of schedule 'reduce_on_plateau'",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"mode": "maximum"})},
            "training.schedule.options['mode']",
            "mode must be one of: auto, min, max. Received: mode='maximum'",
        ),
        (
            {"schedule": schedule_spec("step", {"interval": "batch"}, step_size=2)},
            "training.schedule.options['interval']",
            "interval must be one of: epoch, step. Received: interval='batch'",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"threshold_mode": ""})},
            "training.schedule.options['threshold_mode']",
            "threshold_mode must be one of: rel, abs. Received: threshold_mode=''",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"monitor": ""})},
            "training.schedule.options['monitor']",
            "monitor must be a log key",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"factor": "0.5"})},
            "training.schedule.options['factor']",
            "is a numeric parameter of schedule 'reduce_on_plateau': send it in "
            "training.schedule.params",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {}, mode=1.0)},
            "training.schedule.params['mode']",
            "is a text parameter of schedule 'reduce_on_plateau': send it in "
            "training.schedule.options",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"mode": "max"}, mode=1.0)},
            "training.schedule.options['mode']",
            "is given in training.schedule.params too (1.0); give it once",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"monitor": "val_loss\x1b[2J"})},
            "training.schedule.options['monitor']",
            "U+001B at position 8",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"monitor": "v" * 100_000})},
            "training.schedule.options['monitor']",
            "at most 64 characters",
        ),
        (
            {"schedule": schedule_spec("", {"interval": "step"})},
            "training.schedule.options",
            "given without training.schedule.name; name a schedule or drop the options. "
            "Received: 'interval'='step'",
        ),
        # The monitor must be one the fit logs, as early stopping's: a regression logs no
        # accuracy, and without validation no val_ key.
        (
            {
                "schedule": schedule_spec("reduce_on_plateau", {"monitor": "val_accuracy"}),
                "validation_fraction": 0.25,
            },
            "training.schedule.options['monitor']",
            "schedule monitors 'val_accuracy', which this fit does not log; it logs: loss, mae, "
            "r2, val_loss, val_mae, val_r2, learning_rate",
        ),
        (
            {"schedule": schedule_spec("reduce_on_plateau", {"monitor": "val_mae"})},
            "training.schedule.options['monitor']",
            "holds out none of the 40 examples",
        ),
    ],
)
def test_a_bad_schedule_option_is_refused_at_create_naming_it(
    store: Store, training: dict[str, Any], field: str, says: str
) -> None:
    dataset = regression_dataset(store)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(request(dataset, **training), "default")
    assert [(v.field, says in v.description) for v in refused.value.violations] == [(field, True)]
    assert "\x1b" not in refused.value.message
    assert store.list_jobs(10, "")[0] == []


@pytest.mark.parametrize(
    ("schedule", "field", "says"),
    [
        (
            schedule_spec("step", {"interval": "step"}),
            "training.schedule.params['step_size']",
            "is required by schedule 'step', which has no default for it; send it in "
            "training.schedule.params. Received parameters: interval",
        ),
        (
            schedule_spec("Exponential", {}),
            "training.schedule.params['gamma']",
            "is required by schedule 'Exponential', which has no default for it; send it in "
            "training.schedule.params. Received parameters: none",
        ),
        (
            schedule_spec("cosine", {}, warmup=2),
            "training.schedule.params['total']",
            "is required by schedule 'cosine', which has no default for it; send it in "
            "training.schedule.params. Received parameters: warmup",
        ),
    ],
)
def test_a_schedule_missing_a_parameter_it_has_no_default_for_is_refused_naming_it(
    store: Store, schedule: models_pb2.ScheduleSpec, field: str, says: str
) -> None:
    """The engine refused it with Python's "StepDecay.__init__() missing 1 required positional
    argument: 'step_size'", answered under `training`."""
    dataset = regression_dataset(store)
    with pytest.raises(InvalidArgument) as refused:
        JobService(store, Settings()).create(request(dataset, schedule=schedule), "default")
    assert refused.value.violations == (FieldViolation(field, says),)
    assert "__init__" not in refused.value.message
    assert store.list_jobs(10, "")[0] == []
