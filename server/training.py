"""Job configuration as the engine sees it: defaults, validation, and building Model + Trainer.

The job service uses this to refuse a bad job before it is queued; the worker uses the same code
to build what it trains, so a job that was accepted builds the same way on every worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from trainwire.client.tensors import TensorError, dtype_name
from trainwire.client.validation import metric_misfits, output_activation_misfits
from trainwire.engine import (
    EarlyStopping,
    Model,
    SpecError,
    Trainer,
    losses,
    metrics,
    optimizers,
    schedules,
)
from trainwire.engine.errors import quoted
from trainwire.engine.layers import Dense
from trainwire.engine.model import SpecSummary
from trainwire.engine.training import EVALUATION_BATCH_ROWS
from trainwire.v1 import models_pb2, tensor_pb2

from .errors import InvalidArgument
from .names import FLOAT_DTYPES, check_enum, check_text
from .records import Dataset, Job, TaskKind

DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 1e-3
MAX_BATCH_SIZE = 1 << 20
# Every checkpoint kept is in the checkpoint list predictions re-read every second, and
# retention's work grows with it on every save; ListCheckpoints' default page holds every one of
# a job within this bound (`CHECKPOINT_PAGE_SIZE`: an unpaged answer of some 30,000, about 140
# bytes each, passed the 4 MiB limit, and then the listing failed for good). The SDK's
# validation (client/validation.py) holds the same bound.
MAX_KEEP_CHECKPOINTS = 1000
# The longest text parameter of a schedule (its monitor a metric name, as early stopping's).
MAX_OPTION_LENGTH = 64

DEFAULT_LOSSES = {
    TaskKind.REGRESSION: "mse",
    TaskKind.BINARY_CLASSIFICATION: "binary_cross_entropy",
    TaskKind.MULTICLASS_CLASSIFICATION: "softmax_cross_entropy",
}
DEFAULT_METRICS = {
    TaskKind.REGRESSION: ["mae", "r2"],
    TaskKind.BINARY_CLASSIFICATION: ["accuracy"],
    TaskKind.MULTICLASS_CLASSIFICATION: ["accuracy"],
}


def training_from_proto(config: models_pb2.TrainingConfig, dataset: Dataset) -> dict[str, Any]:
    """The stored training dict for a TrainingConfig, with defaults filled in and ranges checked."""
    training = normalised_training(config, dataset.task)
    validation = validation_rows(dataset.num_examples, config.validation_fraction)
    if validation and validation == dataset.num_examples:
        raise InvalidArgument.field("training.validation_fraction", "leaves no training examples")
    return training


def normalised_training(
    config: models_pb2.TrainingConfig, task: TaskKind, strict: bool = True
) -> dict[str, Any]:
    """The training dict `training_from_proto` stores, from what the dataset's task alone
    decides: a retried CreateJob is compared with its job this way after the dataset is gone.
    Not `strict`, settings that take no effect (schedule params without a schedule, early
    stopping settings without a monitor) are dropped rather than refused, as before they were
    refused, and keep_checkpoints may pass MAX_KEEP_CHECKPOINTS, as before it was bounded: a
    retry of a request an older server accepted must still find its job."""
    if config.epochs < 0:
        raise InvalidArgument.field(
            "training.epochs", f"must be positive. Received: {config.epochs}"
        )
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE
    if not 0 < batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument.field(
            "training.batch_size",
            f"must be in [1, {MAX_BATCH_SIZE}]. Received: {config.batch_size}",
        )
    if not 0.0 <= config.validation_fraction < 1.0:
        raise InvalidArgument.field(
            "training.validation_fraction",
            f"must be in [0, 1). Received: {config.validation_fraction}",
        )
    for name in ("checkpoint_every_epochs", "log_every_steps", "keep_checkpoints"):
        if getattr(config, name) < 0:
            raise InvalidArgument.field(
                f"training.{name}", f"must not be negative. Received: {getattr(config, name)}"
            )
    # Not on a retry (`strict` off): an older server stored jobs with more, which still run.
    if strict and config.keep_checkpoints > MAX_KEEP_CHECKPOINTS:
        raise InvalidArgument.field(
            "training.keep_checkpoints",
            f"must be in [0, {MAX_KEEP_CHECKPOINTS}] (0: keep 3). "
            f"Received: {config.keep_checkpoints}",
        )
    dtype = config.dtype or tensor_pb2.DATA_TYPE_FLOAT32
    check_enum("training.dtype", tensor_pb2.DataType, dtype, FLOAT_DTYPES)
    _check_finite_number("training.optimizer.learning_rate", config.optimizer.learning_rate)
    if config.optimizer.learning_rate < 0:
        raise InvalidArgument.field(
            "training.optimizer.learning_rate",
            f"must be positive. Received: {config.optimizer.learning_rate}",
        )
    for name, value in config.optimizer.params.items():
        _check_finite_number(f"training.optimizer.params[{quoted(name)}]", value)
    for name, text in (("loss", config.loss), ("optimizer.name", config.optimizer.name)):
        if len(text) > 64 or "\x00" in text:
            raise InvalidArgument.field(f"training.{name}", f"is not a known name: {quoted(text)}")
    _check_params("optimizer", config.optimizer.name or DEFAULT_OPTIMIZER, config.optimizer.params)
    rate_too = config.optimizer.params.get("learning_rate")
    if strict and rate_too is not None and config.optimizer.learning_rate:
        # The one in params replaced the field's in silence (the rule of a schedule's
        # parameters, given in both maps, is the same). Not on a retry (`strict` off): an older
        # server stored the one in params, and a retry must still find its job.
        raise InvalidArgument.field(
            "training.optimizer.params['learning_rate']",
            "is given in training.optimizer.learning_rate too "
            f"({config.optimizer.learning_rate}); give it once, in "
            f"training.optimizer.learning_rate. Received: 'learning_rate'={rate_too}",
        )
    flags = optimizers.flags(config.optimizer.name or DEFAULT_OPTIMIZER)
    for name, value in sorted(config.optimizer.params.items()):
        if name in flags and value not in (0.0, 1.0):
            # The engine refuses it too, but its refusal names no field (answered as `training`).
            raise InvalidArgument.field(
                f"training.optimizer.params[{quoted(name)}]",
                f"is a flag: 1 (true) or 0 (false). Received: {value}",
            )
    optimizer: dict[str, Any] = {
        "name": config.optimizer.name or DEFAULT_OPTIMIZER,
        "learning_rate": config.optimizer.learning_rate or DEFAULT_LEARNING_RATE,
        **dict(config.optimizer.params),
    }
    training: dict[str, Any] = {
        "epochs": config.epochs or DEFAULT_EPOCHS,
        "batch_size": batch_size,
        "loss": config.loss or DEFAULT_LOSSES[task],
        "optimizer": optimizer,
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
        "metrics": list(config.metrics) or DEFAULT_METRICS[task],
        "checkpoint_every_epochs": config.checkpoint_every_epochs,
        "log_every_steps": config.log_every_steps,
        "keep_checkpoints": config.keep_checkpoints,
        "dtype": _dtype(dtype),
    }
    if config.schedule.name:
        check_text("training.schedule.name", config.schedule.name, 64)
        _check_params("schedule", config.schedule.name, config.schedule.params)
        for name, value in config.schedule.params.items():
            _check_finite_number(f"training.schedule.params[{quoted(name)}]", value)
        _check_schedule_options(config.schedule)
        _check_required_schedule_params(config.schedule)
        # The wire carries doubles; counts such as step_size or patience are whole numbers.
        params = {k: int(v) if v.is_integer() else v for k, v in config.schedule.params.items()}
        training["schedule"] = {
            "name": config.schedule.name,
            **params,
            **dict(config.schedule.options),
        }
    elif strict and (config.schedule.params or config.schedule.options):
        # Without a name there is no schedule: its parameters would be dropped in silence.
        if config.schedule.params:
            key, value = min(config.schedule.params.items())
            field, received = "params", f"{quoted(key)}={value}"
        else:
            key, text = min(config.schedule.options.items())
            field, received = "options", f"{quoted(key)}={quoted(text)}"
        raise InvalidArgument.field(
            f"training.schedule.{field}",
            f"given without training.schedule.name; name a schedule or drop the {field}. "
            f"Received: {received}",
        )
    if config.early_stopping.monitor:
        check_text("training.early_stopping.monitor", config.early_stopping.monitor, 64)
        training["early_stopping"] = {
            "monitor": config.early_stopping.monitor,
            "patience": config.early_stopping.patience,
            "min_delta": config.early_stopping.min_delta,
            "restore_best_weights": config.early_stopping.restore_best_weights,
        }
    elif config.early_stopping.ListFields() and strict:
        # An empty monitor turns early stopping off: its other settings would be dropped in
        # silence (patience=-3 or min_delta=NaN too, which are never checked then).
        field, value = config.early_stopping.ListFields()[0]
        raise InvalidArgument.field(
            f"training.early_stopping.{field.name}",
            "given without training.early_stopping.monitor, which turns early stopping on; "
            f"name a monitor (e.g. val_loss) or drop early_stopping. Received: {value}",
        )
    return training


def _check_params(kind: str, name: str, params: Mapping[str, float]) -> None:
    """Each parameter must be one the optimizer or schedule (`kind`) takes: the engine refuses
    another with Python's own TypeError ("Adam.__init__() got an unexpected keyword
    argument"), naming no field."""
    module = optimizers if kind == "optimizer" else schedules
    accepted = module.parameters(name)
    if accepted is None:
        return  # the engine refuses the name itself, listing the names it knows
    for key, value in params.items():
        if key not in accepted:
            raise InvalidArgument.field(
                f"training.{kind}.params[{quoted(key)}]",
                f"is not a parameter of {kind} {quoted(name)}, which takes: "
                f"{', '.join(accepted)}. Received: {quoted(key)}={value}",
            )


