"""Trainer: exact resume, callbacks, history, validation, and learning real problems."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainwire.engine import (
    Callback,
    Model,
    Trainer,
    load_state,
    metrics,
    save_state,
    saved_in_epoch,
)

SPEC = {
    "input_dim": 4,
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 8, "activation": "tanh"},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 3},
    ],
}
EPOCHS = 4
SPLIT = 0.2  # 70 rows -> 56 train rows -> batches of 16, 16, 16, 8: 4 steps per epoch


def blobs(n: int, seed: int, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """An Iris-like problem: three Gaussian classes in 4-D."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0, 0], [2.5, 2.5, 0, 1], [0, 2.5, 2.5, -1.0]])
    y = rng.integers(0, 3, size=n)
    return centers[y] + rng.normal(scale=spread, size=(n, 4)), y


def spirals(n: int, seed: int, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals of 1.5 turns each."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    y = rng.integers(0, 2, size=n)
    r = 0.2 + 2 * t / (3 * np.pi)
    angle = t + np.pi * y
    x = np.c_[r * np.cos(angle), r * np.sin(angle)] + rng.normal(scale=noise, size=(n, 2))
    return x, y


def make_trainer(optimizer: object = None, model_seed: int = 0, seed: int = 3) -> Trainer:
    model = Model.from_spec(SPEC, dtype="float32", seed=model_seed)
    return Trainer(
        model,
        loss="softmax_cross_entropy",
        optimizer=optimizer or {"name": "adam", "learning_rate": 1e-2, "weight_decay": 1e-3},
        batch_size=16,
        seed=seed,
        metrics=("accuracy",),
        shuffle=True,
    )


class StopAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.stop_step = step

    def on_batch_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if step == self.stop_step:
            trainer.stop_training = True


class StopAtEpochEnd(Callback):
    def __init__(self, epoch: int) -> None:
        self.stop_epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.stop_epoch:
            trainer.stop_training = True


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and np.array_equal(sa[key], sb[key]), key
    assert a.history.history == b.history.history
    assert (a.epoch, a.step) == (b.epoch, b.step)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(70, seed=0)


@pytest.fixture(scope="module")
def reference(data: tuple[np.ndarray, np.ndarray]) -> Trainer:
    trainer = make_trainer()
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT)
    return trainer


@pytest.mark.parametrize("stop_step", [1, 2, 4, 5, 7, 8, 13, 15])
def test_exact_resume_after_any_batch(data, reference: Trainer, stop_step: int) -> None:
    first = make_trainer()
    first.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtStep(stop_step)])
    assert first.step == stop_step and first.epoch == (stop_step - 1) // 4
    arrays, _ = load_state(save_state(first.state_dict()))

    # A fresh trainer: different init seeds, everything must come from the state.
    resumed = make_trainer(model_seed=123, seed=456)
    resumed.load_state_dict(arrays)
    history = resumed.fit(*data, epochs=EPOCHS, validation_split=SPLIT)
    assert history is resumed.history and len(history["loss"]) == EPOCHS
    _assert_same_run(resumed, reference)


def test_exact_resume_at_epoch_end_and_repeatedly(data, reference: Trainer) -> None:
    trainer = make_trainer()
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtEpochEnd(0)])
    assert (trainer.epoch, trainer.step) == (1, 4)
    for stop in (6, 9, 14):  # several interruptions in a row, each through bytes
        arrays, _ = load_state(save_state(trainer.state_dict()))
        trainer = make_trainer(model_seed=stop)
        trainer.load_state_dict(arrays)
        trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtStep(stop)])
        assert trainer.step == stop
    arrays, _ = load_state(save_state(trainer.state_dict()))
    trainer = make_trainer()
    trainer.load_state_dict(arrays)
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT)
    _assert_same_run(trainer, reference)


def test_continuing_fit_equals_one_fit(data, reference: Trainer) -> None:
    trainer = make_trainer()
    trainer.fit(*data, epochs=1, validation_split=SPLIT)
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT)  # epochs is the total
    _assert_same_run(trainer, reference)
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT)  # already done: no-op
    assert trainer.step == reference.step


