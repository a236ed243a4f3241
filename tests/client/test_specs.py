"""Builders, local validation and job spec files: mistakes are reported before any network call."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainwire.client import (
    Activation,
    BatchNorm,
    Client,
    DatasetInfo,
    Dense,
    Dropout,
    InvalidArgument,
    JobSpec,
    Sequential,
    SpecError,
)
from trainwire.client.builders import model_to_dict
from trainwire.client.jobspec import DatasetSource
from trainwire.client.results import TASK_NAMES
from trainwire.client.specs import model_spec_to_proto
from trainwire.client.validation import DEFAULT_LOSSES, MAX_KEEP_CHECKPOINTS, check_training
from trainwire.client.wire import create_job_request, prepare_upload
from trainwire.server import training as server_training
from trainwire.server.convert import TASKS_FROM_PROTO
from trainwire.v1 import models_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_builders_produce_the_engine_dict_format() -> None:
    model = Sequential(
        [
            Dense(16, activation="relu", kernel_initializer="he_normal"),
            BatchNorm(),
            Dropout(0.1),
            Activation("leaky_relu", negative_slope=0.2),
            Dense(3, use_bias=False),
        ],
        input_dim=4,
    )
    assert model.to_dict() == {
        "input_dim": 4,
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu", "kernel_initializer": "he_normal"},
            {"type": "batch_norm", "momentum": 0.1, "epsilon": 1e-5},
            {"type": "dropout", "rate": 0.1},
            {"type": "activation", "activation": {"name": "leaky_relu", "negative_slope": 0.2}},
            {"type": "dense", "units": 3, "use_bias": False},
        ],
    }
    proto = model_spec_to_proto(model.to_dict())
    assert proto.layers[3].activation.params["negative_slope"] == pytest.approx(0.2)
    assert proto.layers[4].dense.no_bias


def test_models_from_lists_dicts_and_yaml(tmp_path: Path) -> None:
    expected = {"layers": [{"type": "dense", "units": 4, "activation": "tanh"}]}
    assert model_to_dict([Dense(4, activation="tanh")]) == expected
    assert model_to_dict({"layers": [Dense(4, activation="tanh")]}) == expected
    text = "layers:\n  - {type: dense, units: 4, activation: tanh}\n"
    assert model_to_dict(text) == expected
    (tmp_path / "model.yaml").write_text(text)
    assert model_to_dict(tmp_path / "model.yaml") == expected
    assert model_to_dict(str(tmp_path / "model.yaml")) == expected
    # One line of YAML is text too, not a path.
    assert model_to_dict("layers: [{type: dense, units: 4, activation: tanh}]") == expected
    assert model_to_dict("{layers: [{type: dense, units: 4, activation: tanh}]}") == expected
    for missing in (str(tmp_path / "typo.yaml"), tmp_path / "typo.yaml"):
        with pytest.raises(ValueError, match=r"no file exists at .*typo\.yaml"):
            model_to_dict(missing)


def test_every_mistake_is_reported_with_its_field_before_any_call() -> None:
    # Nothing listens on port 9: a network call would fail with UNAVAILABLE, not SpecError.
    with Client("127.0.0.1:9", timeout=5) as client, pytest.raises(SpecError) as caught:
        client.create_job(
            "datasets/0123456789abcdef0123456789abcdef",
            [Dense(0), Dropout(1.5), Dense(3, activation="relux"), {"type": "conv"}],
            epochs=0,
            optimizer="adamm",
            learning_rate=float("nan"),
            validation_fraction=1.0,
            metrics=["acc"],
        )
    fields = [field for field, _ in caught.value.field_violations]
    assert fields == [
        "model.layers[0].units",
        "model.layers[1].rate",
        "model.layers[2].activation",
        "model.layers[3].type",
        "training.epochs",
        "training.optimizer",
        "training.optimizer.learning_rate",
        "training.metrics[0]",
        "training.validation_fraction",
    ], "every mistake of the model and the training settings at once"
    assert isinstance(caught.value, InvalidArgument) and isinstance(caught.value, ValueError)
    assert "expected one of" in caught.value.message and "relux" in caught.value.message

    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as training:
        client.create_job(
            "datasets/x", [Dense(3)], epochs=0, optimizer="adamm", learning_rate=float("nan"),
            validation_fraction=1.0, metrics=["acc"], schedule="weekly", dtype="float16",
        )  # fmt: skip
    assert [field for field, _ in training.value.field_violations] == [
        "training.epochs",
        "training.optimizer",
        "training.optimizer.learning_rate",
        "training.metrics[0]",
        "training.validation_fraction",
        "training.schedule",
        "training.dtype",
    ]


def dataset_info(task: str, classes: int) -> DatasetInfo:
    return DatasetInfo(
        name="datasets/0123456789abcdef0123456789abcdef", display_name="", task=task,
        num_examples=40, num_features=4, num_classes=classes, size_bytes=0, sha256="",
        feature_shape=(40, 4), target_shape=(40,),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("task", "classes", "metrics", "misfits", "fitting"),
    [
        ("multiclass", 3, ["accuracy", "R2", "mae"], [1, 2], "use accuracy"),
        ("binary", 2, ["r2"], [0], "use accuracy"),
        ("regression", 0, ["mae", "accuracy"], [1], "use mae, r2"),
    ],
)
def test_metrics_that_do_not_fit_a_known_datasets_task_are_refused_before_any_call(
    task: str, classes: int, metrics: list[str], misfits: list[int], fitting: str
) -> None:
    """The server refuses them; the SDK sent them, though a DatasetInfo says the task."""
    dataset = dataset_info(task, classes)
    kind = "real-valued targets" if task == "regression" else "class labels"
    with Client("127.0.0.1:9", timeout=5) as client, pytest.raises(SpecError) as caught:
        client.create_job(dataset, [Dense(3)], metrics=metrics, epochs=0)
    assert caught.value.field_violations == [
        ("training.epochs", "must be a positive integer. Received: 0"),
        *(
            (
                f"training.metrics[{index}]",
                f"{metrics[index]!r} does not fit {dataset.name}, which is {task} with {kind} "
                f"of shape [40]: {fitting}, or leave metrics empty for its defaults",
            )
            for index in misfits
        ),
    ], "reported with the other violations"


@pytest.mark.parametrize(
    ("task", "classes", "metrics"),
    [("binary", 2, ["accuracy"]), ("regression", 0, ["r2", "MAE"]), ("multiclass", 3, [])],
)
def test_metrics_that_fit_a_known_datasets_task_are_sent(
    task: str, classes: int, metrics: list[str]
) -> None:
    request = create_job_request(
        dataset_info(task, classes), [Dense(3)], **{**TRAINING, "metrics": metrics}, seed=0,
        early_stopping=None, display_name="", labels=None, queue="", priority=0, request_id=None,
    )  # fmt: skip
    assert list(request.training.metrics) == metrics


def test_a_head_that_applies_a_function_again_is_refused_before_any_call() -> None:
    """A softmax before softmax_cross_entropy (a sigmoid before binary_cross_entropy) applies it
    twice: the model trains, but its probabilities can never be confident. So does a sigmoid
    or softmax head of a classifier, whatever its loss: its predictions apply one to the
    outputs (a sigmoid head trained by mse on 0/1 labels answered class 1 for every row). The
    loss is the one given, else the dataset's task's default; dropout, the identity when
    predicting, is looked through; an activation given as {"name": ...} is read by its name."""
    assert {
        TASK_NAMES[code]: server_training.DEFAULT_LOSSES[kind]
        for code, kind in TASKS_FROM_PROTO.items()
    } == DEFAULT_LOSSES, "the SDK's defaults are the server's"
    by_loss = "applies the {} itself"
    by_answer = "its predictions turn into probabilities with a sigmoid (one output) or a softmax"
    softmax_layer = {"type": "activation", "activation": {"name": "softmax"}}
    cases = [
        (dataset_info("multiclass", 3), [Dense(8), Dense(3, activation="Softmax")], "", 1,
         by_loss.format("softmax")),
        (dataset_info("binary", 2), [Dense(1, activation="sigmoid"), Dropout(0.2)], "", 0,
         by_loss.format("sigmoid")),
        ("datasets/x", [Dense(3, activation="softmax")], "softmax_cross_entropy", 0,
         by_loss.format("softmax")),
        (dataset_info("binary", 2), [Dense(1, activation="sigmoid")], "mse", 0, by_answer),
        (dataset_info("multiclass", 3), [Dense(3, activation="sigmoid")], "", 0, by_answer),
        (dataset_info("multiclass", 3), [Dense(3), softmax_layer], "", 1,
         by_loss.format("softmax")),
        (dataset_info("multiclass", 3), [Dense(3), softmax_layer], "huber", 1, by_answer),
    ]  # fmt: skip
    for dataset, layers, loss, index, reason in cases:
        with Client("127.0.0.1:9", timeout=5) as client, pytest.raises(SpecError) as caught:
            client.create_job(dataset, layers, loss=loss)
        [(field, description)] = caught.value.field_violations
        assert field == f"model.layers[{index}].activation"
        assert reason in description, description
        assert "leave the last layer without an activation" in description
    # Sent: a regression's head, another activation, or neither loss nor task known here.
    for dataset, layers, loss in [
        (dataset_info("regression", 0), [Dense(1, activation="sigmoid")], ""),
        (dataset_info("multiclass", 3), [Dense(3, activation="tanh")], ""),
        ("datasets/x", [Dense(3, activation="softmax")], ""),
    ]:
        request = create_job_request(
            dataset, layers, **{**TRAINING, "loss": loss}, seed=0, early_stopping=None,
            display_name="", labels=None, queue="", priority=0, request_id=None,
        )  # fmt: skip
        assert request.model.layers


def test_keep_checkpoints_above_the_servers_bound_is_refused_before_any_call() -> None:
    """The server refuses more than MAX_KEEP_CHECKPOINTS kept (one ListCheckpoints answer holds
    them all); the SDK says so with its other violations, naming the field and the bound."""
    assert MAX_KEEP_CHECKPOINTS == server_training.MAX_KEEP_CHECKPOINTS == 1000
    with Client("127.0.0.1:9", timeout=5) as client, pytest.raises(SpecError) as caught:
        client.create_job("datasets/x", [Dense(3)], epochs=0, keep_checkpoints=1001)
    assert caught.value.field_violations == [
        ("training.epochs", "must be a positive integer. Received: 0"),
        ("training.keep_checkpoints", "must be in [0, 1000] (0: keep 3). Received: 1001"),
    ]


def test_values_the_request_cannot_carry_are_spec_errors_naming_their_field() -> None:
    """Each reached protobuf, whose TypeError or ValueError named no field."""
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as caught:
        client.create_job(
            "datasets/x", None, epochs=10**12, seed=-1, priority="high",
            labels={"team": 1}, queue=3, keep_checkpoints=2**40,  # type: ignore[dict-item,arg-type]
            early_stopping={"monitor": "val_loss", "patience": "3"}, optimizer="adamm",
        )  # fmt: skip
    violations = dict(caught.value.field_violations)
    assert list(violations) == [
        "model", "training.epochs", "training.optimizer", "training.early_stopping.patience",
        "training.seed", "training.keep_checkpoints", "labels['team']", "queue", "priority",
    ], "reported with the other violations"  # fmt: skip
    assert violations["model"].endswith("Received: None")
    assert violations["training.epochs"] == (
        "must be in [1, 2147483647], the range of the request's int32 field. "
        "Received: 1000000000000"
    )
    assert "[0, 18446744073709551615]" in violations["training.seed"]
    assert violations["priority"] == (
        "must be an integer in [-2147483648, 2147483647]. Received: 'high'"
    )
    assert "must be strings" in violations["labels['team']"]
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError, match=r"^training\.seed: .*"):
        client.create_job("datasets/x", [Dense(3)], seed=2**70)
    with pytest.raises(SpecError, match=r"^labels\['a'\]: keys and values must be strings"):
        prepare_upload(
            np.zeros((2, 1)), np.zeros(2), task=None, name="", num_classes=0, feature_names=(),
            class_names=(), labels={"a": 1},  # type: ignore[dict-item]
        )  # fmt: skip


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(SpecError) as caught:
        model_spec_check({"layers": [{"type": "dense", "units": 3, "unit": 4}], "depth": 2})
    assert [f for f, _ in caught.value.field_violations] == ["model.depth", "model.layers[0].unit"]


def test_parameters_the_api_cannot_carry_are_refused() -> None:
    # A dense layer's activation and initializers travel as names only: parameters would be lost.
    with pytest.raises(SpecError) as caught:
        model_spec_check(
            Sequential(
                [
                    Dense(4, activation={"name": "leaky_relu", "negative_slope": 0.3}),
                    Dense(3, kernel_initializer={"name": "he_normal", "scale": 2.0}),
                    BatchNorm(epsilon=0.0),
                ]
            ).to_dict()
        )
    violations = dict(caught.value.field_violations)
    assert list(violations) == [
        "model.layers[0].activation",
        "model.layers[1].kernel_initializer",
        "model.layers[2].epsilon",
    ]
    remedy = "Activation('leaky_relu', negative_slope=0.3)"
    assert remedy in violations["model.layers[0].activation"]
    assert "'scale'" in violations["model.layers[1].kernel_initializer"]
    # A name given as a mapping, and the layers that do carry parameters, stay accepted.
    model_spec_check(
        Sequential(
            [
                Dense(4, activation={"name": "tanh"}, kernel_initializer="he_normal"),
                Activation("leaky_relu", negative_slope=0.3),
                BatchNorm(momentum=0.0),
                Dense(3),
            ]
        ).to_dict()
    )


def model_spec_check(spec: object) -> None:
    from trainwire.client.validation import check_model

    check_model(spec)


def test_the_example_job_spec_parses() -> None:
    spec = JobSpec.load(EXAMPLES / "job.yaml")
    assert isinstance(spec.dataset, DatasetSource)
    assert spec.dataset.path == EXAMPLES / "data" / "iris.csv"
    assert spec.dataset.target_column == "species"
    assert spec.options["epochs"] == 60 and spec.options["labels"]["team"] == "research"
    assert spec.model["layers"][-1] == {"type": "dense", "units": 3}


def test_job_spec_mistakes_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "dataset: {file: x.csv}\nmodel: {layers: [{type: dense, units: -1}]}\n"
        "training: {epoch: 3}\ncolour: blue\n"
    )
    with pytest.raises(SpecError) as caught:
        JobSpec.load(path)
    assert [f for f, _ in caught.value.field_violations] == [
        "colour",
        "training.epoch",
        "dataset.file",
        "dataset.path",
        "model.layers[0].units",
    ]
    path.write_text("dataset: datasets/abc\nmodel: {layers: [{type: dense, units: -1}]}\n")
    with pytest.raises(SpecError, match=r"model.layers\[0\].units"):
        JobSpec.load(path)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"dataset": {"path": "x.csv", "labels": ["team"]}}, "dataset.labels"),
        ({"dataset": "datasets/abc", "labels": ["team"]}, "labels"),
        ({"dataset": {"path": "x.csv", "num_classes": "three"}}, "dataset.num_classes"),
        ({"dataset": {"path": None}}, "dataset.path"),
        ({"dataset": {"path": "x.csv", "header": "yes"}}, "dataset.header"),
        ({"dataset": {"path": "x.csv", "header": 1}}, "dataset.header"),
        ({"dataset": {"path": "x.csv", "class_names": "a,b"}}, "dataset.class_names"),
        ({"dataset": {"path": "x.csv", "feature_names": [1, 2]}}, "dataset.feature_names"),
        ({"dataset": "datasets/abc", 1: "a", "foo": "b"}, "1"),
        ({"dataset": "datasets/abc", "training": {"seed": "x"}}, "training.seed"),
    ],
)
def test_job_spec_values_of_the_wrong_kind_are_spec_errors(
    document: dict[object, object], field: str
) -> None:
    """Each was a traceback (AttributeError, TypeError, ValueError) or the path 'None'."""
    with pytest.raises(SpecError) as caught:
        JobSpec.from_dict({"model": {"layers": [{"type": "dense", "units": 2}]}, **document})
    assert field in [str(f) for f, _ in caught.value.field_violations]


def test_a_spec_may_leave_its_dataset_to_the_caller() -> None:
    """`jobs submit SPEC --dataset ID` refused a model-only spec ("dataset: is required"), though
    --dataset replaces the spec's dataset."""
    model_only = {"model": {"layers": [{"type": "dense", "units": 2}]}}
    assert JobSpec.from_dict(model_only, dataset="datasets/abc").dataset == "datasets/abc"
    given = {**model_only, "dataset": {"path": "x.csv"}}
    assert JobSpec.from_dict(given, dataset="datasets/abc").dataset == "datasets/abc"
    # The spec's dataset is checked all the same, and one is required when none is given.
    with pytest.raises(SpecError, match=r"dataset\.path"):
        JobSpec.from_dict({**model_only, "dataset": {"file": "x.csv"}}, dataset="datasets/abc")
    with pytest.raises(SpecError) as caught:
        JobSpec.from_dict(model_only)
    [(field, description)] = caught.value.field_violations
    assert field == "dataset" and "is required" in description and "--dataset" in description


