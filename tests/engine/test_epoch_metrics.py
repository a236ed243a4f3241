"""Training metrics are epoch values over the epoch's batches: r2 is the R² of all the outputs
the model produced in the epoch against their targets (not a mean of per-batch R²), exactly
resumable, accurate for targets with a large mean, and loadable from a state saved before it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_absolute_error, r2_score

from trainwire.engine import Callback, Model, Trainer, load_state, metrics, save_state

ROWS = 50  # batches of 4: 12 of 4 rows and one of 2, 13 steps an epoch


class BatchRecorder(Callback):
    """Records the outputs of each training batch (as the model produced them, dropout and all)
    and the batch's targets, found by its input rows, epoch by epoch."""

    def __init__(self, trainer: Trainer, x: np.ndarray, y: np.ndarray) -> None:
        self.epochs: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], [])]
        rows = np.asarray(x, dtype=trainer.model.dtype)
        assert len({row.tobytes() for row in rows}) == rows.shape[0]  # rows identify targets
        targets = {row.tobytes(): target for row, target in zip(rows, y, strict=True)}
        model, forward = trainer.model, trainer.model.forward

        def recording(xb, training=False, rng=None):
            out = forward(xb, training=training, rng=rng)
            if training:
                outputs, batch_targets = self.epochs[-1]
                outputs.append(out.copy())
                batch_targets.append(np.array([targets[row.tobytes()] for row in xb]))
            return out

        model.forward = recording

    def on_epoch_end(self, trainer, epoch, logs):
        self.epochs.append(([], []))

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(targets, outputs) of every training batch of the e-th epoch recorded."""
        outputs, targets = self.epochs[e]
        out = np.concatenate(outputs)
        return np.concatenate(targets).reshape(out.shape), out


def regression(rows: int, outputs: int, seed: int, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    y = offset + x @ rng.normal(size=(5, outputs)) + 0.3 * rng.normal(size=(rows, outputs))
    return x, (y[:, 0] if outputs == 1 else y)


def mlp(inputs: int, outputs: int, seed: int = 0) -> Model:
    spec = {
        "input_dim": inputs,
        "layers": [
            {"type": "dense", "units": 8, "activation": "tanh"},
            {"type": "dropout", "rate": 0.2},
            {"type": "dense", "units": outputs},
        ],
    }
    return Model.from_spec(spec, dtype="float64", seed=seed)


def make_trainer(outputs: int, batch_size: int = 4, model_seed: int = 0, seed: int = 1):
    return Trainer(
        mlp(5, outputs, model_seed),
        loss="mse",
        optimizer={"name": "adam", "learning_rate": 0.05},
        batch_size=batch_size,
        seed=seed,
        metrics=("mae", "r2"),
    )


def assert_epochs_score_their_batches(history, recorder: BatchRecorder, epochs: int) -> None:
    for e in range(epochs):
        y, p = recorder.epoch(e)
        assert history["r2"][e] == pytest.approx(r2_score(y, p), rel=1e-9, abs=1e-12), e
        assert history["mae"][e] == pytest.approx(mean_absolute_error(y, p), rel=1e-12), e


@pytest.mark.parametrize("batch_size", [1, 4, 442])
def test_training_r2_on_diabetes_is_the_r2_of_the_epochs_outputs(batch_size: int) -> None:
    """The reviewer's case: one row has no variance (per-batch R² 0 at batch_size=1) and
    per-batch R² of 4 rows averaged to -0.56 where the rows' R² was 0.51."""
    x, y = load_diabetes(return_X_y=True)
    trainer = Trainer(
        mlp(10, 1),
        loss="mse",
        optimizer={"name": "adam", "learning_rate": 0.1},
        batch_size=batch_size,
        metrics=("mae", "r2"),
    )
    recorder = BatchRecorder(trainer, x, y)
    history = trainer.fit(x, y, epochs=3, callbacks=[recorder])
    assert_epochs_score_their_batches(history, recorder, 3)


@pytest.mark.parametrize("batch_size", [1, 4, ROWS])
def test_training_r2_of_several_outputs_with_a_constant_one(batch_size: int) -> None:
    """Uniform average over the columns; a constant column scores 0 unless predicted exactly
    (sklearn's rule too)."""
    x, y = regression(ROWS, 2, seed=0)
    y = np.c_[y, np.full(ROWS, 0.5)]
    trainer = make_trainer(3, batch_size)
    recorder = BatchRecorder(trainer, x, y)
    history = trainer.fit(x, y, epochs=3, callbacks=[recorder])
    assert_epochs_score_their_batches(history, recorder, 3)


