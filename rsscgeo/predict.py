"""How a model card's model sees an image, and calibrated probabilities of a batch.

``card_transform`` is the eval transform the card records. One function serves
``classify`` and ``evaluate`` so both apply the card's temperature and the same
test-time augmentation. Test-time augmentation averages the
probabilities of the 8 dihedral transforms of each image (4 rotations by 90°, each
with and without a horizontal flip): overhead scenes have no canonical up, and the
models are trained with exactly these rotations and flips.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rsscgeo.modelfile import ModelCard

if TYPE_CHECKING:
    from torchvision.transforms import v2

# (quarter turns, flip left-right) for the dihedral group D4.
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def card_transform(card: ModelCard) -> v2.Compose:
    """The eval transform a model card records: how its model saw held-out tiles.

    From a float tensor in 0..1 (pixel values divided by ``card.input_scale``) to the
    normalised network input.
    """
    # Imported here: classify never needs torchvision's transforms (see Preprocess).
    from rsscgeo.data.transforms import TransformConfig, build_transform

    config = TransformConfig(resize=card.eval_resize, crop=card.eval_crop)
    return build_transform(config, card.mean, card.std, train=False)


def dihedral(batch: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``batch`` (N x C x H x W) rotated by ``turns`` quarter turns, then flipped if asked."""
    out = torch.rot90(batch, turns, dims=(-2, -1)) if turns else batch
    return out.flip(-1) if flip else out


def scores(logits: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Calibrated probabilities: softmax of ``logits / temperature`` (sigmoid for multilabel)."""
    logits = logits.float()
    if card.task == "multilabel":
        return logits.sigmoid()
    return F.softmax(logits / card.temperature, dim=1)


def probabilities(
    model: torch.nn.Module, batch: torch.Tensor, card: ModelCard, *, tta: bool = False
) -> torch.Tensor:
    """Calibrated class probabilities of a normalised batch (N x classes, float32).

    With ``tta`` the probabilities of the 8 dihedral transforms are averaged; each
    transformed batch keeps the memory layout (e.g. channels-last) of ``batch``.
    """
    if not tta:
        return scores(model(batch), card)
    layout = (
        torch.channels_last
        if batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    total = torch.zeros(batch.shape[0], card.num_classes, device=batch.device)
    for turns, flip in DIHEDRAL:
        view = dihedral(batch, turns, flip).contiguous(memory_format=layout)
        total += scores(model(view), card)
    return total / len(DIHEDRAL)