@pytest.mark.parametrize(
    "optimizer",
    [{"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}, "sgd"],
)
def test_exact_resume_with_sgd(data, optimizer: object) -> None:
    ref = make_trainer(optimizer)
    ref.fit(*data, epochs=3)
    first = make_trainer(optimizer)
    first.fit(*data, epochs=3, callbacks=[StopAtStep(6)])
    resumed = make_trainer(optimizer)
    resumed.load_state_dict(load_state(save_state(first.state_dict()))[0])
    resumed.fit(*data, epochs=3)
    _assert_same_run(resumed, ref)


def test_load_state_dict_rejects_mismatches(data) -> None:
    trainer = make_trainer()
    trainer.fit(*data, epochs=1, callbacks=[StopAtStep(2)])
    state = trainer.state_dict()
    other = Trainer(trainer.model, loss="softmax_cross_entropy", batch_size=8)
    with pytest.raises(ValueError, match="batch_size=16"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="missing entries"):
        make_trainer().load_state_dict({k: v for k, v in state.items() if k != "trainer.epoch"})
    with pytest.raises(ValueError, match="Optimizer state does not match"):
        make_trainer("sgd").load_state_dict(state)
    resumed = make_trainer()
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match="same data"):
        resumed.fit(data[0][:40], data[1][:40], epochs=2)


def paused_state(data, stop_step: int = 6) -> dict[str, np.ndarray]:
    """A run's state after ``stop_step`` (6: partway through its second epoch), as a checkpoint
    gives it back."""
    trainer = make_trainer()
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtStep(stop_step)])
    return load_state(save_state(trainer.state_dict()))[0]


def assert_refused(
    data, state: dict[str, np.ndarray], match: str, trainer: Trainer | None = None
) -> None:
    """load_state_dict refuses ``state`` with a ValueError matching ``match`` and leaves
    ``trainer`` (by default one partway through a run of its own) exactly as it was."""
    if trainer is None:
        trainer = make_trainer(model_seed=5, seed=6)
        trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtStep(3)])
    before = trainer.state_dict()
    with pytest.raises(ValueError, match=match):
        trainer.load_state_dict(state)
    after = trainer.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():  # bit for bit (a schedule's unset rate is NaN)
        assert after[key].dtype == value.dtype and after[key].shape == value.shape, key
        assert after[key].tobytes() == value.tobytes(), key


def test_a_refused_state_leaves_the_trainer_as_it_was_and_usable(data, reference) -> None:
    """The optimizer's entries are wrong, and the model's, checked first, are right: none of
    them may be loaded, and the trainer then trains as if the load had never been tried."""
    state = paused_state(data)
    state["optimizer.layers.0.kernel.m"] = state["optimizer.layers.0.kernel.m"].T.copy()
    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"optimizer\.layers\.0\.kernel\.m"):
        trainer.load_state_dict(state)
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT)
    _assert_same_run(trainer, reference)


def test_load_refuses_optimizer_slots_shaped_unlike_their_parameters(data) -> None:
    state = paused_state(data)
    state["optimizer.layers.2.bias.v"] = np.zeros(9, np.float32)
    assert_refused(data, state, r"optimizer\.layers\.2\.bias\.v must be float32\(8,\)")


def test_load_refuses_schedule_entries_for_a_trainer_without_schedule(data) -> None:
    state = paused_state(data)
    state["schedule.best"] = np.array(0.5)
    assert_refused(data, state, "schedule entries")


def _json(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8).copy()


def _edited(state: dict[str, np.ndarray], **entries: object) -> dict[str, np.ndarray]:
    """``state`` with entries replaced (``trainer__epoch`` is ``trainer.epoch``); a callable
    value gets the old array and returns the new one, None removes the entry."""
    state = dict(state)
    for name, value in entries.items():
        key = name.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = np.asarray(value(state[key]) if callable(value) else value)
    return state


def _swap_rows(perm: np.ndarray) -> np.ndarray:
    perm = perm.copy()
    perm[1] = perm[0]
    return perm


def test_saved_in_epoch_tells_a_state_saved_partway_through_an_epoch(data) -> None:
    """What a checkpoint's bytes say of it (migration 0009 reads it): saved after a batch, or at
    an epoch's end. A state with no such entry (model weights alone) or a flag that is not 0 or
    1 is refused, not taken for either."""
    paused = paused_state(data)
    assert saved_in_epoch(paused)
    trainer = make_trainer()
    trainer.fit(*data, epochs=EPOCHS, validation_split=SPLIT, callbacks=[StopAtEpochEnd(0)])
    assert not saved_in_epoch(load_state(save_state(trainer.state_dict()))[0])
    with pytest.raises(KeyError):
        saved_in_epoch(trainer.model.state_dict())
    with pytest.raises(ValueError, match=r"'trainer.in_epoch' must be 0 or 1. Received: 2"):
        saved_in_epoch(_edited(paused, trainer__in_epoch=np.uint8(2)))


