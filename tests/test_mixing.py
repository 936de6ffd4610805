"""Mixup and CutMix for set-labelled rows, and the multi-source task's mixed loss."""

from __future__ import annotations

import pytest
import torch

from rsscgeo.training.batch_augment import BatchAugment
from rsscgeo.training.mixing import Mixing
from rsscgeo.training.multisource import MultiSourceTask, partial_label_loss


def _rows_of_their_index(rows: int, side: int = 16) -> torch.Tensor:
    """Images whose every pixel holds the row's index, so mixed pixels tell their source."""
    return torch.arange(rows, dtype=torch.float32).view(rows, 1, 1, 1).expand(rows, 3, side, side)


def test_mixup_blends_each_row_with_its_partner_by_its_own_weight() -> None:
    torch.manual_seed(0)
    images = _rows_of_their_index(8)
    mixed = Mixing(mixup=0.4)(images)
    assert 0 <= mixed.own <= 1
    assert sorted(mixed.partner.tolist()) == list(range(8))
    expected = mixed.own * torch.arange(8.0) + (1 - mixed.own) * mixed.partner.float()
    torch.testing.assert_close(mixed.images[:, 0, 0, 0], expected)
    assert (mixed.images == mixed.images[:, :1, :1, :1]).all()  # uniform rows stay uniform


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_weighs_the_labels_by_the_pasted_area(seed: int) -> None:
    torch.manual_seed(seed)
    images = _rows_of_their_index(6, side=20)
    mixed = Mixing(cutmix=1.0)(images)
    for row, partner in enumerate(mixed.partner.tolist()):
        pixels = mixed.images[row]
        assert set(pixels.unique().tolist()) <= {float(row), float(partner)}
        if partner != row:
            kept = (pixels == row).float().mean().item()
            assert kept == pytest.approx(mixed.own)


def test_with_both_mixes_each_batch_takes_one_of_them() -> None:
    torch.manual_seed(1)
    images = _rows_of_their_index(4)
    kinds = set()
    for _ in range(40):
        mixed = Mixing(mixup=0.5, cutmix=0.5)(images)
        uniform = bool((mixed.images == mixed.images[:, :, :1, :1]).all())
        kinds.add("mixup" if uniform else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_mixing_nothing_is_refused() -> None:
    assert not Mixing().enabled
    with pytest.raises(ValueError, match="no mix"):
        Mixing()(_rows_of_their_index(2))


def test_the_task_trains_on_the_mixed_partial_label_loss() -> None:
    """The step's loss is own x the rows' loss + (1 - own) x their partners', on mixed images."""
    augment = BatchAugment(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    task = MultiSourceTask(
        "tf_efficientnet_lite0", 4, ["a"], augment, init_kind="scratch", mixup=0.4
    )
    task.eval()  # batch norm from running statistics, so the two forward passes agree
    images = torch.rand(6, 3, 32, 32)
    targets = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]],
        dtype=torch.bool,
    )
    torch.manual_seed(3)
    loss = task.training_step({"image": images, "targets": targets}, 0)
    torch.manual_seed(3)
    mixed = Mixing(mixup=0.4)(images)
    with torch.no_grad():
        logits = task(mixed.images)
    expected = mixed.own * partial_label_loss(logits, targets) + (
        1 - mixed.own
    ) * partial_label_loss(logits, targets[mixed.partner])
    assert 0 < mixed.own < 1
    torch.testing.assert_close(loss.detach(), expected)