def _check_schedule_options(schedule: models_pb2.ScheduleSpec) -> None:
    """The schedule's text parameters (`ScheduleSpec.options`) must be ones it takes, given once
    (not in `params` too), and values the engine takes; its numeric parameters must not be
    among them (the engine would refuse a number as its interval or mode, naming no field)."""
    name = schedule.name
    accepted = schedules.parameters(name)
    if accepted is None:
        return  # the engine refuses the name itself, listing the names it knows
    text = schedules.text_parameters(name)
    for key, value in sorted(schedule.options.items()):
        field = f"training.schedule.options[{quoted(key)}]"
        received = f"Received: {quoted(key)}={quoted(value)}"
        if key not in accepted:
            raise InvalidArgument.field(
                field,
                f"is not a parameter of schedule {quoted(name)}, which takes: "
                f"{', '.join(accepted)}. {received}",
            )
        if key in schedule.params:
            raise InvalidArgument.field(
                field,
                f"is given in training.schedule.params too ({schedule.params[key]}); give it "
                f"once. {received}",
            )
        if key not in text:
            raise InvalidArgument.field(
                field,
                f"is a numeric parameter of schedule {quoted(name)}: send it in "
                f"training.schedule.params. {received}",
            )
        check_text(field, value, MAX_OPTION_LENGTH)
        try:
            schedules.check_text_parameter(key, value)
        except ValueError as error:
            raise InvalidArgument.field(field, str(error)) from None
    for key, number in sorted(schedule.params.items()):
        if key in text:
            raise InvalidArgument.field(
                f"training.schedule.params[{quoted(key)}]",
                f"is a text parameter of schedule {quoted(name)}: send it in "
                f"training.schedule.options. Received: {quoted(key)}={number}",
            )