def test_a_parameter_the_request_cannot_carry_as_a_number_is_refused_by_name() -> None:
    # OptimizerSpec.params holds numbers: a text parameter cannot be sent, even unvalidated.
    for validate in (True, False):
        with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as optimizer:
            client.create_job(
                "datasets/x",
                [Dense(3)],
                optimizer={"name": "sgd", "momentum": "high"},
                validate=validate,
            )
        [(field, description)] = optimizer.value.field_violations
        assert field == "training.optimizer.params['momentum']"
        assert "only numeric parameters can be sent" in description and "'high'" in description
    # The server answered this one with Python's "Adam.__init__() got an unexpected keyword".
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as unknown:
        client.create_job("datasets/x", [Dense(3)], optimizer={"name": "adam", "betaa": 0.9})
    assert unknown.value.field_violations == [
        (
            "training.optimizer.params['betaa']",
            "is not a parameter of optimizer 'adam', which takes: learning_rate, beta_1, beta_2, "
            "epsilon, weight_decay, clip_norm. Received: 'betaa'=0.9",
        )
    ]
    # And a schedule's (StepDecay.__init__() got an unexpected keyword argument).
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as unknown:
        client.create_job("datasets/x", [Dense(3)], schedule={"name": "step", "step_sizee": 3})
    assert unknown.value.field_violations == [
        (
            "training.schedule.params['step_size']",
            "is required by schedule 'step', which has no default for it. "
            "Received parameters: step_sizee",
        ),
        (
            "training.schedule.params['step_sizee']",
            "is not a parameter of schedule 'step', which takes: step_size, gamma, interval. "
            "Received: 'step_sizee'=3",
        ),
    ]


