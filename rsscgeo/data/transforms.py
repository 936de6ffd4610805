"""Train and eval transforms: the paper's resize/crop, plus augmentations for real shifts.

The paper's recipe resizes, crops, rotates by 90° and flips. ``AugmentConfig`` adds
what a model needs to survive imagery it never saw: other ground sample distances
(scale jitter), other sensors, seasons and illumination (colour, gamma), and other
optics and compression (blur, JPEG, noise). All run on float tensors in 0..1, before
normalisation.
"""

from __future__ import annotations

import io
import random

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(_Strict):
    """Training-only augmentations; every one is off by default.

    ``scale`` is the range of the crop's area as a fraction of the tile
    (``RandomResizedCrop``): ``[0.1, 1.0]`` spans a 3.2x range of ground footprint
    per side, the shift between AID and imagery at other resolutions.
    """

    scale: tuple[float, float] | None = Field(
        default=None, description="Area fraction range of a random resized crop."
    )
    brightness: float = Field(default=0.0, ge=0)
    contrast: float = Field(default=0.0, ge=0)
    saturation: float = Field(default=0.0, ge=0)
    hue: float = Field(default=0.0, ge=0, le=0.5)
    gamma: tuple[float, float] | None = Field(
        default=None, description="Range of a random gamma curve, e.g. [0.7, 1.4]."
    )
    blur: float = Field(default=0.0, ge=0, le=1, description="Probability of a Gaussian blur.")
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    jpeg: float = Field(default=0.0, ge=0, le=1, description="Probability of JPEG compression.")
    jpeg_quality: tuple[int, int] = (30, 90)
    noise: float = Field(default=0.0, ge=0, description="Largest std of additive Gaussian noise.")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "gamma", "blur_sigma", "jpeg_quality"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high")
        if self.scale is not None and self.scale[1] > 1:
            raise ValueError("scale is a fraction of the tile's area: at most 1")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("jpeg_quality must lie within 1..100")
        return self


class TransformConfig(_Strict):
    """Resize then crop; ``crop=None`` keeps the resized image whole.

    The paper: resize 292 → random crop 256 (train) / centre crop 256 (eval). With
    ``augment.scale`` the training crop is a random resized crop to ``crop`` (or
    ``resize``) instead.
    """

    resize: int = Field(default=292, gt=0)
    crop: int | None = Field(default=256, gt=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @property
    def output_size(self) -> int:
        """Side of the image the network sees."""
        return self.crop or self.resize


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees (scenes have no canonical up)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Rotate the last two dimensions."""
        return torch.rot90(image, random.randrange(4), dims=(-2, -1))


class RandomGamma(torch.nn.Module):
    """Apply ``x ** gamma`` with gamma drawn log-uniformly from a range."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Gamma-correct a 0..1 image."""
        gamma = self.low * (self.high / self.low) ** random.random()
        out: torch.Tensor = image.clamp(0, 1) ** gamma
        return out


class RandomJPEG(torch.nn.Module):
    """JPEG-compress with probability ``p`` at a random quality (3-band images only)."""

    def __init__(self, p: float, quality: tuple[int, int]) -> None:
        super().__init__()
        self.p, self.quality = p, quality

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Round-trip a 0..1 image through Pillow's JPEG codec."""
        if image.shape[0] != 3 or random.random() >= self.p:
            return image
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=random.randint(*self.quality))
        decoded: torch.Tensor = TF.pil_to_tensor(Image.open(buffer))
        return decoded.float() / 255


class RandomNoise(torch.nn.Module):
    """Additive Gaussian sensor noise with a std drawn uniformly from 0..``sigma``."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Add noise and clip to 0..1."""
        std = self.sigma * random.random()
        out: torch.Tensor = (image + torch.randn_like(image) * std).clamp(0, 1)
        return out


def _augmentations(config: AugmentConfig) -> list[torch.nn.Module]:
    """The photometric and optical augmentations, in the order a sensor applies them."""
    steps: list[torch.nn.Module] = []
    if config.brightness or config.contrast or config.saturation or config.hue:
        steps.append(
            v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
        )
    if config.gamma is not None:
        steps.append(RandomGamma(*config.gamma))
    if config.blur:
        blur = v2.GaussianBlur(kernel_size=5, sigma=config.blur_sigma)
        steps.append(v2.RandomApply([blur], p=config.blur))
    if config.noise:
        steps.append(RandomNoise(config.noise))
    if config.jpeg:
        steps.append(RandomJPEG(config.jpeg, config.jpeg_quality))
    return steps


def build_transform(
    config: TransformConfig, mean: list[float], std: list[float], *, train: bool
) -> v2.Compose:
    """Transforms from a float tensor in [0, 1] to the normalised network input."""
    steps: list[torch.nn.Module] = []
    if train and config.augment.scale is not None:
        steps.append(
            v2.RandomResizedCrop(config.output_size, scale=config.augment.scale, antialias=True)
        )
    else:
        steps.append(v2.Resize(config.resize, antialias=True))
        if config.crop:
            steps.append(v2.RandomCrop(config.crop) if train else v2.CenterCrop(config.crop))
    if train:
        steps += [RandomRot90(), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        steps += _augmentations(config.augment)
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)