def _check_required_schedule_params(schedule: models_pb2.ScheduleSpec) -> None:
    """Each parameter the schedule has no default for must be given: left out, the engine
    refused the job with Python's own TypeError ("StepDecay.__init__() missing 1 required
    positional argument: 'step_size'"), answered under `training`, naming no field."""
    name = schedule.name
    for key in schedules.required_parameters(name):
        if key not in schedule.params and key not in schedule.options:
            given = ", ".join(sorted({*schedule.params, *schedule.options})) or "none"
            raise InvalidArgument.field(
                f"training.schedule.params[{quoted(key)}]",
                f"is required by schedule {quoted(name)}, which has no default for it; send it "
                f"in training.schedule.params. Received parameters: {given}",
            )


def validation_rows(num_examples: int, fraction: float) -> int:
    """The examples held out for validation: the worker's split and CreateJob's checks both
    count them here, so a job accepted with validation keys to monitor gets them."""
    return int(num_examples * fraction)


def _check_finite_number(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument.field(field, f"must be a finite number. Received: {value}")


def _dtype(code: int) -> str:
    try:
        return dtype_name(code)
    except TensorError as error:
        raise InvalidArgument.field("training.dtype", str(error)) from None


def build_model(spec: dict[str, Any], training: dict[str, Any]) -> Model:
    try:
        return Model.from_spec(spec, dtype=training["dtype"], seed=int(training["seed"]))
    except SpecError as error:
        raise InvalidArgument.field("model", str(error)) from None


def describe_model(spec: dict[str, Any]) -> SpecSummary:
    """What the spec builds (normalised spec, layer widths, parameter count), found without
    allocating the model: CreateJob checks a model of the allowed size in microseconds, where
    building a 49M-parameter float64 one to check it took 3 s and 1.2 GB."""
    try:
        return Model.describe_spec(spec)
    except SpecError as error:
        raise InvalidArgument.field("model", str(error)) from None


def validation_trainer(summary: SpecSummary, training: dict[str, Any]) -> Trainer:
    """The job's trainer around a stand-in model of the same output width and dtype, for the
    checks CreateJob makes: the loss, optimizer, schedule, early stopping and metrics look at
    nothing else of the model, and the real one need not be allocated to check them."""
    _check_components(training)
    stand_in = Model(1, [Dense(summary.output_dim, use_bias=False)], dtype=training["dtype"])
    return build_trainer(stand_in, training)


def _check_components(training: dict[str, Any]) -> None:
    """Each engine component of the training (loss, optimizer, schedule, early stopping, each
    metric) built alone, its refusal naming its field: the trainer, which builds them all, was
    refused under `training` whichever it was ("momentum must be a number in [0.0, 1.0)")."""
    optimizer = _engine_optimizer(training)
    known = optimizers.parameters(str(optimizer["name"])) is not None
    _built("training.optimizer" if known else "training.optimizer.name", optimizers.get, optimizer)
    _built("training.loss", losses.get, training["loss"])
    schedule = training.get("schedule")
    if schedule is not None:
        known = schedules.parameters(str(schedule["name"])) is not None
        _built("training.schedule" if known else "training.schedule.name", schedules.get, schedule)
    for index, metric in enumerate(training["metrics"]):
        _built(f"training.metrics[{index}]", metrics.get, metric)
    if "early_stopping" in training:
        _built(
            "training.early_stopping",
            lambda spec: EarlyStopping(**spec),
            training["early_stopping"],
        )


def _built(field: str, build: Callable[[Any], object], spec: object) -> None:
    """`build(spec)`, its ValueError refused as INVALID_ARGUMENT naming `field`."""
    try:
        build(spec)
    except ValueError as error:
        raise InvalidArgument.field(field, str(error)) from None


def _engine_optimizer(training: dict[str, Any]) -> dict[str, Any]:
    """The stored optimizer as the engine takes it: its flags as bools."""
    optimizer = dict(training["optimizer"])
    for flag in optimizers.flags(str(optimizer.get("name", DEFAULT_OPTIMIZER))) & optimizer.keys():
        # As stored: any number, by a server from before CreateJob took 1 and 0 alone, which
        # the engine then read as bool() does (the engine's check now takes 1 and 0 alone).
        optimizer[flag] = bool(optimizer[flag])
    return optimizer


def logged_metric_names(job: Job) -> set[str]:
    """The metrics the job's training logs, whether it has logged them yet or not: its epochs'
    keys (as the engine lists them) and, logging steps, batch_loss. Its dataset's size, which
    decides whether its validation fraction holds out any row, is not kept with it: a fraction
    that holds out none counts its val_ keys, which then never get a point."""
    training = job.training
    trainer = validation_trainer(describe_model(job.model_spec), training)
    fraction = float(training.get("validation_fraction", 0.0))
    names = set(trainer.logged_keys(has_validation=fraction > 0))
    if training.get("log_every_steps"):
        names.add("batch_loss")
    return names


def largest_pass_rows(training: dict[str, Any], dataset: Dataset) -> int:
    """The most rows one forward pass of the job's training takes: a training batch, or a
    validation pass (the engine evaluates max(batch_size, EVALUATION_BATCH_ROWS) rows at a
    time), each at most the rows the worker's split leaves there."""
    held_out = validation_rows(dataset.num_examples, float(training["validation_fraction"]))
    batch_size = int(training["batch_size"])
    rows = min(batch_size, dataset.num_examples - held_out)
    return max(rows, min(max(batch_size, EVALUATION_BATCH_ROWS), held_out))


def build_trainer(model: Model, training: dict[str, Any]) -> Trainer:
    try:
        return Trainer(
            model,
            loss=training["loss"],
            optimizer=_engine_optimizer(training),
            batch_size=int(training["batch_size"]),
            seed=int(training["seed"]),
            metrics=tuple(training["metrics"]),
            schedule=training.get("schedule"),
            early_stopping=training.get("early_stopping"),
        )
    except ValueError as error:
        raise InvalidArgument.field("training", str(error)) from None


def check_model_fits_dataset(
    model: SpecSummary, training: dict[str, Any], dataset: Dataset
) -> None:
    """The network's input and output widths must suit the dataset and its loss."""
    if model.input_dim != dataset.num_features:
        raise InvalidArgument.field(
            "model.input_dim",
            f"the model takes {model.input_dim} features but datasets/{dataset.id} has "
            f"{dataset.num_features}",
        )
    loss = training["loss"]
    outputs = model.output_dim
    if dataset.task is TaskKind.MULTICLASS_CLASSIFICATION or loss == "softmax_cross_entropy":
        expected = dataset.num_classes
        what = f"one logit per class ({dataset.num_classes} classes)"
        fix = f"give the last layer {expected} units"
        if outputs > expected:
            # A class absent from the rows (the top one: the count is the largest label + 1
            # unless the upload said otherwise) makes the dataset's count lower than the
            # model's; the fix above would give a model that can never predict that class.
            fix += (
                f", or, if the data has {outputs} classes and some are absent from these rows, "
                f"upload it again with num_classes={outputs}"
            )
    elif dataset.task is TaskKind.BINARY_CLASSIFICATION:
        expected = 1
        what = "one logit for binary_cross_entropy"
        # Two units on 0/1 labels is the usual slip: say both ways out, as either may be meant.
        fix = (
            "give the last layer 1 unit (sigmoid of the logit = P(class 1)), or upload the "
            'labels with task "multiclass" for a softmax over the classes'
        )
    else:
        expected = dataset.target_width
        what = f"one output per target column ({dataset.target_width})"
        fix = f"give the last layer {expected} unit{'' if expected == 1 else 's'}"
    if outputs != expected:
        raise InvalidArgument.field(
            "model.layers",
            f"the last layer gives {outputs} output{'' if outputs == 1 else 's'} but the "
            f"dataset needs {what}: {fix}",
        )


# Where a request sets what each engine monitor watches (reduce_on_plateau's default monitor,
# val_loss, comes with the schedule's name; one given is its options["monitor"]).
MONITOR_FIELDS = {
    "early_stopping": "training.early_stopping.monitor",
    "schedule": "training.schedule",
}
SCHEDULE_MONITOR_FIELD = f"training.schedule.options[{quoted('monitor')}]"


def check_monitors_are_logged(trainer: Trainer, training: dict[str, Any], dataset: Dataset) -> None:
    """Early stopping and reduce_on_plateau must watch a key the fit logs: the engine's own
    check, run with the validation split the worker will make of this dataset, so a job that
    would fail at its first fit is refused instead."""
    fraction = float(training.get("validation_fraction", 0.0))
    held_out = validation_rows(dataset.num_examples, fraction)
    problem = trainer.monitor_problem(has_validation=held_out > 0)
    if problem is None:
        return
    owner, monitor, message = problem
    if monitor.startswith("val_") and not held_out:
        message += (
            f" (training.validation_fraction={fraction} holds out none of the "
            f"{dataset.num_examples} examples of datasets/{dataset.id})"
        )
    field = MONITOR_FIELDS[owner]
    if owner == "schedule" and "monitor" in (training.get("schedule") or {}):
        field = SCHEDULE_MONITOR_FIELD
    raise InvalidArgument.field(field, message)


def check_loss_fits_targets(trainer: Trainer, dataset: Dataset) -> None:
    """The loss must accept the dataset's targets (e.g. no mse on class labels): the engine's
    own check runs on one example shaped like the dataset's."""
    sample = np.zeros((1, *dataset.target_shape[1:]), dtype=dataset.target_dtype)
    try:
        trainer.loss.prepare_targets(sample, trainer.model.output_dim, trainer.model.dtype)
    except ValueError as error:
        raise InvalidArgument.field(
            "training.loss",
            f"{error} (datasets/{dataset.id} is {dataset.task.value.lower()} with targets of "
            f"shape {list(dataset.target_shape)})",
        ) from None


def check_output_activation(model: SpecSummary, training: dict[str, Any], dataset: Dataset) -> None:
    """The last layer must not apply a function its loss or its predictions apply to its
    outputs (`output_activation_misfits`, which the SDK applies too)."""
    misfits = output_activation_misfits(
        model.spec["layers"], training["loss"], dataset.task.is_classification
    )
    if misfits:
        raise InvalidArgument.field(*misfits[0])


def check_metrics_fit_targets(trainer: Trainer, dataset: Dataset) -> None:
    """Each metric must score the dataset's kind of target (`metric_misfits`, which the SDK
    applies too); the first that does not is refused."""
    misfits = metric_misfits(
        [metric.name for metric in trainer.metrics],
        f"datasets/{dataset.id}",
        dataset.task.value.lower(),
        dataset.task.is_classification,
        dataset.target_shape,
    )
    if misfits:
        raise InvalidArgument.field(*misfits[0])