def test_training_r2_of_targets_with_a_large_mean() -> None:
    """Targets 1e6 + signal + noise: sums of raw squares would lose SS_tot to cancellation."""
    x, y = regression(ROWS, 1, seed=2, offset=1e6)
    model = Model.from_spec(
        {"input_dim": 5, "layers": [{"type": "dense", "units": 1}]}, dtype="float64", seed=0
    )
    model.load_state_dict({**model.state_dict(), "layers.0.bias": np.array([1e6])})
    trainer = Trainer(
        model,
        loss="mse",
        optimizer={"name": "sgd", "learning_rate": 0.01},
        batch_size=4,
        metrics=("r2",),
    )
    recorder = BatchRecorder(trainer, x, y)
    history = trainer.fit(x, y, epochs=3, callbacks=[recorder])
    assert 0.5 < history["r2"][-1] < 1.0  # a real score: the model is near the targets
    for e in range(3):
        y_e, p_e = recorder.epoch(e)
        assert history["r2"][e] == pytest.approx(r2_score(y_e, p_e), rel=1e-9), e


@pytest.mark.parametrize("mean", [0.0, 1e6, 1e8, 1e12])
def test_r2_statistics_merged_over_batches_are_exact_for_a_large_mean(mean: float) -> None:
    """Against exact rational arithmetic: sum(y^2) - n mean^2 in float64 is off by about 1e-4
    of SS_tot at a mean of 1e6 and entirely at 1e8; the merged statistics are not."""
    rng = np.random.default_rng(3)
    y = mean + rng.normal(size=(203, 2))
    p = y + rng.normal(scale=0.3, size=y.shape)
    r2 = metrics.R2Score()
    stats = np.zeros(r2.epoch_stats_size(2))
    for start in range(0, 203, 4):
        r2.accumulate(stats, p[start : start + 4], y[start : start + 4])
    scores = []
    for j in range(2):
        ys, ps = [Fraction(v) for v in y[:, j]], [Fraction(v) for v in p[:, j]]
        centre = sum(ys) / len(ys)
        ss_tot = sum((v - centre) ** 2 for v in ys)
        ss_res = sum((v - q) ** 2 for v, q in zip(ys, ps, strict=True))
        scores.append(1 - ss_res / ss_tot)
    exact = float(sum(scores) / 2)
    assert r2.epoch_value(stats, 203) == pytest.approx(exact, rel=1e-12)
    assert r2(p, y) == pytest.approx(exact, rel=1e-12)


def test_a_constant_column_is_constant_whatever_its_value() -> None:
    """Three copies of 0.1 have a float mean of 0.10000000000000002: a column's SS_tot taken
    from it is about 6e-34, not 0, and the rule for a constant column did not apply (R² -5e31,
    as sklearn's r2_score gives). Deviations from the column's first target are exactly 0."""
    const = np.full((3, 1), 0.1)
    r2 = metrics.R2Score()
    assert r2(const, const) == 1.0 and r2(const * 2, const) == 0.0
    stats = np.zeros(r2.epoch_stats_size(1))
    for row in range(3):
        r2.accumulate(stats, const[row : row + 1] * 2, const[row : row + 1])
    assert r2.epoch_value(stats, 3) == 0.0