# paused_state() is partway through epoch 1: 56 training rows, batch 2 of 4 done, step 6.
@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"trainer__permutation": lambda p: p[:-1]}, r"permutation of range\(55\)"),
        ({"trainer__permutation": lambda p: np.r_[p, p[3]]}, r"range\(57\). Received: row"),
        ({"trainer__permutation": _swap_rows}, r"range\(56\). Received: row \d+ 2 times"),
        ({"trainer__permutation": lambda p: np.where(p == 7, 56, p)}, "Received: an index 56"),
        ({"trainer__permutation": lambda p: np.where(p == 7, -1, p)}, "Received: an index -1"),
        ({"trainer__permutation": lambda p: p.astype(np.float64)}, "1-D integer array"),
        ({"trainer__permutation": lambda p: p.reshape(7, 8)}, "1-D integer array"),
        ({"trainer__permutation": np.zeros(0, np.int64)}, "is empty, but 'trainer.in_epoch'"),
        ({"trainer__in_epoch": np.uint8(0)}, "holds 56 rows, but 'trainer.in_epoch'"),
        ({"trainer__in_epoch": np.uint8(2)}, r"'trainer.in_epoch' must be 0 or 1"),
    ],
)
def test_load_refuses_a_permutation_that_is_not_one_of_the_training_rows(
    data, damage, match
) -> None:
    """Rows trained twice and rows never trained would pass silently; an index past the data
    would fail deep inside the epoch."""
    assert_refused(data, _edited(paused_state(data), **damage), match)


@pytest.mark.parametrize(
    ("batch_index", "match"), [(5, "has 4 batches of 16"), (-1, "must be >= 0. Received: -1")]
)
def test_load_refuses_a_batch_index_outside_the_epoch(data, batch_index: int, match: str) -> None:
    state = _edited(paused_state(data), trainer__batch_index=np.int64(batch_index))
    assert_refused(data, state, rf"'trainer\.batch_index'.*{match}")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"trainer__epoch": np.int64(-1)}, r"'trainer\.epoch' must be >= 0. Received: -1"),
        ({"trainer__step": np.int64(-6)}, r"'trainer\.step' must be >= 0. Received: -6"),
        ({"trainer__epoch": np.float64(1.0)}, r"'trainer\.epoch' must be one integer"),
        ({"trainer__step": np.array([6, 7])}, r"'trainer\.step' must be one integer"),
        (
            {"trainer__step": np.int64(2)},
            r"'trainer\.step' is 2, but its position implies at least 3",
        ),
        ({"trainer__batch_size": np.int64(0)}, r"'trainer\.batch_size' must be >= 1"),
    ],
)
def test_load_refuses_a_negative_or_malformed_epoch_or_step(data, damage, match) -> None:
    assert_refused(data, _edited(paused_state(data), **damage), match)


@pytest.mark.parametrize(
    ("rng_state", "match"),
    [
        (lambda a: a.astype(np.float64), "must be JSON text as 1-D uint8"),
        (lambda a: a[None, :], "must be JSON text as 1-D uint8"),
        (np.zeros(8, np.uint8), "is not JSON text"),
        (_json([1, 2]), "must hold a 'PCG64' generator state. Received: a JSON list"),
        (_json({"bit_generator": "MT19937"}), "Received: bit_generator='MT19937'"),
        (_json({"bit_generator": "PCG64"}), "not a valid PCG64 state: KeyError"),
        (
            _json({"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}}),
            "not a valid PCG64 state: OverflowError",
        ),
    ],
)
def test_load_refuses_an_rng_state_of_the_wrong_shape_or_type(data, rng_state, match) -> None:
    state = _edited(paused_state(data), trainer__rng_state=rng_state)
    assert_refused(data, state, rf"'trainer\.rng_state'.*{match}")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"trainer__epoch_sums": lambda s: s[:-1]}, r"'trainer\.epoch_sums' must be 3 floats"),
        ({"trainer__epoch_sums": lambda s: s.astype(np.int64)}, "must be 3 floats"),
        (
            {"trainer__epoch_sums": lambda s: np.r_[s[:-1], 16.0]},
            r"'trainer\.epoch_sums' counts 16 rows .* took 32",
        ),
        ({"trainer__epoch_weight": np.float64(-1.0)}, r"'trainer\.epoch_weight' must be"),
        ({"trainer__history_keys": _json({"loss": 1})}, "must be a list of log names"),
        ({"trainer__history_keys": _json(["loss", "loss"])}, "must name each log once"),
        (
            {"trainer__history_keys": _json(["loss", "mae"])},
            r"must name each log once, of those this trainer writes \(loss, accuracy",
        ),
        (
            {"history__val_accuracy": None},
            r"missing=\['history.val_accuracy'\], unlisted=\[\]",
        ),
        (
            {"trainer__history_keys": _json(["loss", "accuracy", "val_loss"])},
            r"missing=\[\], unlisted=\['history.val_accuracy'\]",
        ),
        ({"history__loss": lambda h: np.r_[h, h]}, r"'history\.loss' must hold at most one"),
        ({"history__loss": lambda h: h[:, None]}, r"'history\.loss' must hold at most one"),
    ],
)
def test_load_refuses_epoch_sums_and_history_that_do_not_match(data, damage, match) -> None:
    """The sums must be this trainer's (loss, each metric, rows) and count the rows the
    epoch's batches took; the history must be the logs 'trainer.history_keys' lists."""
    assert_refused(data, _edited(paused_state(data), **damage), match)


