"""The paper's optimiser and learning-rate schedule: Adam, linear warm-up, step decay."""

from __future__ import annotations

import bisect
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(
    step: int, steps_per_epoch: int, warmup_epochs: float, milestones: list[float], gamma: float
) -> float:
    """Multiplier of the peak learning rate at optimisation ``step``.

    Epoch positions are fractional, so warm-up and milestones may fall mid-epoch.
    """
    epoch = step / max(steps_per_epoch, 1)
    if epoch < warmup_epochs:
        return (epoch + 1.0 / max(steps_per_epoch, 1)) / warmup_epochs
    return float(gamma ** bisect.bisect_right(sorted(milestones), epoch))


def adam_with_schedule(module: L.LightningModule) -> dict[str, Any]:
    """Adam without weight decay over the trainable parameters, stepped per batch.

    ``module.hparams`` holds ``lr``, ``warmup_epochs``, ``milestones`` and ``gamma``.
    """
    hp = module.hparams
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp["lr"], weight_decay=0.0)
    trainer = module.trainer
    epochs = max(trainer.max_epochs or 1, 1)
    steps_per_epoch = max(int(trainer.estimated_stepping_batches) // epochs, 1)
    schedule = partial(
        lr_factor,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=hp["warmup_epochs"],
        milestones=list(hp["milestones"]),
        gamma=hp["gamma"],
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
    }
