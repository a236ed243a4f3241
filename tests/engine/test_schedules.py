"""Learning-rate schedules vs torch.optim.lr_scheduler, closed forms, and use in the Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainwire.engine import Model, Trainer, schedules


def _torch_lrs(torch, make, epochs: int, metrics=None) -> list[float]:
    """The learning rate torch uses in each epoch (scheduler stepped once per epoch)."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.1)
    sched = make(opt)
    lrs = []
    for e in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(metrics[e]) if metrics is not None else sched.step()
    return lrs


@pytest.mark.torch
@pytest.mark.parametrize(
    ("config", "make"),
    [
        ({"name": "step", "step_size": 3}, lambda t, o: t.optim.lr_scheduler.StepLR(o, 3)),
        (
            {"name": "step", "step_size": 2, "gamma": 0.5},
            lambda t, o: t.optim.lr_scheduler.StepLR(o, 2, gamma=0.5),
        ),
        (
            {"name": "exponential", "gamma": 0.9},
            lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, 0.9),
        ),
    ],
)
def test_epoch_schedules_match_torch(torch, config: dict, make) -> None:
    sched = schedules.get(config)
    ours = [sched.learning_rate(0.1, step=1000 + e, epoch=e) for e in range(20)]
    theirs = _torch_lrs(torch, lambda o: make(torch, o), 20)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


PLATEAU_CASES = [
    {"patience": 2},
    {"patience": 1, "factor": 0.5, "cooldown": 2, "min_lr": 0.004},
    {"patience": 0, "threshold": 0.05, "threshold_mode": "abs"},
    {"monitor": "val_accuracy", "patience": 1, "factor": 0.3},
]


@pytest.mark.torch
@pytest.mark.parametrize("kwargs", PLATEAU_CASES)
def test_reduce_on_plateau_matches_torch(torch, kwargs: dict) -> None:
    rng = np.random.default_rng(0)
    metrics = list(1.0 / (1.0 + np.arange(30)) + rng.uniform(0, 0.2, size=30))
    monitor = kwargs.get("monitor", "val_loss")
    mode = "max" if "acc" in monitor else "min"
    sched = schedules.get({"name": "reduce_on_plateau", **kwargs})
    ours = []
    for e, value in enumerate(metrics):
        ours.append(sched.learning_rate(0.1, step=e * 7, epoch=e))
        sched.on_epoch_end(e, {monitor: value})
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "monitor"}
    theirs = _torch_lrs(
        torch,
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode=mode, **torch_kwargs),
        30,
        metrics,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert min(ours) < 0.1  # the case does reduce


