"""Local checks of model and training specs, run before any network call.

They catch what can be judged without the dataset: unknown layer types, keys and registry names
(checked against the engine's own registries), non-positive sizes, rates out of range, non-finite
numbers. Every problem is reported at once as a `SpecError` whose `field_violations` use the
server's field paths (`model.layers[1].units`). What needs the dataset (input width, number of
classes, a loss that suits the targets) and the server's limits are still checked by the server,
but for metrics that suit its task: `create_job` given the dataset's `DatasetInfo` knows the task
and checks them by the rule the server applies (`metric_misfits`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, TypeGuard

import numpy as np

from .errors import SpecError
from .specs import name_of

LAYER_KEYS: dict[str, frozenset[str]] = {
    "dense": frozenset(
        {"type", "units", "activation", "use_bias", "kernel_initializer", "bias_initializer"}
    ),
    "dropout": frozenset({"type", "rate"}),
    "batch_norm": frozenset({"type", "momentum", "epsilon"}),
    "activation": frozenset({"type", "activation"}),
    "prelu": frozenset({"type", "init"}),
}
EARLY_STOPPING_KEYS = frozenset({"monitor", "patience", "min_delta", "restore_best_weights"})
# The settings of early stopping other than its monitor, at the values the wire does not send.
EARLY_STOPPING_DEFAULTS: dict[str, object] = {
    "patience": 0,
    "min_delta": 0.0,
    "restore_best_weights": False,
}
# The ranges of the request's integer fields: a value outside cannot be sent at all.
INT32 = (-(2**31), 2**31 - 1)
UINT64 = (0, 2**64 - 1)
# The server's bound (server/training.py): a client from before paging gets every checkpoint
# kept in one ListCheckpoints answer.
MAX_KEEP_CHECKPOINTS = 1000
# An optimizer's parameters travel in a map of doubles (`params`); a schedule's text ones
# (interval, monitor, mode, threshold_mode) in a map of strings (`options`) beside it.
NUMBERS_ONLY = (
    "must be a number: only numeric parameters can be sent (leave it out for its default)"
)


@cache
def registry_names(kind: str) -> frozenset[str]:
    """Names the engine knows for `kind` (activation, initializer, optimizer, loss, schedule,
    metric)."""
    from trainwire.engine import activations, initializers, losses, metrics, optimizers, schedules

    modules = {
        "activation": activations,
        "initializer": initializers,
        "optimizer": optimizers,
        "loss": losses,
        "schedule": schedules,
        "metric": metrics,
    }
    return frozenset(modules[kind].REGISTRY)


def metric_misfits(
    metrics: Sequence[object],
    dataset: str,
    task: str,
    classification: bool,
    target_shape: Sequence[int],
) -> list[tuple[str, str]]:
    """(field, description) of each of `metrics` that does not score `dataset`'s kind of target
    (`task` and `target_shape` describe it): the engine computes mae or r2 of a classifier's
    logits against its labels only to fail at the first epoch (a reshape error naming no
    field), and accuracy of a regression's outputs as if they were logits, meaninglessly. The
    server refuses them at CreateJob, the SDK before sending it when it knows the task. Names
    the engine does not know are left to the registry check."""
    from trainwire.engine import metrics as engine_metrics
    from trainwire.engine.errors import quoted

    fitting = engine_metrics.names_for(classification)
    kind = "class labels" if classification else "real-valued targets"
    misfits = []
    for index, metric in enumerate(metrics):
        if not isinstance(metric, str) or metric.lower() not in registry_names("metric"):
            continue
        if metric.lower() not in fitting:
            misfits.append(
                (
                    f"training.metrics[{index}]",
                    f"{quoted(metric)} does not fit {dataset}, which is {task} with {kind} of "
                    f"shape {list(target_shape)}: use {', '.join(fitting)}, or leave metrics "
                    "empty for its defaults",
                )
            )
    return misfits


# The loss a job trains by when its request names none, by its dataset's task (the server's
# `DEFAULT_LOSSES`).
DEFAULT_LOSSES = {
    "regression": "mse",
    "binary": "binary_cross_entropy",
    "multiclass": "softmax_cross_entropy",
}
# The losses that take logits and apply this output function to them themselves.
LOSS_OUTPUT_FUNCTIONS = {"softmax_cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}
# What a classifier's predictions apply to its logits: a sigmoid to one, a softmax to several
# (server/predictions.py `classify`).
ANSWER_OUTPUT_FUNCTIONS = ("sigmoid", "softmax")


def output_activation_misfits(
    layers: Sequence[Mapping[str, Any]], loss: str, classification: bool
) -> list[tuple[str, str]]:
    """(field, description) of a last layer (dropout aside: it does nothing at prediction)
    whose activation is a function applied to its outputs again: the one `loss` applies to the
    logits itself (a softmax before softmax_cross_entropy, a sigmoid before
    binary_cross_entropy), or, for a `classification` dataset, a sigmoid or softmax, one of
    which its predictions apply. Applied twice, the probabilities answered can never be
    confident (at most e / (e + k - 1) of k classes, or sigmoid(1) = 0.73 of one; a sigmoid
    head before predictions' sigmoid answers class 1 for every row) and a cross-entropy never
    nears 0. The server refuses it at CreateJob, the SDK before sending it when it knows the
    loss or the task."""
    index = len(layers) - 1
    while index > 0 and str(layers[index].get("type", "")).lower() == "dropout":
        index -= 1
    if index < 0:
        return []
    function = name_of(layers[index].get("activation", "")).lower()
    field = f"model.layers[{index}].activation"
    fix = "leave the last layer without an activation; predictions answer the probabilities"
    if LOSS_OUTPUT_FUNCTIONS.get(str(loss).lower()) == function:
        return [
            (
                field,
                f"{loss} takes logits and applies the {function} itself, so a {function} here "
                f"applies it twice (the probabilities answered could never be confident): {fix}",
            )
        ]
    if classification and function in ANSWER_OUTPUT_FUNCTIONS:
        return [
            (
                field,
                f"a classifier's outputs are logits, which its predictions turn into "
                f"probabilities with a sigmoid (one output) or a softmax, so a {function} here "
                f"is applied before one of them (the probabilities answered could never be "
                f"confident): {fix}",
            )
        ]
    return []


def parameter_names(kind: str, name: str) -> tuple[str, ...] | None:
    """The parameters the engine's `kind` (optimizer or schedule) called `name` takes, or None
    for a name it does not know."""
    from trainwire.engine import optimizers, schedules

    return (optimizers if kind == "optimizer" else schedules).parameters(name)


def optimizer_flags(name: str) -> frozenset[str]:
    """The parameters of the engine's optimizer `name` that are flags (`nesterov`, `centered`):
    given as True or False, they are sent as 1 and 0."""
    from trainwire.engine import optimizers

    return optimizers.flags(name)


def schedule_text_parameters(name: str) -> frozenset[str]:
    """The parameters of the engine's schedule `name` that are text (`interval`, `monitor`,
    `mode`, `threshold_mode`): given as strings, they are sent in the schedule's `options`."""
    from trainwire.engine import schedules

    return schedules.text_parameters(name)


