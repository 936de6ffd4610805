"""Augmenting whole batches of uint8 tiles on their device, in a few tensor operations.

Per-image torchvision transforms cost a CPU more than the training step's share of an
image. Here one sampled affine grid per image does the random resized crop, the
dihedral rotation/flip and the resize in a single ``grid_sample`` over the batch; the
photometric jitters are broadcast arithmetic. The same code runs on a GPU unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugment:
    """The training augmentation of a batch, and the plain eval transform.

    Attributes:
        size: Side of the images the network trains on.
        eval_size: Side of the images it is evaluated on (``size`` when None). A
            larger side than the training crop's matches the apparent object size of
            random resized crops (train 144 px crops, test at 176 px: FixRes).
        mean: Per-band normalisation mean (after scaling to 0..1).
        std: Per-band normalisation std.
        scale: Range of a crop's area as a fraction of the tile (random resized crop).
        ratio: Range of a crop's aspect ratio.
        dihedral: Random 90° rotations and flips (remote sensing tiles have no up).
        brightness: Largest relative brightness change.
        contrast: Largest relative contrast change.
        saturation: Largest relative saturation change.
        gamma: Range of a random gamma curve, or None.
        noise: Largest std of additive Gaussian noise (0..1 units).
        blur: Share of the images blurred with a Gaussian (as imagery upsampled from a
            coarser GSD looks, e.g. a 5 m scene read at a 2 m model's GSD).
        blur_sigma: Range of the blur's standard deviation, in pixels of ``size``
            (one draw per batch).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_size: int | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    dihedral: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    gamma: tuple[float, float] | None = None
    noise: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.5)

    def train(self, tiles: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch of uint8 tiles (B x C x H x W) into normalised network input."""
        x = tiles.float().div_(255)
        x = self._crop_and_turn(x, generator)
        x = self._jitter(x, generator)
        if self.blur:
            x = self._blur(x, generator)
        return self._normalise(x)

    def eval(self, tiles: torch.Tensor) -> torch.Tensor:
        """Resize a batch of uint8 tiles to ``eval_size`` and normalise it (no randomness)."""
        x = tiles.float().div_(255)
        side = self.eval_size or self.size
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(
                x, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
        return self._normalise(x)

    def _uniform(
        self, n: int, low: float, high: float, device: torch.device, g: torch.Generator | None
    ) -> torch.Tensor:
        return torch.rand(n, device=device, generator=g) * (high - low) + low

    def _crop_and_turn(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, device = len(x), x.device
        area = self._uniform(n, *self.scale, device, g)
        log_ratio = self._uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), device, g)
        # Crop sides as fractions of the tile side (affine_grid's units are half-sides).
        width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        shift_x = (torch.rand(n, device=device, generator=g) * 2 - 1) * (1 - width)
        shift_y = (torch.rand(n, device=device, generator=g) * 2 - 1) * (1 - height)
        turn = torch.zeros((n, 2, 2), device=device)
        if self.dihedral:
            quarter = torch.randint(0, 4, (n,), device=device, generator=g).float() * (math.pi / 2)
            flip = torch.randint(0, 2, (n,), device=device, generator=g).float() * 2 - 1
            cos, sin = quarter.cos().round(), quarter.sin().round()
            turn[:, 0, 0], turn[:, 0, 1] = cos * flip, -sin
            turn[:, 1, 0], turn[:, 1, 1] = sin * flip, cos
        else:
            turn[:, 0, 0] = turn[:, 1, 1] = 1
        theta = torch.empty((n, 2, 3), device=device)
        theta[:, :, :2] = torch.diag_embed(torch.stack([width, height], 1)) @ turn
        theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    def _jitter(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, device = len(x), x.device
        shape = (n, 1, 1, 1)
        if self.brightness:
            x = x * self._uniform(n, 1 - self.brightness, 1 + self.brightness, device, g).view(
                shape
            )
        if self.contrast:
            factor = self._uniform(n, 1 - self.contrast, 1 + self.contrast, device, g).view(shape)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        if self.saturation and x.shape[1] == 3:
            factor = self._uniform(n, 1 - self.saturation, 1 + self.saturation, device, g)
            grey = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - grey) * factor.view(shape) + grey
        x = x.clamp(0, 1)
        if self.gamma is not None:
            x = x.pow(self._uniform(n, *self.gamma, device, g).view(shape))
        if self.noise:
            sigma = self._uniform(n, 0, self.noise, device, g).view(shape)
            x = (x + torch.randn(x.shape, device=device, generator=g) * sigma).clamp(0, 1)
        return x

    def _blur(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Blur a random ``blur`` share of the images with one Gaussian (separable)."""
        chosen = torch.rand(len(x), device=x.device, generator=g) < self.blur
        if not chosen.any():
            return x
        sigma = float(self._uniform(1, *self.blur_sigma, x.device, g))
        radius = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        bands = x.shape[1]
        horizontal = kernel.view(1, 1, 1, -1).repeat(bands, 1, 1, 1)
        vertical = kernel.view(1, 1, -1, 1).repeat(bands, 1, 1, 1)
        soft = F.pad(x[chosen], (radius, radius, radius, radius), mode="reflect")
        soft = F.conv2d(F.conv2d(soft, horizontal, groups=bands), vertical, groups=bands)
        x = x.clone()
        x[chosen] = soft
        return x

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
