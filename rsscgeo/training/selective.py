"""Selective prediction: how accurate the model is on the images it is sure of.

A model that maps an image as Uncertain when its calibrated top-1 probability is below
the card's ``uncertain_below`` commits to a share of the images (the *coverage*). The
accuracy on those committed images, and the risk-coverage curve (the accuracy of the
most confident k% of the images for every k), say whether its confidence can be trusted
on a dataset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

# Coverage steps of the risk-coverage curve: 5%, 10%, ..., 100%.
CURVE_STEP = 0.05


@dataclass(frozen=True)
class Coverage:
    """The images committed at a probability threshold and the accuracy on them."""

    threshold: float
    coverage: float  # share of the images whose top-1 probability >= threshold
    committed: int
    accuracy: float | None  # on the committed images; None when none is committed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``coverage 82.0% at p >= 0.50 (820 images), accuracy 0.9100 on them``."""
        accuracy = "none committed" if self.accuracy is None else f"accuracy {self.accuracy:.4f}"
        return (
            f"coverage {self.coverage:.1%} at p >= {self.threshold:.2f} "
            f"({self.committed} images), {accuracy} on them"
        )


@dataclass(frozen=True)
class CurvePoint:
    """The most confident ``coverage`` share of the images: their accuracy and lowest p."""

    coverage: float
    accuracy: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return asdict(self)


def coverage_at(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> Coverage:
    """Coverage and accuracy of the images with ``confidence >= threshold``.

    Args:
        confidence: Calibrated top-1 probability per image (N).
        correct: Whether each image's prediction is correct (N, bool).
        threshold: The Uncertain cut-off, e.g. the card's ``uncertain_below``.
    """
    committed = confidence >= threshold
    n = int(committed.sum())
    accuracy = float(correct[committed].float().mean()) if n else None
    return Coverage(threshold, n / max(len(confidence), 1), n, accuracy)


def risk_coverage(
    confidence: torch.Tensor, correct: torch.Tensor, step: float = CURVE_STEP
) -> list[CurvePoint]:
    """Accuracy of the most confident images at coverage ``step``, ``2 * step``, ... 1.

    Images are ranked by confidence (ties keep their order); a coverage that rounds to
    the same number of images as the previous one is not repeated.
    """
    total = len(confidence)
    if total == 0:
        return []
    order = torch.sort(confidence.float(), descending=True, stable=True).indices
    ranked_conf, ranked_correct = confidence[order], correct[order].float()
    hits = torch.cumsum(ranked_correct, 0)
    points, seen = [], set()
    for k in range(1, round(1 / step) + 1):
        n = min(total, max(1, math.ceil(k * step * total - 1e-9)))
        if n in seen:
            continue
        seen.add(n)
        points.append(CurvePoint(n / total, float(hits[n - 1]) / n, float(ranked_conf[n - 1])))
    return points


def plot_risk_coverage(
    path: Path, curves: dict[str, list[CurvePoint]], title: str, marker: Coverage | None = None
) -> None:
    """Accuracy against coverage, one line per curve, the Uncertain cut-off as a dot."""
    from matplotlib.figure import Figure  # pyplot-free: the caller's backend stays

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for label, points in curves.items():
        xs = [100 * p.coverage for p in points]
        ax.plot(xs, [100 * p.accuracy for p in points], marker="o", markersize=3, label=label)
    if marker is not None and marker.accuracy is not None:
        ax.plot(
            100 * marker.coverage,
            100 * marker.accuracy,
            "k*",
            markersize=10,
            label=f"p >= {marker.threshold:.2f}",
        )
    ax.set_xlabel("coverage: most confident images (%)")
    ax.set_ylabel("accuracy on them (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.savefig(path, dpi=120)