def test_a_learning_rate_given_both_as_argument_and_in_the_optimizer_is_refused() -> None:
    """The optimizer's replaced the argument without a word (the server refuses the two in its
    request's learning_rate and params)."""
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as caught:
        client.create_job(
            "datasets/x",
            [Dense(3)],
            optimizer={"name": "adam", "learning_rate": 0.5},
            learning_rate=0.1,
        )
    assert caught.value.field_violations == [
        (
            "training.optimizer.learning_rate",
            "is given twice, as learning_rate=0.1 and in the optimizer (0.5); give it once",
        )
    ]
    settings = {
        **CREATE_DEFAULTS,
        "optimizer": {"name": "adam", "learning_rate": 0.5},
        "schedule": None,
    }
    request = create_job_request("datasets/x", [Dense(3)], **settings)
    assert request.training.optimizer.learning_rate == 0.5


@pytest.mark.parametrize("validate", [True, False])
def test_an_optimizer_flag_given_as_a_numpy_bool_is_sent_as_one_or_zero(validate: bool) -> None:
    """np.True_ (a flag read from an array, a DataFrame) was refused: "must be true or false"."""
    for flag, sent in ((np.True_, 1.0), (np.False_, 0.0)):
        optimizer = {"name": "sgd", "momentum": 0.9, "nesterov": flag}
        settings = {**CREATE_DEFAULTS, "optimizer": optimizer, "schedule": None}
        request = create_job_request("datasets/x", [Dense(3)], **settings, validate=validate)
        assert request.training.optimizer.params["nesterov"] == sent