def schedule_required_parameters(name: str) -> tuple[str, ...]:
    """The parameters the engine's schedule `name` has no default for (step's `step_size`,
    exponential's `gamma`, cosine's `total`), empty for a name it does not know."""
    from trainwire.engine import schedules

    return schedules.required_parameters(name)


def schedule_text_problem(key: str, value: str) -> str | None:
    """Why the engine's schedules refuse `value` for their text parameter `key` (not one of its
    choices, an empty monitor), or None if they take it."""
    from trainwire.engine import schedules

    try:
        schedules.check_text_parameter(key, value)
    except ValueError as error:
        return str(error)
    return None


class _Checker:
    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def positive_int(self, field: str, value: object) -> None:
        """A positive int32 field."""
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.add(field, f"must be a positive integer. Received: {value!r}")
        else:
            self.integer(field, value, (1, INT32[1]))

    def non_negative_int(self, field: str, value: object) -> None:
        """A non-negative int32 field."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.add(field, f"must be a non-negative integer. Received: {value!r}")
        else:
            self.integer(field, value, (0, INT32[1]))

    def integer(self, field: str, value: object, bounds: tuple[int, int] = INT32) -> None:
        """An integer field of the request, within the range its wire type carries."""
        low, high = bounds
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.add(field, f"must be an integer in [{low}, {high}]. Received: {value!r}")
        elif not low <= int(value) <= high:
            wire = "uint64" if bounds == UINT64 else "int32"
            self.add(
                field,
                f"must be in [{low}, {high}], the range of the request's {wire} field. "
                f"Received: {value}",
            )

    def text(self, field: str, value: object) -> None:
        if not isinstance(value, str):
            self.add(field, f"must be a string. Received: {value!r} ({type(value).__name__})")

    def labels(self, field: str, value: object) -> None:
        """Labels: absent, or a mapping of string keys to string values."""
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.add(field, f"must be a mapping of strings to strings. Received: {value!r}")
            return
        for key, label in value.items():
            if not isinstance(key, str) or not isinstance(label, str):
                self.add(
                    f"{field}[{key!r}]",
                    f"keys and values must be strings. Received: {key!r}: {label!r} "
                    f"({type(label).__name__}); write the value as text, e.g. {str(label)!r}",
                )

    def number(
        self,
        field: str,
        value: object,
        low: float,
        high: float,
        *,
        open_low: bool = False,
        open_high: bool = False,
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(field, f"must be a number. Received: {value!r}")
        elif not math.isfinite(value):
            self.add(field, f"must be a finite number. Received: {value}")
        elif (
            value < low
            or value > high
            or (open_low and value == low)
            or (open_high and value == high)
        ):
            interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            self.add(field, f"must be in {interval}. Received: {value}")

    def parameter(self, field: str, value: object) -> None:
        """A parameter of an optimizer or a schedule."""
        if not is_parameter_number(value):
            self.add(field, f"{NUMBERS_ONLY}. Received: {value!r}")
        else:
            self.number(field, float(value), -math.inf, math.inf)

    def name(self, field: str, kind: str, value: object, *, optional: bool = False) -> None:
        if isinstance(value, Mapping):
            value = value.get("name")
            field = f"{field}.name"
        if optional and value in (None, ""):
            return
        known = registry_names(kind)
        if not isinstance(value, str) or value.lower() not in known:
            self.add(
                field, f"unknown {kind} {value!r}; expected one of: {', '.join(sorted(known))}"
            )

    def params(self, kind: str, spec: Mapping[str, Any], checked: tuple[str, ...] = ()) -> None:
        """The parameters beside an optimizer's or a schedule's name: each one it takes (when the
        name is known) and a number (the request carries doubles), but a schedule's text
        parameters, which are text the engine takes (sent in its `options`); those `checked`
        elsewhere are only looked up."""
        name = spec.get("name")
        accepted = parameter_names(kind, name) if isinstance(name, str) else None
        flags = optimizer_flags(name) if kind == "optimizer" and isinstance(name, str) else ()
        text = (
            schedule_text_parameters(name) if kind == "schedule" and isinstance(name, str) else ()
        )
        for key, value in spec.items():
            sent_as_text = kind == "schedule" and isinstance(value, str)
            field = f"training.{kind}.{'options' if sent_as_text else 'params'}[{key!r}]"
            if key == "name":
                continue
            if accepted is not None and key not in accepted:
                self.add(
                    field,
                    f"is not a parameter of {kind} {name!r}, which takes: "
                    f"{', '.join(accepted)}. Received: {key!r}={value!r}",
                )
            elif sent_as_text:
                if accepted is None:
                    continue  # no schedule, or an unknown one: refused by its name
                if key not in text:
                    self.add(
                        field,
                        f"must be a number ({key} is a numeric parameter of schedule {name!r}). "
                        f"Received: {key!r}={value!r}",
                    )
                elif (problem := schedule_text_problem(key, value)) is not None:
                    self.add(field, problem)
            elif key in text:
                self.add(
                    field,
                    f"must be text ({key} is a text parameter of schedule {name!r}). "
                    f"Received: {key!r}={value!r}",
                )
            elif key in flags:
                if flag_value(value) is None:
                    self.add(field, f"must be true or false (or 1 or 0). Received: {value!r}")
            elif key not in checked:
                self.parameter(field, value)

    def no_params(self, field: str, value: object, remedy: str) -> None:
        """A registry entry that travels as a name only: a mapping may hold nothing but it."""
        if isinstance(value, Mapping) and set(value) - {"name"}:
            params = {k: v for k, v in value.items() if k != "name"}
            self.add(field, f"takes a name only, not parameters ({remedy}). Received: {params!r}")

    def raise_if_any(self) -> None:
        if self.violations:
            raise SpecError(self.violations)


def is_parameter_number(value: object) -> TypeGuard[numbers.Real]:
    """Whether an optimizer's or a schedule's parameter is a number the request can carry: a
    real number (NumPy's too), not a bool, not text such as "10"."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flag_value(value: object) -> float | None:
    """A flag parameter as the request carries it: True or 1 as 1.0, False or 0 as 0.0; None
    for anything else. NumPy's bools are bools (np.True_ was refused as "must be true or
    false"), as the engine takes them."""
    if isinstance(value, bool | np.bool_) or (is_parameter_number(value) and value in (0, 1)):
        return float(value)
    return None


def numeric_params(
    field: str, params: Mapping[str, Any], flags: frozenset[str] = frozenset()
) -> dict[str, float]:
    """An optimizer's or a schedule's parameters as the request's map of numbers, its `flags`
    (`optimizer_flags`) as 1 or 0; SpecError naming each one that is not a number
    (`is_parameter_number`), or a flag not true or false, even unvalidated (it cannot be sent at
    all). Unvalidated, a number's range is left to the server."""
    numbers_: dict[str, float] = {}
    violations: list[tuple[str, str]] = []
    for key, value in params.items():
        flag = flag_value(value) if key in flags else None
        if flag is not None:
            numbers_[key] = flag
        elif is_parameter_number(value):
            numbers_[key] = float(value)
        else:
            violations.append((f"{field}.params[{key!r}]", f"{NUMBERS_ONLY}. Received: {value!r}"))
    if violations:
        raise SpecError(violations)
    return numbers_


def check_labels(labels: object) -> None:
    """Raises SpecError naming each label that is not text (the request carries strings)."""
    checker = _Checker()
    checker.labels("labels", labels)
    checker.raise_if_any()


def check_model(spec: object) -> None:
    """Raises SpecError listing every mistake of a model spec dict."""
    checker = _Checker()
    _model(checker, spec)
    checker.raise_if_any()


def _model(checker: _Checker, spec: object) -> None:
    if not isinstance(spec, Mapping):
        checker.add("model", f"must be a mapping with a 'layers' list. Received: {spec!r}")
        return
    for key in sorted(set(spec) - {"input_dim", "layers"}):
        checker.add(f"model.{key}", "is not a model field; expected input_dim or layers")
    if spec.get("input_dim") not in (None, 0):
        checker.positive_int("model.input_dim", spec.get("input_dim"))
    layers = spec.get("layers")
    if not isinstance(layers, Sequence) or isinstance(layers, str) or not layers:
        checker.add("model.layers", f"must be a non-empty list of layers. Received: {layers!r}")
        return
    for index, layer in enumerate(layers):
        _layer(checker, f"model.layers[{index}]", layer)


def _layer(checker: _Checker, path: str, layer: object) -> None:
    if not isinstance(layer, Mapping):
        checker.add(path, f"must be a mapping with a 'type'. Received: {layer!r}")
        return
    kind = layer.get("type")
    if kind not in LAYER_KEYS:
        checker.add(
            f"{path}.type", f"must be one of: {', '.join(LAYER_KEYS)}. Received: type={kind!r}"
        )
        return
    for key in sorted(set(layer) - LAYER_KEYS[kind]):
        allowed = ", ".join(sorted(LAYER_KEYS[kind] - {"type"}))
        checker.add(f"{path}.{key}", f"is not a field of a {kind} layer; expected: {allowed}")
    if kind == "dense":
        checker.positive_int(f"{path}.units", layer.get("units"))
        _dense_activation(checker, f"{path}.activation", layer.get("activation"))
        if not isinstance(layer.get("use_bias", True), bool):
            checker.add(
                f"{path}.use_bias", f"must be true or false. Received: {layer['use_bias']!r}"
            )
        for key in ("kernel_initializer", "bias_initializer"):
            checker.name(f"{path}.{key}", "initializer", layer.get(key), optional=True)
            checker.no_params(f"{path}.{key}", layer.get(key), "initializers have none")
    elif kind == "dropout":
        checker.number(f"{path}.rate", layer.get("rate"), 0.0, 1.0, open_high=True)
    elif kind == "batch_norm":
        checker.number(f"{path}.momentum", layer.get("momentum", 0.1), 0.0, 1.0)
        checker.number(f"{path}.epsilon", layer.get("epsilon", 1e-5), 0.0, math.inf, open_low=True)
    elif kind == "prelu":
        checker.number(f"{path}.init", layer.get("init", 0.25), -math.inf, math.inf)
    elif _names_prelu(layer.get("activation")):
        # The form a job shows its PReLU in (`specs.model_spec_to_proto` sends it so), which
        # the engine builds as the PReLU layer: no activation of its registry.
        activation = layer["activation"]
        if isinstance(activation, Mapping):
            for key in sorted(set(activation) - {"name", "init"}, key=str):
                checker.add(
                    f"{path}.activation.{key}", "is not a parameter of prelu; expected: init"
                )
            init = activation.get("init", 0.25)
            checker.number(f"{path}.activation.init", init, -math.inf, math.inf)
    else:
        checker.name(f"{path}.activation", "activation", layer.get("activation"))


def _names_prelu(activation: object) -> bool:
    name = activation.get("name") if isinstance(activation, Mapping) else activation
    return isinstance(name, str) and name.lower() == "prelu"


def _dense_activation(checker: _Checker, field: str, activation: object) -> None:
    """A dense layer's activation is sent by name alone (`DenseLayer.activation` is a string):
    parameters would be dropped silently, so they are refused with the layer that carries them."""
    checker.name(field, "activation", activation, optional=True)
    if isinstance(activation, Mapping):
        params = ", ".join(f"{k}={v!r}" for k, v in activation.items() if k != "name")
        layer = {"type": "activation", "activation": dict(activation)}
        remedy = (
            "leave it out and follow this layer with "
            f"Activation({activation.get('name')!r}, {params}) or {layer!r}"
        )
        checker.no_params(field, activation, remedy)


def _required_schedule_params(checker: _Checker, schedule: str | Mapping[str, Any] | None) -> None:
    """Each parameter a known schedule has no default for must be given, as the server
    requires: the engine's refusal named no field ("missing 1 required positional argument")."""
    name = schedule.get("name") if isinstance(schedule, Mapping) else schedule
    if not isinstance(name, str):
        return
    given = set(schedule) - {"name"} if isinstance(schedule, Mapping) else set()
    for key in schedule_required_parameters(name):
        if key not in given:
            checker.add(
                f"training.schedule.params[{key!r}]",
                f"is required by schedule {name!r}, which has no default for it. "
                f"Received parameters: {', '.join(sorted(given)) or 'none'}",
            )


def check_training(
    *,
    epochs: object,
    batch_size: object,
    optimizer: str | Mapping[str, Any],
    learning_rate: object,
    loss: str,
    metrics: Sequence[str],
    validation_fraction: object,
    schedule: str | Mapping[str, Any] | None,
    early_stopping: Mapping[str, Any] | None,
    dtype: str,
    checkpoint_every_epochs: object,
    max_attempts: object,
    seed: object = 0,
    log_every_steps: object = 0,
    keep_checkpoints: object = 0,
    display_name: object = "",
    labels: object = None,
    queue: object = "",
    priority: object = 0,
    request_id: object = None,
) -> None:
    """Raises SpecError listing every mistake of the training settings of `create_job` (and of
    its other settings: name, labels, queue, priority, attempts, request id)."""
    checker = _Checker()
    checker.positive_int("training.epochs", epochs)
    checker.positive_int("training.batch_size", batch_size)
    checker.name("training.optimizer", "optimizer", optimizer)
    rate = optimizer.get("learning_rate", learning_rate) if isinstance(optimizer, Mapping) else None
    if isinstance(optimizer, Mapping) and "learning_rate" in optimizer and learning_rate:
        # The optimizer's replaced the argument in silence, as the server refuses it in both.
        checker.add(
            "training.optimizer.learning_rate",
            f"is given twice, as learning_rate={learning_rate!r} and in the optimizer "
            f"({optimizer['learning_rate']!r}); give it once",
        )
    checker.number(
        "training.optimizer.learning_rate", learning_rate if rate is None else rate, 0.0, math.inf
    )
    if isinstance(optimizer, Mapping):
        checker.params("optimizer", optimizer, checked=("learning_rate",))
    checker.name("training.loss", "loss", loss, optional=True)
    for index, metric in enumerate(metrics):
        checker.name(f"training.metrics[{index}]", "metric", metric)
    checker.number("training.validation_fraction", validation_fraction, 0.0, 1.0, open_high=True)
    checker.name("training.schedule", "schedule", schedule, optional=True)
    _required_schedule_params(checker, schedule)
    if isinstance(schedule, Mapping):
        checker.params("schedule", schedule)
        given = {k: v for k, v in schedule.items() if k != "name"}
        if schedule.get("name") in (None, ""):
            # The server refuses them too: without a name there is no schedule to take them.
            options = {k: v for k, v in given.items() if isinstance(v, str)}
            params = {k: v for k, v in given.items() if k not in options}
            for field, received in (("params", params), ("options", options)):
                if received:
                    checker.add(
                        f"training.schedule.{field}",
                        "given without training.schedule.name; name a schedule or drop the "
                        f"{field}. Received: {received!r}",
                    )
    _early_stopping(checker, early_stopping)
    if dtype not in ("float32", "float64"):
        checker.add("training.dtype", f"must be float32 or float64. Received: {dtype!r}")
    checker.non_negative_int("training.checkpoint_every_epochs", checkpoint_every_epochs)
    checker.integer("training.seed", seed, UINT64)
    checker.non_negative_int("training.log_every_steps", log_every_steps)
    checker.non_negative_int("training.keep_checkpoints", keep_checkpoints)
    if isinstance(keep_checkpoints, int) and MAX_KEEP_CHECKPOINTS < keep_checkpoints <= INT32[1]:
        checker.add(
            "training.keep_checkpoints",
            f"must be in [0, {MAX_KEEP_CHECKPOINTS}] (0: keep 3). Received: {keep_checkpoints}",
        )
    checker.text("display_name", display_name)
    checker.labels("labels", labels)
    checker.text("queue", queue)
    checker.integer("priority", priority)
    checker.non_negative_int("max_attempts", max_attempts)
    if request_id is not None:  # None: a fresh one
        checker.text("request_id", request_id)
    checker.raise_if_any()


def _is_unset(value: object, default: object) -> bool:
    """Whether a field given `value` is not sent (proto3 leaves out defaults), so the server
    sees it unset: it equals its default and is not -0.0 (whose sign is sent)."""
    if is_parameter_number(value) and math.copysign(1.0, value) < 0:
        return False
    return value == default


def _early_stopping(checker: _Checker, early_stopping: object) -> None:
    if early_stopping is None:
        return
    if not isinstance(early_stopping, Mapping):
        checker.add(
            "training.early_stopping",
            f"must be a mapping of {', '.join(sorted(EARLY_STOPPING_KEYS))}. "
            f"Received: {early_stopping!r}",
        )
        return
    for key in sorted(set(early_stopping) - EARLY_STOPPING_KEYS):
        allowed = ", ".join(sorted(EARLY_STOPPING_KEYS))
        checker.add(f"training.early_stopping.{key}", f"is not a field; expected: {allowed}")
    if "monitor" in early_stopping:
        checker.text("training.early_stopping.monitor", early_stopping["monitor"])
    if "patience" in early_stopping:
        checker.non_negative_int("training.early_stopping.patience", early_stopping["patience"])
    if "min_delta" in early_stopping:
        value = early_stopping["min_delta"]  # its size counts: the engine takes abs()
        checker.number("training.early_stopping.min_delta", value, -math.inf, math.inf)
    restore = early_stopping.get("restore_best_weights", False)
    if not isinstance(restore, bool):
        checker.add(
            "training.early_stopping.restore_best_weights",
            f"must be true or false. Received: {restore!r}",
        )
    if not early_stopping.get("monitor"):
        # An empty monitor turns early stopping off, and the server refuses settings without one
        # (those it receives: a default value is not sent, so it is taken, as by the server).
        for key in sorted(set(early_stopping) & EARLY_STOPPING_KEYS - {"monitor"}):
            if _is_unset(early_stopping[key], EARLY_STOPPING_DEFAULTS[key]):
                continue
            checker.add(
                f"training.early_stopping.{key}",
                "given without training.early_stopping.monitor, which turns early stopping on; "
                "name a monitor (e.g. val_loss) or drop early_stopping. "
                f"Received: {early_stopping[key]!r}",
            )