def test_cosine_with_warmup_closed_form() -> None:
    base, min_lr, warmup, total = 0.2, 0.01, 5, 25
    sched = schedules.get({"name": "cosine", "warmup": warmup, "total": total, "min_lr": min_lr})
    assert sched.interval == "step"
    for t in range(40):
        got = sched.learning_rate(base, step=t, epoch=0)
        if t < warmup:
            expected = base * (t + 1) / warmup
        elif t < total:
            expected = min_lr + (base - min_lr) * 0.5 * (
                1 + math.cos(math.pi * (t - warmup) / (total - warmup))
            )
        else:
            expected = min_lr
        assert got == pytest.approx(expected, rel=1e-15), t
    assert sched.learning_rate(base, 4, 0) == base  # warm-up ends at the base rate
    assert sched.learning_rate(base, 15, 0) == pytest.approx((base + min_lr) / 2)  # half-way
    by_epoch = schedules.get({"name": "cosine", "total": 10, "interval": "epoch"})
    assert by_epoch.learning_rate(1.0, step=999, epoch=0) == 1.0
    assert by_epoch.learning_rate(1.0, step=0, epoch=5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"name": "step"}, "step_size"),
        ({"name": "step", "step_size": 0}, "step_size"),
        ({"name": "exponential", "gamma": -1.0}, "gamma"),
        # A growing rate overflows partway through a run (1e10 ** 31 is not a float).
        ({"name": "exponential", "gamma": 1e10}, r"gamma must be a number in \(0.0, 1.0\]"),
        ({"name": "step", "step_size": 1, "gamma": 1.5}, r"gamma must be a number in \(0.0, 1.0\]"),
        ({"name": "cosine", "total": 10, "warmup": 10}, "warmup"),
        ({"name": "cosine", "total": 10, "interval": "batch"}, "interval"),
        ({"name": "reduce_on_plateau", "factor": 1.0}, "factor"),
        ({"name": "reduce_on_plateau", "mode": "up"}, "mode"),
        ({"name": "cosin"}, "cosine"),
    ],
)
def test_schedule_validation(config: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        schedules.get(config)


def test_a_decay_of_one_keeps_the_rate() -> None:
    for config in (
        {"name": "exponential", "gamma": 1},
        {"name": "step", "step_size": 1, "gamma": 1.0},
    ):
        assert schedules.get(config).learning_rate(0.1, step=10**6, epoch=10**6) == 0.1


def _trainer(schedule: object, epochs_data: int = 40) -> tuple[Trainer, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(epochs_data, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=epochs_data)
    model = Model.from_spec({"input_dim": 3, "layers": [{"type": "dense", "units": 1}]}, seed=0)
    trainer = Trainer(
        model,
        loss="mse",
        optimizer={"name": "sgd", "learning_rate": 0.1},
        batch_size=10,
        schedule=schedule,
    )
    return trainer, x, y


def test_trainer_applies_the_schedule_per_step() -> None:
    seen: list[float] = []
    # Four steps an epoch, and a new rate every four: the logged rate is the last step's, not
    # the next one's.
    trainer, x, y = _trainer({"name": "step", "step_size": 4, "gamma": 0.5, "interval": "step"})
    original = trainer.optimizer.step_flat

    def recording(flat_params, flat_grads):  # type: ignore[no-untyped-def]
        seen.append(trainer.optimizer.learning_rate)
        original(flat_params, flat_grads)

    trainer.optimizer.step_flat = recording  # type: ignore[method-assign]
    history = trainer.fit(x, y, epochs=2)
    assert seen == [0.1 * 0.5 ** (t // 4) for t in range(8)]
    assert history["learning_rate"] == [seen[3], seen[7]] == [0.1, 0.05]


def test_plateau_needs_a_logged_monitor() -> None:
    trainer, x, y = _trainer({"name": "reduce_on_plateau"})
    with pytest.raises(ValueError, match=r"monitors 'val_loss', which this fit does not log"):
        trainer.fit(x, y, epochs=1)
    trainer.fit(x, y, epochs=1, validation_split=0.25)
    assert trainer.epoch == 1


def test_the_text_parameters_and_their_choices_are_the_ones_the_schedules_check() -> None:
    """The SDK and the server send and check a job's text schedule settings by these (the
    request carries them apart from its numbers): they must be what the constructors take."""
    assert schedules.text_parameters("constant") == {"interval"}
    assert schedules.text_parameters("step") == {"interval"}
    assert schedules.text_parameters("cosine") == {"interval"}
    assert schedules.text_parameters("reduce_on_plateau") == {
        "monitor",
        "mode",
        "threshold_mode",
    }
    assert schedules.text_parameters("no-such") == frozenset()
    for key, choices in schedules.CHOICES.items():
        for choice in choices:
            assert schedules.check_text_parameter(key, choice) == choice
        with pytest.raises(ValueError, match=rf"^{key} must be one of: {', '.join(choices)}\."):
            schedules.check_text_parameter(key, "other")
    # Every text parameter a constructor takes is checked the same way by the constructor.
    plateau = schedules.get({"name": "reduce_on_plateau", "mode": "max", "threshold_mode": "abs"})
    assert plateau.get_config()["mode"] == "max"
    with pytest.raises(ValueError, match=r"^mode must be one of: auto, min, max"):
        schedules.get({"name": "reduce_on_plateau", "mode": "maximum"})
    assert schedules.check_text_parameter("monitor", "val_accuracy") == "val_accuracy"
    with pytest.raises(ValueError, match="monitor must be a log key"):
        schedules.check_text_parameter("monitor", "")