def schedule_sent(schedule: str | dict[str, Any], validate: bool = True) -> models_pb2.ScheduleSpec:
    """The ScheduleSpec `create_job` sends for `schedule`."""
    settings = {**CREATE_DEFAULTS, "schedule": schedule}
    request = create_job_request("datasets/x", [Dense(3)], **settings, validate=validate)
    return request.training.schedule


CREATE_DEFAULTS: dict[str, Any] = {
    "epochs": 1, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.0, "loss": "",
    "metrics": (), "validation_fraction": 0.0, "seed": 0, "checkpoint_every_epochs": 0,
    "early_stopping": None, "dtype": "float32", "display_name": "", "labels": None, "queue": "",
    "priority": 0, "max_attempts": 0, "request_id": None,
}  # fmt: skip


def test_a_schedules_text_parameters_are_sent_in_its_options() -> None:
    """The SDK refused them ("must be a number: only numeric parameters can be sent"): a
    reduce_on_plateau could not watch val_accuracy, nor a StepDecay decay per step."""
    plateau = {"name": "reduce_on_plateau", "monitor": "val_accuracy", "mode": "max",
               "factor": 0.5, "patience": 0}  # fmt: skip
    for validate in (True, False):
        sent = schedule_sent(plateau, validate)
        assert sent.name == "reduce_on_plateau"
        assert dict(sent.options) == {"monitor": "val_accuracy", "mode": "max"}
        assert dict(sent.params) == {"factor": 0.5, "patience": 0.0}
    sent = schedule_sent({"name": "step", "step_size": 2, "interval": "step"})
    assert dict(sent.options) == {"interval": "step"} and dict(sent.params) == {"step_size": 2.0}
    assert not schedule_sent({"name": "cosine", "total": 10}).options
    assert schedule_sent("cosine", validate=False) == models_pb2.ScheduleSpec(name="cosine")


