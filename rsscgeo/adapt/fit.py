"""Fitting the tail of a split network to a user's labels, without forgetting the rest.

The loss on a batch is the partial-label loss of the labelled views (a family's label
may be any of its classes; class-balanced sampling, so a class labelled five times
weighs as much as one labelled fifty times) plus, unless only the labelled classes are
kept, the distillation loss: the KL divergence from the base model's probabilities
to the adapted model's, over the base classes, on views of unlabelled patches of the
same scenes (those nearest a patch labelled with a new class left out). The second term
is what keeps the classes the labels do not cover. The adapted probabilities are taken
over all adapted classes, so a new class that takes mass from the base classes on
unlabelled patches pays for it: renormalised over the base classes alone, a new class
"Buildings" learnt from 5 UC Merced labels took a quarter of AID's held-out images.

Temperature and the Uncertain threshold are fitted on out-of-fold predictions of a
k-fold cross-validation over the labelled patches (``cross_validate``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rsscgeo.adapt.tail import SplitNetwork
from rsscgeo.stopping import STOP
from rsscgeo.training.multisource import partial_label_loss


@dataclass(frozen=True)
class FitSettings:
    """How the tail is trained.

    Attributes:
        steps: Optimiser steps per fit.
        batch_size: Labelled views per step (and as many distilled ones).
        lr: Learning rate of the adapted stages.
        head_lr: Learning rate of the classifier.
        weight_decay: AdamW weight decay.
        distill_weight: Weight of the distillation term.
        seed: Seeds sampling (and the folds).
    """

    steps: int = 120
    batch_size: int = 32
    lr: float = 3e-4
    head_lr: float = 2e-3
    weight_decay: float = 1e-4
    distill_weight: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TrainingData:
    """Cached trunk outputs and what they should become.

    Attributes:
        labelled: Views x N trunk outputs of the labelled patches (view 0: plain).
        allowed: N x classes: the classes each labelled patch may be.
        groups: N label indices (class balance and folds go by label name).
        distilled: Views x M trunk outputs of unlabelled patches (M may be 0).
        teacher: Views x M x B: the base model's probabilities over the base classes
            that the adapted model keeps.
        kept: The B adapted-class indices of those base classes, in teacher order.
    """

    labelled: torch.Tensor
    allowed: torch.Tensor
    groups: torch.Tensor
    distilled: torch.Tensor
    teacher: torch.Tensor
    kept: torch.Tensor


def fit(
    start: SplitNetwork,
    data: TrainingData,
    rows: torch.Tensor,
    settings: FitSettings,
    step_done: Callable[[], None] = lambda: None,
) -> SplitNetwork:
    """A copy of ``start`` whose tail and classifier are fitted on labelled ``rows``.

    Raises:
        RunInterrupted: If a stop is requested between steps.
    """
    split = copy.deepcopy(start)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(split.tail.parameters()), "lr": settings.lr},
            {"params": list(split.classifier.parameters()), "lr": settings.head_lr},
        ],
        weight_decay=settings.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    weights = _balance(data.groups[rows])
    views, distilled = data.labelled.shape[0], data.distilled.shape[1]
    distil = settings.distill_weight > 0 and distilled > 0 and len(data.kept) > 1
    split.tail_train()
    for _ in range(settings.steps):
        STOP.check()
        pick = rows[torch.multinomial(weights, settings.batch_size, True, generator=generator)]
        view = torch.randint(0, views, (len(pick),), generator=generator)
        logits = split.logits(data.labelled[view, pick])
        loss = partial_label_loss(logits, data.allowed[pick])
        if distil:
            other = torch.randint(0, distilled, (settings.batch_size,), generator=generator)
            view = torch.randint(0, data.distilled.shape[0], (len(other),), generator=generator)
            # Over all the adapted classes: mass a new class takes from the base classes on
            # unlabelled patches costs -log(1 - mass), so new classes cannot swallow the rest.
            student = F.log_softmax(split.logits(data.distilled[view, other]), 1)[:, data.kept]
            teacher = data.teacher[view, other]
            loss = loss + settings.distill_weight * F.kl_div(
                student, teacher, reduction="batchmean"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        step_done()
    split.tail.eval()
    return split


def _balance(groups: torch.Tensor) -> torch.Tensor:
    """Sampling weights that give every label name the same share."""
    counts = torch.bincount(groups)
    return 1.0 / counts[groups].double()


def folds(groups: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A fold (0..count-1) per row, stratified by group: each name spread over the folds."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(groups), dtype=torch.long)
    offset = 0
    for group in torch.unique(groups):
        members = (groups == group).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = (torch.arange(len(members)) + offset) % count
        offset += len(members)  # small groups do not all land in fold 0
    return fold


@torch.inference_mode()
def plain_logits(split: SplitNetwork, features: torch.Tensor) -> torch.Tensor:
    """Logits of the plain views (view 0) of cached trunk outputs."""
    return split.logits(features[0])


def cross_validate(
    start: SplitNetwork,
    data: TrainingData,
    count: int,
    settings: FitSettings,
    step_done: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """Out-of-fold logits (N x classes): each labelled patch predicted by a fit without it.

    Raises:
        RunInterrupted: If a stop is requested between steps.
    """
    fold = folds(data.groups, count, settings.seed)
    logits = torch.empty(data.allowed.shape, dtype=torch.float32)
    for k in range(count):
        held = fold == k
        fitted = fit(start, data, (~held).nonzero().squeeze(1), settings, step_done)
        logits[held] = plain_logits(fitted, data.labelled[:, held])
    return logits