def test_callbacks_order_and_logs(data) -> None:
    events: list[tuple] = []

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            events.append(("train_begin",))

        def on_epoch_begin(self, trainer, epoch):
            events.append(("epoch_begin", epoch))

        def on_batch_end(self, trainer, step, logs):
            assert set(logs) == {"loss"} and np.isfinite(logs["loss"])
            events.append(("batch_end", step))

        def on_epoch_end(self, trainer, epoch, logs):
            assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy"}
            assert trainer.epoch == epoch + 1
            events.append(("epoch_end", epoch))

        def on_train_end(self, trainer):
            events.append(("train_end",))

    trainer = make_trainer()
    history = trainer.fit(*data, epochs=2, validation_split=SPLIT, callbacks=[Recorder()])
    epoch = lambda e, s: [("epoch_begin", e), *[("batch_end", i) for i in s], ("epoch_end", e)]  # noqa: E731
    assert events == [
        ("train_begin",),
        *epoch(0, range(1, 5)),
        *epoch(1, range(5, 9)),
        ("train_end",),
    ]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())


def test_training_metrics_come_from_the_batches(data) -> None:
    class Losses(Callback):
        def __init__(self):
            self.values: list[float] = []

        def on_batch_end(self, trainer, step, logs):
            self.values.append(logs["loss"])

    class RecordingAccuracy(metrics.Accuracy):
        def __init__(self):
            self.values: list[float] = []

        def __call__(self, y_pred, y_true):
            self.values.append(super().__call__(y_pred, y_true))
            return self.values[-1]

    rec, acc = Losses(), RecordingAccuracy()
    model = Model.from_spec(SPEC, seed=0)
    trainer = Trainer(model, loss="softmax_cross_entropy", batch_size=16, metrics=[acc])
    history = trainer.fit(*data, epochs=1, validation_split=SPLIT, callbacks=[rec])
    weights = np.array([16, 16, 16, 8])
    assert len(acc.values) == 4 + 1  # four training batches, one validation pass
    assert history["loss"][0] == pytest.approx(np.dot(rec.values, weights) / 56, rel=1e-12)
    assert history["accuracy"][0] == pytest.approx(np.dot(acc.values[:4], weights) / 56)


def test_validation_data_and_evaluate(data) -> None:
    x, y = data
    trainer = make_trainer()
    history = trainer.fit(x[:56], y[:56], epochs=1, validation_data=(x[56:], y[56:]))
    results = trainer.evaluate(x[56:], y[56:])
    assert history["val_loss"][-1] == pytest.approx(results["loss"], rel=1e-6)
    assert history["val_accuracy"][-1] == pytest.approx(results["accuracy"])
    with pytest.raises(ValueError, match="not both"):
        trainer.fit(x, y, epochs=2, validation_data=(x, y), validation_split=0.1)
    with pytest.raises(ValueError, match="labels must lie in"):
        trainer.fit(x, y + 3, epochs=2)
    with pytest.raises(ValueError, match="same number of rows"):
        trainer.fit(x, y[:-1], epochs=2)


@pytest.mark.parametrize(
    ("early_stopping", "schedule"),
    [
        ({"monitor": "val_loss", "patience": 2}, None),
        (None, {"name": "reduce_on_plateau"}),
        (None, None),
    ],
)
@pytest.mark.parametrize(
    ("validation", "match"),
    [
        ({"validation_data": "empty"}, r"^validation_data has 0 rows: validation needs at least"),
        ({"validation_split": 1e-17}, r"^validation_split=1e-17 holds out 0 of the 70 rows"),
    ],
)
def test_a_validation_set_of_no_rows_is_refused_before_any_training(
    data, early_stopping, schedule, validation, match
) -> None:
    """0 rows log no val_* key: with early stopping on val_loss the run failed at the first
    epoch's end, after that epoch had trained and its schedule step applied; without a
    monitor it trained without the validation it was given. Either way it is refused upfront."""
    x, y = data
    trainer = Trainer(
        Model.from_spec(SPEC, seed=0),
        loss="softmax_cross_entropy",
        batch_size=16,
        early_stopping=early_stopping,
        schedule=schedule,
    )
    if validation.get("validation_data") == "empty":
        validation = {"validation_data": (x[:0], y[:0])}
    before = trainer.state_dict()
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, y, epochs=2, **validation)
    assert (trainer.epoch, trainer.step, trainer.history.history) == (0, 0, {})
    for key, value in trainer.state_dict().items():
        assert value.tobytes() == before[key].tobytes(), key


@pytest.mark.parametrize("weighted", [False, True])
def test_evaluate_refuses_no_rows_as_fit_refuses_a_validation_set_of_none(
    data, weighted: bool
) -> None:
    """It answered {} (no loss, no metrics), where fit refuses such a validation set."""
    x, y = data
    trainer = make_trainer()
    weights = {"sample_weight": np.ones(0)} if weighted else {}
    with pytest.raises(ValueError, match=r"^X has 0 rows: evaluation needs at least one row"):
        trainer.evaluate(x[:0], y[:0], **weights)
    assert set(trainer.evaluate(x[:1], y[:1])) == {"loss", "accuracy"}