@pytest.mark.parametrize(
    ("schedule", "field", "description"),
    [
        (
            {"name": "step", "step_size": 2, "monitor": "loss"},
            "training.schedule.options['monitor']",
            "is not a parameter of schedule 'step', which takes: step_size, gamma, interval. "
            "Received: 'monitor'='loss'",
        ),
        (
            {"name": "reduce_on_plateau", "mode": "maximum"},
            "training.schedule.options['mode']",
            "mode must be one of: auto, min, max. Received: mode='maximum'",
        ),
        (
            {"name": "step", "step_size": 2, "interval": "batch"},
            "training.schedule.options['interval']",
            "interval must be one of: epoch, step. Received: interval='batch'",
        ),
        (
            {"name": "reduce_on_plateau", "threshold_mode": "relative"},
            "training.schedule.options['threshold_mode']",
            "threshold_mode must be one of: rel, abs. Received: threshold_mode='relative'",
        ),
        (
            {"name": "reduce_on_plateau", "monitor": ""},
            "training.schedule.options['monitor']",
            "monitor must be a log key. Received: monitor=''",
        ),
        (
            {"name": "step", "step_size": "2"},
            "training.schedule.options['step_size']",
            "must be a number (step_size is a numeric parameter of schedule 'step'). "
            "Received: 'step_size'='2'",
        ),
        (
            {"name": "reduce_on_plateau", "mode": 1},
            "training.schedule.params['mode']",
            "must be text (mode is a text parameter of schedule 'reduce_on_plateau'). "
            "Received: 'mode'=1",
        ),
        (
            {"interval": "step"},
            "training.schedule.options",
            "given without training.schedule.name; name a schedule or drop the options. "
            "Received: {'interval': 'step'}",
        ),
    ],
)
def test_a_bad_schedule_text_parameter_is_refused_locally_naming_the_field(
    schedule: dict[str, Any], field: str, description: str
) -> None:
    with pytest.raises(SpecError) as caught:
        schedule_sent(schedule)
    assert caught.value.field_violations == [(field, description)]
    if isinstance(schedule.get("mode"), int):
        return  # a number the request carries
    # Unvalidated, it is sent as it is, for the server to judge.
    sent = schedule_sent(schedule, validate=False)
    assert {k: v for k, v in schedule.items() if isinstance(v, str)} == {
        **sent.options,
        **({"name": sent.name} if sent.name else {}),
    }


