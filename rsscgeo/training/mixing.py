"""Mixup and CutMix for rows that may be one of several classes (the partial-label loss).

torchvision's ``MixUp``/``CutMix`` mix one-hot targets, which a row labelled "one of
these classes" does not have. Mixing the losses instead is the same thing for
cross-entropy and extends to sets: a mixed image's loss is ``lam`` times its own row's
loss plus ``1 - lam`` times its partner's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mixed:
    """A batch mixed with a shuffled copy of itself.

    Attributes:
        images: The mixed images.
        partner: For each row, the row it was mixed with.
        own: The weight of each row's own label (the rest is its partner's).
    """

    images: torch.Tensor
    partner: torch.Tensor
    own: float


@dataclass(frozen=True)
class Mixing:
    """Mixup and CutMix, one of the enabled two per batch.

    Attributes:
        mixup: Mixup's Beta alpha (0: off). Images are blended pixel by pixel.
        cutmix: CutMix's Beta alpha (0: off). A box of the partner replaces part of
            the image; the labels are weighted by area.
    """

    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any mix is on."""
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, images: torch.Tensor) -> Mixed:
        """Mix a batch (B x C x H x W) with a random permutation of itself.

        Draws from torch's global generator (which Lightning seeds).
        """
        if not self.enabled:
            raise ValueError("no mix is enabled")
        partner = torch.randperm(len(images)).to(images.device)
        kinds = [(k, a) for k, a in (("mixup", self.mixup), ("cutmix", self.cutmix)) if a > 0]
        kind, alpha = kinds[int(torch.randint(len(kinds), (1,)))]
        lam = float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())
        if kind == "mixup":
            return Mixed(images * lam + images[partner] * (1 - lam), partner, lam)
        return _cutmix(images, partner, lam)


def _cutmix(images: torch.Tensor, partner: torch.Tensor, lam: float) -> Mixed:
    """Paste a box of ``1 - lam`` of the area from each row's partner; weight by its true area."""
    height, width = images.shape[-2:]
    cut = (1 - lam) ** 0.5
    box_h, box_w = round(height * cut), round(width * cut)
    centre_y, centre_x = (int(torch.randint(n, (1,))) for n in (height, width))
    top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h - box_h // 2, height)
    left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w - box_w // 2, width)
    mixed = images.clone()
    # Only the box is gathered from the partners, not whole images.
    mixed[..., top:bottom, left:right] = images[..., top:bottom, left:right][partner]
    own = 1 - (bottom - top) * (right - left) / (height * width)
    return Mixed(mixed, partner, own)