@pytest.mark.parametrize("stop_step", [5, 13, 20])
def test_a_run_stopped_mid_epoch_and_resumed_logs_what_one_run_logs(stop_step: int) -> None:
    """Stopped after step 5 (epoch 0 in progress), 13 (epoch 0's last batch, its end not yet
    run) or 20, saved to bytes, loaded into a fresh trainer: the same logs and state, bit for
    bit, and those r2 values are the R² of each epoch's outputs."""
    x, y = regression(ROWS, 2, seed=4)
    reference = make_trainer(2)
    recorder = BatchRecorder(reference, x, y)
    reference.fit(x, y, epochs=3, validation_split=0.2, callbacks=[recorder])
    assert_epochs_score_their_batches(reference.history, recorder, 3)

    class StopAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            trainer.stop_training = step == stop_step

    first = make_trainer(2)
    first.fit(x, y, epochs=3, validation_split=0.2, callbacks=[StopAt()])
    assert first.step == stop_step and first.in_epoch
    resumed = make_trainer(2, model_seed=7, seed=8)
    resumed.load_state_dict(load_state(save_state(first.state_dict()))[0])
    resumed.fit(x, y, epochs=3, validation_split=0.2)
    assert resumed.history.history == reference.history.history
    a, b = resumed.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _legacy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` as the code before epoch statistics saved it: [loss * weight, mae * n,
    r2 * n, n] (a made-up r2 sum: it cannot be used)."""
    legacy = {k: v for k, v in state.items() if k != "trainer.epoch_statistics"}
    sums = state["trainer.epoch_sums"]
    legacy["trainer.epoch_sums"] = np.array([sums[0], sums[1], -3.0 * sums[-1], sums[-1]])
    return legacy


def test_a_state_keeps_epoch_sums_in_the_layout_older_releases_check() -> None:
    """Saved with the statistics in 'trainer.epoch_sums' (8 floats here), a job checkpointed by
    this release and resumed by an older worker (a rollback) failed for good: "must be 4 floats
    (loss, 2 metrics, rows)". That entry keeps their layout; the statistics have their own."""
    x, y = regression(40, 1, seed=5)

    class StopAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            trainer.stop_training = step == 5

    trainer = make_trainer(1)  # metrics mae and r2
    trainer.fit(x, y, epochs=2, callbacks=[StopAt()])
    state = trainer.state_dict()
    statistics = state["trainer.epoch_statistics"]
    assert statistics.shape == (8,)  # loss, mae, r2's 1 + 4, rows
    # loss, mae as they were (value * rows), r2's float 0 (a mean of no batch), rows.
    assert state["trainer.epoch_sums"].tolist() == [statistics[0], statistics[1], 0.0, 20.0]


@pytest.mark.parametrize(("stop_step", "rows_left"), [(5, 20), (10, 0), (13, 28)])
def test_a_state_saved_before_epoch_statistics_loads(stop_step: int, rows_left: int) -> None:
    """Stopped in epoch 0 after 5 of its 10 batches, after its last (its end not yet run), or in
    epoch 1 after 3. The loss and mae sums carry on as they were; r2's statistics start at the
    resume, so the epoch in progress logs the R² of the rows trained after it (0 if none are
    left), and the other epochs log what one run does."""
    x, y = regression(40, 1, seed=5)  # 10 batches of 4
    reference = make_trainer(1)
    reference.fit(x, y, epochs=3)

    class StopAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            trainer.stop_training = step == stop_step

    first = make_trainer(1)
    first.fit(x, y, epochs=3, callbacks=[StopAt()])
    state = _legacy(first.state_dict())
    resumed = make_trainer(1, model_seed=7)
    resumed.load_state_dict(load_state(save_state(state))[0])
    recorder = BatchRecorder(resumed, x, y)
    resumed.fit(x, y, epochs=3, callbacks=[recorder])
    got, want = resumed.history.history, reference.history.history
    assert got["loss"] == want["loss"] and got["mae"] == want["mae"]
    in_progress = (stop_step - 1) // 10
    for e in range(3):
        if e != in_progress:
            assert got["r2"][e] == want["r2"][e], e
    if rows_left == 0:
        assert got["r2"][in_progress] == 0.0
    else:
        y_e, p_e = recorder.epoch(0)
        assert y_e.shape[0] == rows_left
        assert got["r2"][in_progress] == pytest.approx(r2_score(y_e, p_e), rel=1e-9)


def test_an_epoch_resumed_from_a_state_before_epoch_statistics_may_stop_and_resume_again() -> None:
    """Resumed from such a state, r2's statistics count only the rows after the resume: saved
    again in the same epoch, the state was refused ("count 12 rows, but the batches took 24"),
    and a job restarted twice in one epoch across the upgrade failed for good."""
    x, y = regression(40, 1, seed=5)  # 10 batches of 4
    reference = make_trainer(1)
    reference.fit(x, y, epochs=2)

    def stop_at(step: int) -> Callback:
        class StopAt(Callback):
            def on_batch_end(self, trainer, at, logs):
                trainer.stop_training = at == step

        return StopAt()

    first = make_trainer(1)
    first.fit(x, y, epochs=2, callbacks=[stop_at(3)])
    second = make_trainer(1, model_seed=7)
    second.load_state_dict(load_state(save_state(_legacy(first.state_dict())))[0])
    second.fit(x, y, epochs=2, callbacks=[stop_at(6)])
    assert second.step == 6 and second.in_epoch
    third = make_trainer(1, model_seed=9)
    third.load_state_dict(load_state(save_state(second.state_dict()))[0])
    third.fit(x, y, epochs=2)
    got, want = third.history.history, reference.history.history
    assert got["loss"] == want["loss"] and got["mae"] == want["mae"]
    assert got["r2"][1] == want["r2"][1], "the epochs after it log what one run does"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: s[:-1], r"'trainer\.epoch_statistics' must be 8 floats"),
        (lambda s: np.r_[s[:2], s[2] + 4, s[3:]], r"r2 statistics count 24 rows, .* took 20"),
        (lambda s: np.r_[s[:2], -1.0, s[3:]], r"r2 statistics count -1 rows, .* took 20"),
        (lambda s: np.r_[s[:5], -1.0, s[6:]], r"r2 statistics hold a negative sum of squares"),
    ],
)
def test_load_refuses_r2_statistics_that_do_not_match(damage, match: str) -> None:
    x, y = regression(ROWS, 1, seed=6)

    class StopAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            trainer.stop_training = step == 5

    first = make_trainer(1)
    first.fit(x, y, epochs=1, callbacks=[StopAt()])
    state = first.state_dict()
    # [loss, mae, r2: n, shift, mean, m2, ss_res, n]
    statistics = state["trainer.epoch_statistics"]
    assert statistics.shape == (8,) and statistics[2] == 20
    state["trainer.epoch_statistics"] = damage(statistics)
    fresh = make_trainer(1)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
