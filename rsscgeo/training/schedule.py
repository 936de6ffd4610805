"""The paper's learning-rate schedule: linear warm-up, then step decay."""

from __future__ import annotations

import bisect


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
