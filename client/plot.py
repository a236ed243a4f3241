"""Training curves as a PNG, with matplotlib (the optional `plot` extra: pip install
'trainwire[plot]', or .venv/bin/pip install -e '.[plot]' in a source checkout).

One panel per metric family: `loss` with `val_loss`, `accuracy` with `val_accuracy`, ...
(`learning_rate` and `batch_loss` get their own). The PNG's text metadata lists the curves drawn
(`Curves: loss,val_loss,...`), so scripts and tests can check a file without reading pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _families(metrics: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    families: dict[str, list[str]] = {}
    for name in sorted(metrics, key=lambda n: (n.removeprefix("val_"), n.startswith("val_"))):
        families.setdefault(name.removeprefix("val_"), []).append(name)
    return families


def metrics_figure(metrics: Mapping[str, np.ndarray], title: str = "") -> Any:
    """A matplotlib Figure of the curves (metric value by epoch); not attached to pyplot."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        # Both forms: an installed package takes the extra by name, a source checkout (where the
        # Makefile's .venv lacks it) only by path.
        raise ImportError(
            "plotting needs matplotlib, from the 'plot' extra: pip install 'trainwire[plot]', "
            "or in a source checkout .venv/bin/pip install -e '.[plot]'"
        ) from error
    families = _families({k: v for k, v in metrics.items() if len(v)})
    if not families:
        raise ValueError("the job has no metrics to plot yet")
    columns = min(len(families), 2)
    rows = (len(families) + columns - 1) // columns
    figure = Figure(figsize=(6 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (family, names) in zip(axes, families.items(), strict=False):
        for name in names:
            points = metrics[name]
            # The per-step series (batch_loss) is drawn against its step.
            x = points[:, 1] if name != "batch_loss" else points[:, 0]
            ax.plot(x, points[:, 2], marker="." if len(points) < 30 else None, label=name)
        ax.set_title(family)
        ax.set_xlabel("step" if names == ["batch_loss"] else "epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        if family == "learning_rate" and np.all(metrics[names[0]][:, 2] > 0):
            ax.set_yscale("log")
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def save_metrics_plot(
    metrics: Mapping[str, np.ndarray], path: str | Path, title: str = "", dpi: int = 100
) -> Path:
    """Saves the curves of `metrics` as a PNG at `path` and returns the path."""
    figure = metrics_figure(metrics, title)  # says how to install matplotlib if it is missing
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    target = Path(path)
    drawn = _families({k: v for k, v in metrics.items() if len(v)})
    curves = ",".join(name for names in drawn.values() for name in names)
    figure.savefig(
        target,
        format="png",
        dpi=dpi,
        metadata={"Title": title or "Trainwire training curves", "Curves": curves},
    )
    return target