@pytest.mark.parametrize(
    ("schedule", "field", "description"),
    [
        (
            "cosine",
            "training.schedule.params['total']",
            "is required by schedule 'cosine', which has no default for it. "
            "Received parameters: none",
        ),
        (
            {"name": "step", "gamma": 0.5, "interval": "step"},
            "training.schedule.params['step_size']",
            "is required by schedule 'step', which has no default for it. "
            "Received parameters: gamma, interval",
        ),
    ],
)
def test_a_schedule_missing_a_parameter_it_has_no_default_for_is_refused_locally(
    schedule: str | dict[str, Any], field: str, description: str
) -> None:
    """The server answered it with the engine's "missing 1 required positional argument",
    naming no field."""
    with pytest.raises(SpecError) as caught:
        schedule_sent(schedule)
    assert caught.value.field_violations == [(field, description)]


def test_a_job_spec_passes_a_schedules_text_parameters_on() -> None:
    model = {"layers": [{"type": "dense", "units": 3}]}
    schedule = {"name": "step", "step_size": 2, "interval": "step"}
    spec = JobSpec.from_dict(
        {"dataset": "datasets/x", "model": model, "training": {"schedule": schedule}}
    )
    assert spec.options["schedule"] == schedule
    with pytest.raises(SpecError) as caught:
        JobSpec.from_dict(
            {"dataset": "datasets/x", "model": model,
             "training": {"schedule": {**schedule, "interval": "steps"}}}
        )  # fmt: skip
    assert [f for f, _ in caught.value.field_violations] == [
        "training.schedule.options['interval']"
    ]


