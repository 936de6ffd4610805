"""The PNG figures a run writes: confusion matrix and training curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects, not through pyplot, so
writing them never changes the caller's backend (a notebook keeps showing its plots).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_confusion(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    """Row-normalised confusion matrix (true class on rows)."""
    matrix = np.asarray(confusion, dtype=float)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.3 * len(classes))
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, shrink=0.6, label="fraction of true class")
    fig.savefig(path, dpi=120)


def plot_curves(path: Path, metrics_csvs: list[Path]) -> None:
    """Per-epoch training loss and validation metrics from Lightning's CSV logs.

    A resumed fit logs into a new file; an epoch logged by both an interrupted and the
    resuming fit is averaged over both.
    """
    rows: list[dict[str, str]] = []
    for metrics_csv in metrics_csvs:
        with metrics_csv.open(newline="") as f:
            rows.extend(csv.DictReader(f))
    # Lightning logs training loss per step and validation metrics per epoch.
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        epoch = int(float(row.get("epoch") or 0))
        for key, value in row.items():
            if value and (key.startswith("val_") or key == "train_loss"):
                values.setdefault(key, {}).setdefault(epoch, []).append(float(value))
    series = {
        k: {e: float(np.mean(v)) for e, v in per_epoch.items()} for k, per_epoch in values.items()
    }
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key, points in sorted(series.items()):
        ax = loss_ax if key.endswith("loss") else metric_ax
        epochs = sorted(points)
        ax.plot([e + 1 for e in epochs], [points[e] for e in epochs], marker="o", label=key)
    for ax, title in ((loss_ax, "loss"), (metric_ax, "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