def test_learns_two_spirals() -> None:
    x, y = spirals(600, seed=0)
    x_test, y_test = spirals(400, seed=1)
    spec = {
        "input_dim": 2,
        "layers": [
            {"type": "dense", "units": 64, "activation": "tanh"},
            {"type": "dense", "units": 64, "activation": "tanh"},
            {"type": "dense", "units": 2},
        ],
    }
    trainer = Trainer(
        Model.from_spec(spec, seed=0),
        loss="softmax_cross_entropy",
        optimizer={"name": "adam", "learning_rate": 1e-2},
        batch_size=32,
        metrics=("accuracy",),
    )
    history = trainer.fit(x, y, epochs=150, validation_data=(x_test, y_test))
    assert history["val_accuracy"][0] < 0.8
    assert history["val_accuracy"][-1] >= 0.95


def test_learns_blobs_with_dropout() -> None:
    x, y = blobs(600, seed=1)
    x_test, y_test = blobs(300, seed=2)
    trainer = make_trainer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9})
    trainer.fit(x, y, epochs=30)
    accuracy = np.mean(np.argmax(trainer.model.predict(x_test), axis=1) == y_test)
    assert accuracy >= 0.95


def test_learns_regression_and_binary() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(500, 3))
    target = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    spec = {
        "input_dim": 3,
        "layers": [
            {"type": "dense", "units": 32, "activation": "tanh"},
            {"type": "dense", "units": 1},
        ],
    }
    reg = Trainer(
        Model.from_spec(spec, dtype="float64", seed=0),
        loss="mse",
        optimizer={"name": "adam", "learning_rate": 1e-2},
        metrics=("mae", "r2"),
    )
    history = reg.fit(x, target, epochs=100, validation_split=0.2)
    assert history["val_r2"][-1] > 0.95
    assert reg.model.predict(x).dtype == np.float64

    labels = (x[:, 0] * x[:, 1] > 0).astype(float)
    clf = Trainer(
        Model.from_spec(spec, seed=0),
        loss="binary_cross_entropy",
        optimizer={"name": "adam", "learning_rate": 1e-2},
        metrics=("accuracy",),
    )
    history = clf.fit(x, labels, epochs=60, validation_split=0.2)
    assert history["val_accuracy"][-1] > 0.9


# -- BatchNorm, schedules, early stopping, sample weights, clipping: still bit-exact -------------
RICH_SPEC = {
    "input_dim": 4,
    "layers": [
        {"type": "dense", "units": 16},
        {"type": "batch_norm", "momentum": 0.2},
        {"type": "prelu"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 8, "activation": "gelu"},
        {"type": "batch_norm"},
        {"type": "dense", "units": 3},
    ],
}
RICH_EPOCHS = 6  # 56 train rows, batches of 16: 4 steps per epoch, 24 in all


def make_rich(
    schedule: object, early: object = None, model_seed: int = 0, optimizer: object = None
) -> Trainer:
    return Trainer(
        Model.from_spec(RICH_SPEC, seed=model_seed),
        loss="softmax_cross_entropy",
        optimizer=optimizer or {"name": "adamw", "learning_rate": 2e-2},
        batch_size=16,
        seed=5,
        metrics=("accuracy",),
        schedule=schedule,
        early_stopping=early,
        clip_norm=1.0,
    )


RICH_CASES = [
    ({"name": "reduce_on_plateau", "patience": 0, "factor": 0.5}, None),
    (
        {"name": "cosine", "warmup": 3, "total": 20, "min_lr": 1e-3},
        {"monitor": "val_accuracy", "patience": 1, "restore_best_weights": True},
    ),
    (
        {"name": "step", "step_size": 2, "gamma": 0.5},
        {"monitor": "val_loss", "patience": 2, "min_delta": 0.01, "restore_best_weights": True},
    ),
]


def _rich_fit(trainer: Trainer, data, callbacks=()) -> None:
    x, y = data
    w = np.linspace(0.5, 2.0, len(y))
    trainer.fit(
        x, y, epochs=RICH_EPOCHS, validation_split=SPLIT, sample_weight=w, callbacks=list(callbacks)
    )


@pytest.mark.parametrize(("schedule", "early"), RICH_CASES)
def test_exact_resume_with_batchnorm_schedule_early_stopping(data, schedule, early) -> None:
    ref = make_rich(schedule, early)
    _rich_fit(ref, data)
    assert ref.step > 4
    total = ref.step
    for stop in sorted({1, 3, 4, 5, 9, total - 1, total}):
        first = make_rich(schedule, early)
        _rich_fit(first, data, [StopAtStep(stop)])
        resumed = make_rich(schedule, early, model_seed=99)
        resumed.load_state_dict(load_state(save_state(first.state_dict()))[0])
        _rich_fit(resumed, data)
        _assert_same_run(resumed, ref)
    if schedule["name"] == "reduce_on_plateau":
        assert min(ref.history["learning_rate"]) < 2e-2  # the plateau logic did act


