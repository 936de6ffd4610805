"""Evaluating a model on another dataset through a class map (cross-domain accuracy).

The dataset keeps its own folder names as classes; a class map says which of the
model's classes count as correct for each folder (:mod:`rsscgeo.data.classmap`). Each
image is resized whole to the card's patch size, as ``classify`` reads a patch at the
model's ground sample distance, then goes through the card's eval transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from rsscgeo.data.classmap import LeftOut, MappedCatalog
from rsscgeo.errors import ConfigError
from rsscgeo.modelfile import LoadedModel, ModelCard
from rsscgeo.training.evaluate import DEFAULT_TTA, patch_dataset, predict_probabilities
from rsscgeo.training.selective import (
    BackoffCoverage,
    Coverage,
    CurvePoint,
    backoff_coverage,
    coverage_at,
    risk_coverage,
)


@dataclass(frozen=True)
class ClassResult:
    """One dataset class: its images, the accepted model classes and the accuracy."""

    name: str
    images: int
    accepted: tuple[str, ...]
    accuracy: float
    predicted: dict[str, int]  # model class → how many of its images got it (non-zero)


@dataclass(frozen=True)
class MappedEvaluation:
    """The figures of one model on one class-mapped dataset.

    ``confusion[i][j]`` counts the images of dataset class ``i`` predicted as model
    class ``j``.
    """

    num_images: int
    accuracy: float  # over images
    average_accuracy: float  # mean of the per-class accuracies
    classes: tuple[ClassResult, ...]
    model_classes: tuple[str, ...]
    confusion: list[list[int]]
    uncertain: Coverage
    curve: tuple[CurvePoint, ...]
    left_out: tuple[LeftOut, ...]
    tta: bool
    backoff: BackoffCoverage | None = None  # models with families

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "task": "multiclass",
            "num_images": self.num_images,
            "accuracy": self.accuracy,
            "average_accuracy": self.average_accuracy,
            "per_class_accuracy": {c.name: c.accuracy for c in self.classes},
            "per_class_images": {c.name: c.images for c in self.classes},
            "accepted": {c.name: list(c.accepted) for c in self.classes},
            "dataset_classes": [c.name for c in self.classes],
            "model_classes": list(self.model_classes),
            "confusion_matrix": self.confusion,
            "uncertain": self.uncertain.as_dict(),
            "risk_coverage": [p.as_dict() for p in self.curve],
            "left_out": [asdict(left) for left in self.left_out],
            "tta": self.tta,
        } | ({"backoff": self.backoff.as_dict()} if self.backoff else {})

    def summary(self) -> list[str]:
        """Human-readable lines: accuracy, what was left out, a per-class table, coverage."""
        lines = [
            f"accuracy {self.accuracy:.4f} on {self.num_images} images "
            f"({len(self.classes)} classes, mean per-class {self.average_accuracy:.4f}; "
            f"{'TTA x8' if self.tta else 'no TTA'})"
        ]
        lines += [f"left out: {left}" for left in self.left_out]
        width = max(len("class"), *(len(c.name) for c in self.classes))
        lines.append(f"{'class':<{width}}  images  accuracy  most often predicted")
        for c in self.classes:
            top = sorted(c.predicted.items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{name}{'' if name in c.accepted else '(x)'} {n}" for name, n in top)
            lines.append(f"{c.name:<{width}}  {c.images:>6}  {c.accuracy:>8.4f}  {shown}")
        lines.append("(x): not an accepted class")
        lines.append(self.uncertain.describe())
        if self.backoff is not None:
            lines.append(self.backoff.describe())
        return lines


def score_mapped(
    probs: torch.Tensor,
    labels: torch.Tensor,
    mapped: MappedCatalog,
    threshold: float,
    *,
    tta: bool,
    card: ModelCard | None = None,
) -> MappedEvaluation:
    """Score calibrated probabilities (N x model classes) against dataset-class labels.

    A prediction is correct when its top-1 model class is accepted for the image's class.
    With a ``card`` that has families, what a map would name with back-off is scored too.
    """
    n_data, n_model = len(mapped.catalog.classes), len(mapped.model_classes)
    allowed = torch.zeros(n_data, n_model, dtype=torch.bool)
    for index, accepted in enumerate(mapped.accepted):
        allowed[index, list(accepted)] = True
    confidence, predicted = probs.max(1)
    correct = allowed[labels, predicted]
    confusion = torch.bincount(labels * n_model + predicted, minlength=n_data * n_model)
    confusion = confusion.reshape(n_data, n_model)
    classes = []
    for index, name in enumerate(mapped.catalog.classes):
        mine = labels == index
        row = confusion[index].tolist()
        classes.append(
            ClassResult(
                name,
                int(mine.sum()),
                tuple(mapped.accepted_names(index)),
                float(correct[mine].float().mean()) if mine.any() else 0.0,
                {mapped.model_classes[j]: k for j, k in enumerate(row) if k},
            )
        )
    present = [c.accuracy for c in classes if c.images]
    return MappedEvaluation(
        num_images=len(labels),
        accuracy=float(correct.float().mean()),
        average_accuracy=sum(present) / len(present),
        classes=tuple(classes),
        model_classes=mapped.model_classes,
        confusion=confusion.tolist(),
        uncertain=coverage_at(confidence, correct, threshold),
        curve=tuple(risk_coverage(confidence, correct)),
        left_out=mapped.left_out,
        tta=tta,
        backoff=backoff_coverage(probs, allowed[labels], card, threshold)
        if card is not None and card.parents
        else None,
    )


def evaluate_with_class_map(
    loaded: LoadedModel,
    mapped: MappedCatalog,
    *,
    tta: bool = DEFAULT_TTA,
    uncertain_below: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> MappedEvaluation:
    """Evaluate ``loaded`` on the images of a class-mapped dataset.

    Args:
        loaded: The model (single-label).
        mapped: The dataset through a class map (:func:`rsscgeo.data.classmap.map_catalog`).
        tta: Average the probabilities over the 8 dihedral transforms.
        uncertain_below: The Uncertain threshold; by default the card's.
        batch_size: Images per batch.
        num_workers: Data-loading worker processes.

    Raises:
        ConfigError: If the model is multi-label.
    """
    card = loaded.card
    if card.task != "multiclass":
        raise ConfigError(
            "a class map scores single-label predictions; this model is multi-label: "
            "evaluate it without --class-map."
        )
    probs, labels = predict_probabilities(
        loaded,
        patch_dataset(card, mapped.catalog),
        tta=tta,
        batch_size=batch_size,
        num_workers=num_workers,
        description="evaluating",
    )
    threshold = card.uncertain_below if uncertain_below is None else uncertain_below
    return score_mapped(probs, labels, mapped, threshold, tta=tta, card=card)
