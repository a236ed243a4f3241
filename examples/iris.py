"""Loads the Iris data shipped in examples/data (no scikit-learn needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

IRIS_CSV = Path(__file__).parent / "data" / "iris.csv"


def load_iris() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(features float32 (150, 4), labels int64 (150,), feature names, class names)."""
    with IRIS_CSV.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    classes = sorted({row[-1] for row in body})
    features = np.array([[float(v) for v in row[:-1]] for row in body], dtype=np.float32)
    labels = np.array([classes.index(row[-1]) for row in body], dtype=np.int64)
    return features, labels, header[:-1], classes