def test_settings_without_the_name_that_turns_them_on_are_refused_as_the_server_does() -> None:
    # Sent, the server refuses them: a schedule's params without its name, early stopping's
    # settings without a monitor (which it ignored, patience=-3 and min_delta=NaN too).
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as caught:
        client.create_job(
            "datasets/x",
            [Dense(3)],
            schedule={"step_size": 3},
            early_stopping={"monitor": "", "min_delta": 0.1, "restore_best_weights": True},
        )
    assert caught.value.field_violations == [
        (
            "training.schedule.params",
            "given without training.schedule.name; name a schedule or drop the params. "
            "Received: {'step_size': 3}",
        ),
        *(
            (
                f"training.early_stopping.{key}",
                "given without training.early_stopping.monitor, which turns early stopping on; "
                f"name a monitor (e.g. val_loss) or drop early_stopping. Received: {value}",
            )
            for key, value in (("min_delta", 0.1), ("restore_best_weights", True))
        ),
    ]
    with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as patience:
        client.create_job("datasets/x", [Dense(3)], early_stopping={"patience": 3})
    assert [f for f, _ in patience.value.field_violations] == ["training.early_stopping.patience"]


TRAINING: dict[str, Any] = {
    "epochs": 1, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.001, "loss": "",
    "metrics": (), "validation_fraction": 0.0, "schedule": None, "dtype": "float32",
    "checkpoint_every_epochs": 0, "max_attempts": 1,
}  # fmt: skip
EARLY_STOPPING_UNSET = {"patience": 0, "min_delta": 0.0, "restore_best_weights": False}


@pytest.mark.parametrize(
    "early_stopping",
    [EARLY_STOPPING_UNSET, {"monitor": "", **EARLY_STOPPING_UNSET}, {"min_delta": 0}],
)
def test_early_stopping_defaults_without_a_monitor_are_taken_as_the_server_takes_them(
    early_stopping: dict[str, object],
) -> None:
    """The SDK refused patience 0, min_delta 0 or restore_best_weights False without a monitor,
    which the server takes (proto3 sends no default, so it sees none of them)."""
    check_training(**TRAINING, early_stopping=early_stopping)


def test_early_stopping_values_without_a_monitor_are_refused_naming_each() -> None:
    # -0.0 is sent (its sign is set), and the server refuses it as it would 0.5.
    given = {"patience": 0, "min_delta": -0.0, "restore_best_weights": True}
    with pytest.raises(SpecError) as caught:
        check_training(**TRAINING, early_stopping=given)
    assert [field for field, _ in caught.value.field_violations] == [
        "training.early_stopping.min_delta",
        "training.early_stopping.restore_best_weights",
    ]


@pytest.mark.parametrize("value", ["10", True])
def test_unvalidated_parameters_follow_the_validated_rule_for_numbers(value: object) -> None:
    """float() would have sent "10" as 10.0 and True as 1.0."""
    for validate in (True, False):
        with Client("127.0.0.1:9") as client, pytest.raises(SpecError) as caught:
            client.create_job(
                "datasets/x", [Dense(3)], optimizer={"name": "sgd", "momentum": value},
                validate=validate,
            )  # fmt: skip
        assert [f for f, _ in caught.value.field_violations] == [
            "training.optimizer.params['momentum']"
        ]