def _plateau_rich(optimizer: object = None, model_seed: int = 0) -> Trainer:
    return make_rich(
        {"name": "reduce_on_plateau", "patience": 0, "factor": 0.5},
        {"monitor": "val_loss", "patience": 3, "restore_best_weights": True},
        model_seed,
        optimizer,
    )


def _rich_paused_state(data, optimizer: object = None) -> dict[str, np.ndarray]:
    """Step 9 of a run with reduce-on-plateau and early stopping that has best weights."""
    trainer = _plateau_rich(optimizer)
    _rich_fit(trainer, data, [StopAtStep(9)])
    assert trainer.early_stopping is not None and trainer.early_stopping.best_weights
    return load_state(save_state(trainer.state_dict()))[0]


def _with_first(arr: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``arr`` whose first entry is ``value``."""
    arr = arr.copy()
    arr.reshape(-1)[0] = value
    return arr


@pytest.mark.parametrize(
    ("optimizer", "damage", "match"),
    [
        (None, {"optimizer__iterations": np.int64(-1)}, "'optimizer.iterations' must be >= 0"),
        (None, {"optimizer__iterations": np.float64(9)}, "'optimizer.iterations' must be one"),
        (
            None,
            {"optimizer__layers.0.kernel.v": lambda v: -v},
            r"optimizer\.layers\.0\.kernel\.v sums squares, so it cannot be negative",
        ),
        (
            "rmsprop",
            {"optimizer__layers.6.bias.square_avg": lambda v: v - 1},
            r"optimizer\.layers\.6\.bias\.square_avg sums squares",
        ),
        ("adagrad", {"optimizer__layers.4.kernel.sum": lambda v: -v - 1}, "sum sums squares"),
        # NaN < 0 is False: a NaN second moment passed the sign check. A NaN moment, sum or
        # momentum makes its weight NaN at the next step. (An infinite second moment is a state
        # a run reaches: test_optimizers' test_an_infinite_second_moment_a_run_reaches_loads.)
        (
            None,
            {"optimizer__layers.0.kernel.v": lambda v: _with_first(v, np.nan)},
            r"optimizer\.layers\.0\.kernel\.v must not be NaN.* Received: nan at index \(0, 0\)",
        ),
        (
            None,
            {"optimizer__layers.6.bias.m": lambda m: _with_first(m, np.nan)},
            r"optimizer\.layers\.6\.bias\.m must not be NaN.* Received: nan at index \(0,\)",
        ),
        (
            "rmsprop",
            {"optimizer__layers.6.bias.square_avg": lambda v: _with_first(v, np.nan)},
            r"optimizer\.layers\.6\.bias\.square_avg must not be NaN",
        ),
        (
            "adagrad",
            {"optimizer__layers.4.kernel.sum": lambda v: _with_first(v, -np.inf)},
            r"optimizer\.layers\.4\.kernel\.sum sums squares",
        ),
        (
            {"name": "sgd", "momentum": 0.9},
            {"optimizer__layers.0.kernel.momentum": lambda b: _with_first(b, np.nan)},
            r"optimizer\.layers\.0\.kernel\.momentum must not be NaN",
        ),
    ],
)
def test_load_refuses_optimizer_state_no_run_reaches(data, optimizer, damage, match) -> None:
    """A negative iteration count makes Adam's bias correction divide by zero (at -1 steps
    done, 1 - beta**0); a negative sum of squares makes NaN."""
    state = _edited(_rich_paused_state(data, optimizer), **damage)
    assert_refused(data, state, match, _plateau_rich(optimizer, model_seed=8))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"early_stopping__wait": np.int64(-2)}, r"'early_stopping\.wait' must be >= 0"),
        ({"early_stopping__best": np.float64("nan")}, r"'early_stopping\.best' must be a number"),
        ({"early_stopping__best_epoch": np.int64(-3)}, r"'early_stopping\.best_epoch' must be >="),
        ({"early_stopping__stopped_epoch": np.ones(2)}, r"'early_stopping\.stopped_epoch' must"),
        (
            {"early_stopping__has_best_weights": np.uint8(0)},
            r"early_stopping\.has_best_weights is 0 but the state holds \d+ early_stopping",
        ),
        ({"early_stopping__waited": np.int64(1)}, r"unexpected entries: \['early_stopping\.waited"),
        (
            {"early_stopping__weights.layers.0.kernel": lambda w: w.T.copy()},
            r"'early_stopping\.weights\.layers\.0\.kernel' must have shape \(4, 16\)",
        ),
        (
            {"early_stopping__weights.layers.1.running_var": None},
            r"missing=\['early_stopping\.weights\.layers\.1\.running_var'\]",
        ),
        (
            {"schedule__num_bad_epochs": np.int64(-1)},
            r"'schedule\.num_bad_epochs' must be >= 0",
        ),
        ({"schedule__current_lr": np.float64(-0.1)}, r"'schedule\.current_lr' must be a finite"),
        ({"schedule__cooldown_counter": np.float64(0.0)}, r"'schedule\.cooldown_counter' must be"),
    ],
)
def test_load_refuses_early_stopping_and_schedule_state_no_run_reaches(data, damage, match) -> None:
    """Best weights unlike the model would fail only when restored, at an epoch's end."""
    state = _edited(_rich_paused_state(data), **damage)
    assert_refused(data, state, match, _plateau_rich(model_seed=8))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            {"model__layers.0.kernel": lambda k: _with_first(k, np.nan)},
            r"'model\.layers\.0\.kernel' must be finite.* Received: nan at index \(0, 0\) "
            r"\(1 of 64 entries",
        ),
        ({"model__layers.6.bias": lambda b: _with_first(b, np.inf)}, r"'model\.layers\.6\.bias'"),
        ({"model__layers.1.running_mean": lambda m: m * np.nan}, r"\(16 of 16 entries are NaN"),
        (
            {"model__layers.1.running_var": lambda v: _with_first(v, -2.0)},
            r"'model\.layers\.1\.running_var' is a running variance, so it cannot be negative"
            r".* Received: a minimum of -2\.0",
        ),
        (
            {"early_stopping__weights.layers.5.running_var": lambda v: _with_first(v, np.inf)},
            r"'early_stopping\.weights\.layers\.5\.running_var' must be finite",
        ),
    ],
)
def test_load_refuses_non_finite_weights_and_negative_variances(data, damage, match) -> None:
    """A NaN weight made the next epoch's loss NaN and a running variance of -2 made predict
    NaN, and both loaded silently; the worker fails a run whose loss turns NaN before it
    checkpoints, so no run saves such a state. The whole state is refused, nothing loaded.
    (The logs, `history` and `epoch_sums`, may hold what a diverging run logged.)"""
    state = _edited(_rich_paused_state(data), **damage)
    assert_refused(data, state, match, _plateau_rich(model_seed=8))


