"""Predicting a labelled catalogue and scoring the predictions."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multilabel_average_precision,
    multilabel_f1_score,
)
from tqdm.auto import tqdm

from rsscgeo.data.catalog import Catalog
from rsscgeo.data.dataset import TileDataset
from rsscgeo.data.transforms import card_transform
from rsscgeo.modelfile import LoadedModel, ModelCard


def card_dataset(card: ModelCard, catalog: Catalog) -> TileDataset:
    """The catalogue seen through a model card's eval transform and scaling."""
    return TileDataset(catalog, card_transform(card), card.input_scale, len(card.bands))


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
    device = next(network.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    logits, labels = [], []
    for batch in tqdm(loader, desc=description, unit="batch", leave=False):
        logits.append(network(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(logits), torch.cat(labels)


def score(
    task: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """The paper's metrics.

    Multiclass: ``overall_accuracy`` (0-1), ``per_class_accuracy`` and the confusion
    matrix (rows: true class). Multilabel: ``micro_f1`` and ``macro_f1`` at the card's
    thresholds (0.5 by default) and ``mAP``.
    """
    n = len(class_names)
    if task == "multiclass":
        per_class = multiclass_accuracy(logits, labels, num_classes=n, average="none")
        confusion = multiclass_confusion_matrix(logits, labels, num_classes=n)
        return {
            "task": task,
            "num_images": len(labels),
            "overall_accuracy": float((logits.argmax(1) == labels).float().mean()),
            "average_accuracy": float(per_class.mean()),
            "per_class_accuracy": dict(zip(class_names, per_class.tolist(), strict=True)),
            "classes": class_names,
            "confusion_matrix": confusion.tolist(),
        }
    probs = logits.sigmoid()
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
    loaded: LoadedModel, catalog: Catalog, *, batch_size: int = 64, num_workers: int = 0
) -> dict[str, Any]:
    """Score a loaded model on every item of ``catalog``."""
    card = loaded.card
    logits, labels = predict(
        loaded.model,
        card_dataset(card, catalog),
        batch_size=batch_size,
        num_workers=num_workers,
        description="evaluating",
    )
    return score(card.task, logits, labels, card.class_names, card.thresholds)


def headline(metrics: dict[str, Any]) -> str:
    """One line summarising the metrics."""
    if metrics["task"] == "multiclass":
        return (
            f"overall accuracy {metrics['overall_accuracy']:.4f} on {metrics['num_images']} images"
        )
    return (
        f"micro-F1 {metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"mAP {metrics['mAP']:.4f} on {metrics['num_images']} images"
    )
