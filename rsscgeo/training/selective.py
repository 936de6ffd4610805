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

import numpy as np
import torch

from rsscgeo.hierarchy import Level, label_patches
from rsscgeo.modelfile import ModelCard

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


@dataclass(frozen=True)
class BackoffCoverage:
    """What a map with families would name, and how often rightly (see ``hierarchy``).

    An image named by its class is right when the class is accepted for it; one named
    by its family, when an accepted class belongs to that family.
    """

    threshold: float
    images: int
    by_class: int
    by_family: int
    class_accuracy: float | None  # on the images named by their class
    family_accuracy: float | None  # on the images named by their family

    @property
    def coverage(self) -> float:
        """Share of the images named at either level (not Uncertain)."""
        return (self.by_class + self.by_family) / max(self.images, 1)

    @property
    def accuracy(self) -> float | None:
        """Share of the named images named rightly, at whichever level."""
        named = self.by_class + self.by_family
        if not named:
            return None
        right = (self.class_accuracy or 0.0) * self.by_class
        right += (self.family_accuracy or 0.0) * self.by_family
        return right / named

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with coverage and accuracy."""
        return asdict(self) | {"coverage": self.coverage, "accuracy": self.accuracy}

    def describe(self) -> str:
        """E.g. ``with back-off at p >= 0.70: 81.0% named (60.0% by class, ...)``."""

        def share(n: int) -> str:
            return f"{n / max(self.images, 1):.1%}"

        def rate(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        return (
            f"with back-off at p >= {self.threshold:.2f}: {share(self.by_class + self.by_family)} "
            f"named ({share(self.by_class)} by class, accuracy {rate(self.class_accuracy)}; "
            f"{share(self.by_family)} by family, accuracy {rate(self.family_accuracy)}); "
            f"accuracy {rate(self.accuracy)} on all named"
        )


def backoff_coverage(
    probs: torch.Tensor, allowed: torch.Tensor, card: ModelCard, threshold: float
) -> BackoffCoverage:
    """Score what a map with families would say for calibrated ``probs`` (N x classes).

    Args:
        probs: Calibrated class probabilities.
        allowed: N x classes, True for the classes accepted for each image.
        card: The model card (its families).
        threshold: The Uncertain threshold both levels are held to.
    """
    labels = label_patches(probs.double().numpy(), card, threshold)
    level = torch.from_numpy(labels.level.astype(np.int64))
    leaf = torch.from_numpy(labels.leaf.astype(np.int64))
    parent = torch.from_numpy(labels.parent.astype(np.int64))
    families = torch.tensor(card.parent_ids)
    # An image's accepted families: those of its accepted classes.
    accepted_family = torch.zeros(len(probs), len(card.parents), dtype=torch.bool)
    rows, classes = allowed.nonzero(as_tuple=True)
    accepted_family[rows, families[classes]] = True
    by_class = level == Level.LEAF
    by_family = level == Level.PARENT
    class_right = allowed.gather(1, leaf.clamp(min=0)[:, None]).squeeze(1)
    family_right = accepted_family.gather(1, parent.clamp(min=0)[:, None]).squeeze(1)

    def mean(right: torch.Tensor, where: torch.Tensor) -> float | None:
        return float(right[where].float().mean()) if where.any() else None

    return BackoffCoverage(
        threshold,
        len(probs),
        int(by_class.sum()),
        int(by_family.sum()),
        mean(class_right, by_class),
        mean(family_right, by_family),
    )


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