def test_batchnorm_running_stats_are_saved_and_used_for_predict(data) -> None:
    trainer = make_rich({"name": "constant"})
    _rich_fit(trainer, data)
    state = trainer.model.state_dict()
    assert {"layers.1.running_mean", "layers.1.running_var", "layers.5.running_var"} <= set(state)
    assert not np.allclose(state["layers.1.running_mean"], 0.0)
    fresh = Model.from_spec(RICH_SPEC, seed=7)
    fresh.load_state_dict(state)
    x = data[0][:9]
    assert np.array_equal(fresh.predict(x), trainer.model.predict(x))
    # Eval mode: one row alone gets what it gets among nine (no batch statistics). Not bit for
    # bit: BLAS rounds a 1-row product (gemv) differently from a 9-row one (see inference.py).
    np.testing.assert_allclose(
        fresh.predict(x[:1]), trainer.model.predict(x)[:1], rtol=1e-5, atol=1e-6
    )


def _noisy_regression(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 3))
    y = x @ np.array([1.0, -1.0, 0.5])
    y_val = y[:40] + rng.normal(scale=3.0, size=40)  # a noisy validation set: loss plateaus
    return x, y, x[:40], y_val


def test_early_stopping_stops_and_restores_best_weights() -> None:
    x, y, xv, yv = _noisy_regression()
    seen = []

    class Snap(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append((logs["val_loss"], trainer.model.state_dict()))

    def build(restore: bool) -> Trainer:
        spec = {
            "input_dim": 3,
            "layers": [
                {"type": "dense", "units": 16, "activation": "tanh"},
                {"type": "dense", "units": 1},
            ],
        }
        return Trainer(
            Model.from_spec(spec, seed=0),
            optimizer={"name": "adam", "learning_rate": 0.05},
            batch_size=16,
            early_stopping={"monitor": "val_loss", "patience": 3, "restore_best_weights": restore},
        )

    trainer = build(True)
    history = trainer.fit(x, y, epochs=200, validation_data=(xv, yv), callbacks=[Snap()])
    es = trainer.early_stopping
    assert es is not None and es.stopped and trainer.epoch < 200
    losses = history["val_loss"]
    best = int(np.argmin(losses))
    assert es.best_epoch == best and len(losses) == best + 4  # patience 3 after the best
    final = trainer.model.state_dict()
    assert all(np.array_equal(final[k], seen[best][1][k]) for k in final)
    assert trainer.evaluate(xv, yv)["loss"] == pytest.approx(losses[best], rel=1e-6)
    # The logs of the model kept are the best epoch's, not the last epoch's.
    assert trainer.model_logs() == {key: values[best] for key, values in history.history.items()}
    assert trainer.model_logs()["val_loss"] < losses[-1]
    steps = trainer.step
    trainer.fit(x, y, epochs=300, validation_data=(xv, yv))  # it has fired: no more training
    assert trainer.step == steps

    no_restore = build(False)
    no_restore.fit(x, y, epochs=200, validation_data=(xv, yv))
    assert no_restore.epoch == trainer.epoch
    last = no_restore.model.state_dict()
    assert any(not np.array_equal(last[k], final[k]) for k in final)
    logged = no_restore.history.history
    assert no_restore.model_logs() == {key: values[-1] for key, values in logged.items()}


def test_early_stopping_validation() -> None:
    model = Model.from_spec(SPEC, seed=0)
    with pytest.raises(ValueError, match="patience"):
        Trainer(model, early_stopping={"patience": -1})
    with pytest.raises(ValueError, match="Invalid early_stopping arguments"):
        Trainer(model, early_stopping={"monitor": "loss", "wait": 2})
    trainer = Trainer(model, loss="softmax_cross_entropy", early_stopping={"monitor": "val_acc"})
    x, y = blobs(40, seed=0)
    with pytest.raises(ValueError, match="monitors 'val_acc'"):
        trainer.fit(x, y, epochs=1, validation_split=0.2)


def test_sample_weights_in_fit() -> None:
    x, y = blobs(64, seed=3)

    def run(weights, rows=slice(None)):
        trainer = make_trainer({"name": "sgd", "learning_rate": 0.1})
        trainer.shuffle = False
        trainer.fit(x[rows], y[rows], epochs=2, sample_weight=weights)
        return trainer

    plain, ones = run(None), run(np.ones(64))
    np.testing.assert_allclose(ones.history["loss"], plain.history["loss"], rtol=1e-6)
    assert ones.history["accuracy"] == plain.history["accuracy"]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            plain.model.state_dict().values(), ones.model.state_dict().values(), strict=True
        )
    )
    # Scaling all weights by a constant changes nothing (weighted *mean*) up to rounding.
    scaled = run(np.full(64, 3.0))
    np.testing.assert_allclose(scaled.history["loss"], plain.history["loss"], rtol=1e-5)
    # Zero weight on a whole batch: that step's gradient is zero, so SGD leaves weights alone.
    w = np.ones(64)
    w[:16] = 0.0
    zero = make_trainer({"name": "sgd", "learning_rate": 0.1})
    zero.shuffle = False
    before = zero.model.state_dict()
    zero.fit(x, y, epochs=1, sample_weight=w, callbacks=[StopAtStep(1)])
    after = zero.model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        run(np.ones(10))
    with pytest.raises(ValueError, match="non-negative"):
        run(-np.ones(64))


