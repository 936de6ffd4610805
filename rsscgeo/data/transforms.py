"""The paper's train and eval transforms, configurable in size."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms import v2

if TYPE_CHECKING:
    from rsscgeo.modelfile import ModelCard


class TransformConfig(BaseModel):
    """Resize then crop; ``crop=None`` keeps the resized image whole.

    The paper: resize 292 → random crop 256 (train) / centre crop 256 (eval).
    """

    model_config = ConfigDict(extra="forbid")

    resize: int = Field(default=292, gt=0)
    crop: int | None = Field(default=256, gt=0)

    @property
    def output_size(self) -> int:
        """Side of the image the network sees."""
        return self.crop or self.resize


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees (scenes have no canonical up)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Rotate the last two dimensions."""
        return torch.rot90(image, random.randrange(4), dims=(-2, -1))


def build_transform(
    config: TransformConfig, mean: list[float], std: list[float], *, train: bool
) -> v2.Compose:
    """Transforms from a float tensor in [0, 1] to the normalised network input."""
    steps: list[torch.nn.Module] = [v2.Resize(config.resize, antialias=True)]
    if train:
        if config.crop:
            steps.append(v2.RandomCrop(config.crop))
        steps += [RandomRot90(), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    elif config.crop:
        steps.append(v2.CenterCrop(config.crop))
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def card_transform(card: ModelCard) -> v2.Compose:
    """The eval transform a model card records: how its model saw held-out tiles."""
    config = TransformConfig(resize=card.eval_resize, crop=card.eval_crop)
    return build_transform(config, card.mean, card.std, train=False)
