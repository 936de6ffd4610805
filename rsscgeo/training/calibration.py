"""Calibrating a trained classifier on validation data: temperature and Uncertain cut-off.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar fitted to
minimise the validation negative log-likelihood; it changes no prediction, only how
much each is trusted. The Uncertain threshold is then the lowest calibrated top-1
probability at which the validation images the model commits to reach a target
accuracy.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from rsscgeo.modelfile import Calibration

ECE_BINS = 15


class CalibrationConfig(BaseModel):
    """How the Uncertain threshold is chosen on the validation split."""

    model_config = ConfigDict(extra="forbid")

    target_accuracy: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="Committed validation images must be at least this accurate.",
    )


def allowed_classes(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Targets as an N x classes mask of the classes each row may be.

    ``targets`` is either class indexes (N,) or already such a mask (rows trained on a
    set of classes, e.g. a coarser source label).
    """
    if targets.dim() == 2:
        return targets.bool()
    return F.one_hot(targets.long(), classes).bool()


def set_nll(log_probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sum_{c in S} p_c`` over rows (the NLL of a set label)."""
    return -torch.logsumexp(log_probs.masked_fill(~allowed, -torch.inf), dim=1).mean()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature that minimises the NLL of ``softmax(logits / T)`` on ``targets``.

    ``targets`` are class indexes, or masks of the classes each row may be.
    """
    logits = logits.detach().clone().double()  # may come from inference mode
    allowed = allowed_classes(targets, logits.shape[1])
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = set_nll(F.log_softmax(logits / log_t.exp(), 1), allowed)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """ECE over equal-width confidence bins of the top-1 probability."""
    confidence, predicted = probs.max(1)
    allowed = allowed_classes(targets, probs.shape[1])
    correct = allowed.gather(1, predicted[:, None]).squeeze(1).double()
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=probs.dtype)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = confidence[inside].double().mean() - correct[inside].mean()
            error += float(inside.double().mean() * gap.abs())
    return error


def threshold_for_accuracy(
    probs: torch.Tensor, targets: torch.Tensor, target: float
) -> tuple[float, float, float]:
    """The lowest top-1 cut-off whose committed images reach ``target`` accuracy.

    Returns:
        The threshold, the coverage (share committed) and their accuracy. The
        threshold is 0 when every image together already reaches the target.
    """
    confidence, predicted = probs.max(1)
    allowed = allowed_classes(targets, probs.shape[1])
    order = confidence.argsort(descending=True)
    correct = allowed.gather(1, predicted[:, None]).squeeze(1)[order].double()
    running = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    reaching = (running >= target).nonzero()
    # Keep the largest committed set whose accuracy reaches the target.
    keep = int(reaching.max()) + 1 if len(reaching) else 1
    if keep == len(correct):
        return 0.0, 1.0, float(running[-1])
    # Cut halfway between the last committed and the first rejected confidence.
    ranked = confidence[order]
    threshold = float((ranked[keep - 1] + ranked[keep]) / 2)
    return threshold, keep / len(correct), float(running[keep - 1])


def calibrate(
    logits: torch.Tensor, targets: torch.Tensor, config: CalibrationConfig, fitted_on: str
) -> Calibration:
    """Fit the temperature and the Uncertain threshold on validation logits.

    ``targets`` are class indexes, or masks of the classes each row may be.
    """
    temperature = fit_temperature(logits, targets)
    allowed = allowed_classes(targets, logits.shape[1])
    before = F.softmax(logits.double(), 1)
    after = F.softmax(logits.double() / temperature, 1)
    threshold, coverage, accuracy = threshold_for_accuracy(after, allowed, config.target_accuracy)
    correct = allowed.gather(1, logits.argmax(1, keepdim=True)).double()
    return Calibration(
        temperature=round(temperature, 4),
        uncertain_below=round(threshold, 4),
        fitted_on=fitted_on,
        rule=(
            "lowest calibrated top-1 probability at which the committed validation images "
            f"reach {config.target_accuracy:.2f} accuracy"
        ),
        metrics={
            "val_accuracy": float(correct.mean()),
            "val_nll_before": float(set_nll(before.clamp_min(1e-12).log(), allowed)),
            "val_nll_after": float(set_nll(after.clamp_min(1e-12).log(), allowed)),
            "val_ece_before": expected_calibration_error(before, allowed),
            "val_ece_after": expected_calibration_error(after, allowed),
            "val_coverage": coverage,
            "val_committed_accuracy": accuracy,
        },
    )