def test_weighted_validation_loss(data) -> None:
    x, y = data
    x_val, y_val = x[56:], y[56:]
    w = np.geomspace(0.05, 5.0, len(y_val))  # weights far from uniform
    trainer = make_trainer()
    history = trainer.fit(x[:56], y[:56], epochs=1, validation_data=(x_val, y_val, w))
    # The reference, independent of the engine's loss code: each row's cross entropy from the
    # trained model's logits, log-softmax written out, weighted by w.
    logits = trainer.model.predict(x_val).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    per_row = -log_probs[np.arange(len(logits)), y_val]
    expected = float(np.dot(w, per_row) / w.sum())
    assert history["val_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert history["val_loss"][0] != pytest.approx(float(per_row.mean()), rel=1e-3)


def test_num_threads_limits_blas_during_fit(data) -> None:
    from threadpoolctl import threadpool_info

    seen: list[int] = []

    class Probe(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 1:
                seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    trainer = make_trainer()
    trainer.num_threads = 1
    trainer.fit(*data, epochs=1, callbacks=[Probe()])
    assert seen and set(seen) == {1}
    assert trainer.optimizer.num_threads == 1


def test_optimizer_threads_do_not_change_results(data, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainwire.engine import optimizers

    monkeypatch.setattr(optimizers, "_MIN_PER_THREAD", 8)
    monkeypatch.setattr(optimizers, "_BLOCK", 40)
    runs = []
    for threads in (1, 3):
        trainer = make_trainer()
        trainer.optimizer.num_threads = threads
        trainer.fit(*data, epochs=2, validation_split=SPLIT)
        assert trainer.optimizer.num_threads == threads
        runs.append(trainer)
    _assert_same_run(*runs)


def test_engine_level_thread_setting() -> None:
    from threadpoolctl import threadpool_info

    from trainwire.engine import get_num_threads, set_num_threads

    def blas() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    original = blas()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1 and blas() == {1}
        with pytest.raises(ValueError, match="num_threads"):
            set_num_threads(0)
    finally:
        set_num_threads(None)
    assert blas() == original and get_num_threads() == max(original)
