"""Training curves as a PNG, or in another format matplotlib writes (PDF, SVG, ...) named by the
file's extension, with matplotlib (the optional `plot` extra: pip install 'trainwire[plot]', or
.venv/bin/pip install -e '.[plot]' in a source checkout).

One panel per metric family: `loss` with `val_loss`, `accuracy` with `val_accuracy`, ...
(`learning_rate` and `batch_loss` get their own). The PNG's text metadata lists the curves drawn
(`Curves: loss,val_loss,...`), so scripts and tests can check a file without reading pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .errors import NoMetrics
from .files import replaced_file

# What each format's file takes of the metadata: PNG any text (the curves too), the vector formats
# a title alone, the other bitmaps nothing. pgf (LaTeX code, not a picture) is not offered.
TITLED_FORMATS = frozenset({"pdf", "svg", "svgz", "eps", "ps"})


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
        raise NoMetrics(
            "the job has no metrics to plot yet: it records them as it finishes each epoch "
            "(`trainwire jobs watch` follows it)",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
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
    """Saves the curves of `metrics` at `path` and returns the path: in the format its extension
    names (`.png`, `.pdf`, `.svg`, ...; PNG without one), a ValueError for one matplotlib does
    not write."""
    figure = metrics_figure(metrics, title)  # says how to install matplotlib if it is missing
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    target = Path(path)
    extension = target.suffix.lower().removeprefix(".")
    formats = sorted(set(canvas.get_supported_filetypes()) - {"pgf"})
    if extension and extension not in formats:
        raise ValueError(
            f"cannot save a plot as .{extension} ({target}): name a file ending in one of "
            f"{', '.join('.' + f for f in formats)} (PNG without an extension)"
        )
    file_format = extension or "png"
    drawn = _families({k: v for k, v in metrics.items() if len(v)})
    curves = ",".join(name for names in drawn.values() for name in names)
    metadata: dict[str, str] | None = None
    if file_format == "png":
        metadata = {"Title": title or "Trainwire training curves", "Curves": curves}
    elif file_format in TITLED_FORMATS:
        metadata = {"Title": title or "Trainwire training curves"}
    with replaced_file(target) as handle:
        figure.savefig(handle, format=file_format, dpi=dpi, metadata=metadata)
    return target