def test_a_long_one_line_yaml_model_is_text_not_a_path() -> None:
    layers = ", ".join("{type: dense, units: 16, activation: relu}" for _ in range(8))
    text = f"{{layers: [{layers}]}}"
    assert len(text) > 255, "longer than a file name may be"
    assert len(model_to_dict(text)["layers"]) == 8


def test_an_upload_is_hashed_without_a_copy_of_the_whole_dataset() -> None:
    """The SHA-256 was taken of `features + targets` as one bytes object, a second copy of the
    whole dataset beside the one the upload sends (traced by tracemalloc, not timed)."""
    features = np.random.default_rng(0).normal(size=(20_000, 64)).astype(np.float32)
    labels = np.arange(20_000) % 10
    tracemalloc.start()
    try:
        upload = prepare_upload(
            features, labels, task=None, name="", num_classes=0, feature_names=(),
            class_names=(), labels=None,
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    payload = features.nbytes + labels.astype(np.int64).nbytes
    assert upload.sha256 == hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest()
    assert peak < 1.5 * payload, (peak, payload)


def test_a_prelu_in_its_activation_form_takes_init_alone() -> None:
    """Its other keys passed the SDK's check and were refused by the server, not as a
    SpecError naming them."""
    layer = {"type": "activation", "activation": {"name": "prelu", "init": 0.1, "bogus": 1}}
    with pytest.raises(SpecError) as caught:
        model_spec_check({"layers": [{"type": "dense", "units": 4}, layer]})
    assert [f for f, _ in caught.value.field_violations] == ["model.layers[1].activation.bogus"]
    model_spec_check({"layers": [{"type": "dense", "units": 4}, {**layer, "activation": "prelu"}]})


@pytest.mark.parametrize("task", ["binary", "multiclass", None])
def test_classification_targets_of_several_columns_are_refused_before_sending(
    task: str | None,
) -> None:
    """One-hot labels were sent (and inferred binary), then refused by the server once every
    byte had been."""
    one_hot = np.array([[1, 0], [0, 1], [1, 0]])
    arguments: dict[str, Any] = {
        "task": task, "name": "", "num_classes": 0, "feature_names": (), "class_names": (),
        "labels": None,
    }  # fmt: skip
    with pytest.raises(ValueError) as refused:
        prepare_upload(np.zeros((3, 2), np.float32), one_hot, **arguments)
    assert str(refused.value).startswith(
        "classification targets must be labels of shape (3,), one class per example (of one-hot "
        "rows, send each row's argmax); 2 target columns make a regression."
    )


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"num_classes": 99_999_999_999}, "num_classes must be 0 (from the labels) to"),
        ({"num_classes": -1}, "num_classes must be 0"),
        ({"class_names": ["x", "", "z"]}, "class_names[1] is an empty name: give each class"),
        ({"feature_names": [" ", "b"]}, "feature_names[0] is an empty name: give each feature"),
        (
            {"class_names": ["x", "y", "x"]},
            "class_names[2] names 'x', as class_names[0] does: each class needs a name of its own",
        ),
        ({"feature_names": ["a", 7]}, "feature_names[1] must be text. Received: 7"),
        (
            {"class_names": ["a", "b"]},
            "class_names has 2 names for the 3 classes the labels make (0 to 2, num_classes "
            "being 0): give one name per class, or set num_classes to the classes they are for",
        ),
        (
            {"class_names": ["a", "b", "c"], "num_classes": 4},
            "class_names has 3 names for the 4 classes num_classes gives: give one name per class",
        ),
        (
            {"class_names": ["a", "b", "c"], "task": "binary"},
            "class_names has 3 names for the 2 classes of a binary task (labels 0 and 1)",
        ),
    ],
)
def test_an_upload_refuses_what_its_header_cannot_carry_naming_it(
    given: dict[str, Any], says: str
) -> None:
    """A class count past int32 was protobuf's "Value out of range", naming nothing; an empty
    name was stored; a repeated one, or names not one per class, were refused after the whole
    upload, and neither said which."""
    arguments: dict[str, Any] = {
        "task": "multiclass", "name": "", "num_classes": 0, "feature_names": (),
        "class_names": (), "labels": None, **given,
    }  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(says)):
        prepare_upload(np.zeros((3, 2), np.float32), np.array([0, 1, 2]), **arguments)
