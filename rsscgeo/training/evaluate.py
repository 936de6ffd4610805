"""Predicting a labelled catalogue and scoring the predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multilabel_average_precision,
    multilabel_f1_score,
)
from torchvision.transforms import v2
from tqdm.auto import tqdm

from rsscgeo.backends import model_device
from rsscgeo.data.catalog import Catalog
from rsscgeo.data.torch_dataset import TileDataset
from rsscgeo.modelfile import LoadedModel, ModelCard
from rsscgeo.predict import card_transform, probabilities
from rsscgeo.stopping import STOP
from rsscgeo.training.selective import backoff_coverage, coverage_at, risk_coverage

# Whether evaluation averages the 8 dihedral transforms (test-time augmentation) unless
# told otherwise: the one default `rsscgeo evaluate` and experiment eval sets share. On
# because it pays (issue 9, bundled model): UC Merced 0.561 -> 0.590, a third of the AID
# test split 0.899 -> 0.920, for 8x the model's work. `classify` keeps it off by default.
DEFAULT_TTA = True


def card_dataset(card: ModelCard, catalog: Catalog) -> TileDataset:
    """The catalogue seen through a model card's eval transform and scaling."""
    return TileDataset(catalog, card_transform(card), card.input_scale, len(card.bands))


def patch_dataset(card: ModelCard, catalog: Catalog) -> TileDataset:
    """Whole images resized to the card's patch size, then through its eval transform.

    This is how ``classify`` sees a patch read at the model's ground sample distance,
    so images of another dataset (other size, other GSD) reach the model as its own
    training tiles did: bilinear, antialiased, aspect not kept.
    """
    side = card.patch_size
    transform = v2.Compose([v2.Resize((side, side), antialias=True), card_transform(card)])
    return TileDataset(catalog, transform, card.input_scale, len(card.bands))


def _collect(
    forward: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    dataset: Dataset[dict[str, torch.Tensor]],
    batch_size: int,
    num_workers: int,
    description: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` of every batch of ``dataset`` and its labels, stacked on the CPU."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    outputs, labels = [], []
    for batch in tqdm(loader, desc=description, unit="batch", leave=False):
        STOP.check("interrupted")  # a safe point: nothing is written while predicting
        outputs.append(forward(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(outputs), torch.cat(labels)


@torch.inference_mode()
def predict(
    network: torch.nn.Module,
    dataset: Dataset[dict[str, torch.Tensor]],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    description: str = "predicting",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``network`` over ``dataset``; return stacked logits and labels (on CPU)."""
    network.eval()
    device = model_device(network)
    return _collect(network, device, dataset, batch_size, num_workers, description)


@torch.inference_mode()
def predict_probabilities(
    loaded: LoadedModel,
    dataset: Dataset[dict[str, torch.Tensor]],
    *,
    tta: bool = DEFAULT_TTA,
    batch_size: int = 64,
    num_workers: int = 0,
    description: str = "predicting",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated class probabilities (see :func:`rsscgeo.predict.probabilities`) and labels.

    With ``tta`` each image's probabilities are the mean over its 8 dihedral transforms.
    """
    model, card = loaded.model, loaded.card
    model.eval()
    device = model_device(model)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return probabilities(model, batch, card, tta=tta)

    label = f"{description} (TTA x8)" if tta else description
    return _collect(forward, device, dataset, batch_size, num_workers, label)


def score(
    task: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """The paper's metrics from logits (see :func:`score_probabilities`)."""
    probs = logits.float().softmax(1) if task == "multiclass" else logits.float().sigmoid()
    return score_probabilities(task, probs, labels, class_names, thresholds)


def score_probabilities(
    task: str,
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """The paper's metrics from class probabilities.

    Multiclass: ``overall_accuracy`` (0-1), ``per_class_accuracy`` and the confusion
    matrix (rows: true class). Multilabel: ``micro_f1`` and ``macro_f1`` at the card's
    thresholds (0.5 by default) and ``mAP``.
    """
    n = len(class_names)
    if task == "multiclass":
        per_class = multiclass_accuracy(probs, labels, num_classes=n, average="none")
        confusion = multiclass_confusion_matrix(probs, labels, num_classes=n)
        return {
            "task": task,
            "num_images": len(labels),
            "overall_accuracy": float((probs.argmax(1) == labels).float().mean()),
            "average_accuracy": float(per_class.mean()),
            "per_class_accuracy": dict(zip(class_names, per_class.tolist(), strict=True)),
            "classes": class_names,
            "confusion_matrix": confusion.tolist(),
        }
    cut = torch.tensor(thresholds if thresholds is not None else [0.5] * n)
    predicted = (probs >= cut).long()
    return {
        "task": task,
        "num_images": len(labels),
        "micro_f1": float(multilabel_f1_score(predicted, labels, num_labels=n, average="micro")),
        "macro_f1": float(multilabel_f1_score(predicted, labels, num_labels=n, average="macro")),
        "mAP": float(multilabel_average_precision(probs, labels, num_labels=n, average="macro")),
        "classes": class_names,
    }


def evaluate_model(
    loaded: LoadedModel,
    catalog: Catalog,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool = DEFAULT_TTA,
    uncertain_below: float | None = None,
) -> dict[str, Any]:
    """Score a loaded model on every item of ``catalog`` (labelled with the model's classes).

    Single-label results also hold the risk-coverage curve (``risk_coverage``) and,
    when the card is calibrated or ``uncertain_below`` is given, the coverage and
    accuracy at that Uncertain threshold (``uncertain``).
    """
    card = loaded.card
    probs, labels = predict_probabilities(
        loaded,
        card_dataset(card, catalog),
        tta=tta,
        batch_size=batch_size,
        num_workers=num_workers,
        description="evaluating",
    )
    metrics = score_probabilities(card.task, probs, labels, card.class_names, card.thresholds)
    metrics["tta"] = tta
    if card.task == "multiclass":
        confidence, predicted = probs.max(1)
        correct = predicted == labels
        if uncertain_below is not None or card.calibration is not None:
            threshold = card.uncertain_below if uncertain_below is None else uncertain_below
            metrics["uncertain"] = coverage_at(confidence, correct, threshold).as_dict()
            if card.parents:
                allowed = torch.nn.functional.one_hot(labels, card.num_classes).bool()
                metrics["backoff"] = backoff_coverage(probs, allowed, card, threshold).as_dict()
        metrics["risk_coverage"] = [p.as_dict() for p in risk_coverage(confidence, correct)]
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    """One line summarising the metrics."""
    if "sources" in metrics:  # a sources run: top-1 accuracy on each source's test rows
        return "; ".join(
            f"{name} accuracy {m['accuracy']:.4f} on {m['images']} images"
            for name, m in metrics["sources"].items()
        )
    if metrics["task"] == "multiclass":
        return (
            f"overall accuracy {metrics['overall_accuracy']:.4f} on {metrics['num_images']} images"
        )
    return (
        f"micro-F1 {metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"mAP {metrics['mAP']:.4f} on {metrics['num_images']} images"
    )
