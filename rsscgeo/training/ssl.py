"""Self-supervised continued pre-training (SimCLR) on unlabelled in-domain imagery.

The domain-adaptive chain's second round when the in-domain data has no labels
(``source.objective: ssl``): starting from ImageNet weights, two augmented views of
each image are pulled together and pushed away from the rest of the batch (NT-Xent,
Chen et al., 2020) through a small projection head. Only the backbone is kept; the
target stage fine-tunes it.

The images are a catalogue's tiles (labels unused) plus tiles cut from 8-bit
GeoTIFF scenes, each covering the same ground as a catalogue tile when the
dataset's GSD is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rsscgeo.data.images import read_image
from rsscgeo.data.transforms import RandomGamma, RandomRot90
from rsscgeo.errors import ConfigError
from rsscgeo.inits import InitSpec, build_network
from rsscgeo.training.config import SSLConfig
from rsscgeo.training.schedule import adam_with_schedule

# Scene tiles with more nodata than this are not used.
MAX_NODATA = 0.1


def nt_xent(projections: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for ``2N`` projections: rows ``i`` and ``i + N`` are two views."""
    z = F.normalize(projections.float(), dim=1)
    n = len(z) // 2
    similarity = z @ z.T / temperature
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def view_transform(config: SSLConfig, mean: list[float], std: list[float]) -> v2.Compose:
    """SimCLR's strong augmentation, for overhead imagery (rotations, no canonical up)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(config.size, scale=config.crop_scale, antialias=True),
            RandomRot90(),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            RandomGamma(0.7, 1.4),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
            v2.Normalize(mean, std),
        ]
    )


class TwoViews(Dataset[dict[str, torch.Tensor]]):
    """Unlabelled images as ``{'image': 2 x C x H x W}``: two views of each."""

    def __init__(
        self,
        paths: Sequence[Path],
        tiles: Sequence[torch.Tensor],
        transform: v2.Compose,
        input_scale: float,
        num_bands: int,
    ) -> None:
        self.paths, self.tiles = list(paths), list(tiles)
        self.transform = transform
        self.input_scale, self.num_bands = input_scale, num_bands

    def __len__(self) -> int:
        return len(self.paths) + len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < len(self.paths):
            array = read_image(self.paths[index])[: self.num_bands].astype(np.float32)
            image = torch.from_numpy(array) / self.input_scale
        else:
            image = self.tiles[index - len(self.paths)]
        return {"image": torch.stack([self.transform(image), self.transform(image)])}


def scene_tiles(
    scenes: Sequence[Path], tile: int, gsd: float | None, num_bands: int
) -> list[torch.Tensor]:
    """Tiles (C x tile x tile, 0..1) cut from 8-bit scenes, each covering ``tile * gsd``.

    Raises:
        ConfigError: If a scene cannot be read, is not 8-bit or has too few bands.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    tiles = []
    for scene in scenes:
        try:
            with rasterio.open(scene) as src:
                if src.dtypes[0] != "uint8" or src.count < num_bands:
                    raise ConfigError(
                        f"{scene}: unlabelled scenes must be 8-bit with at least {num_bands} "
                        f"bands (it is {src.dtypes[0]} with {src.count}); remove it from "
                        "source.ssl.unlabelled_scenes."
                    )
                # Source pixels per tile so that a tile covers the dataset's ground size.
                side = round(tile * gsd / abs(src.res[0])) if gsd else tile
                side = max(1, min(side, src.width, src.height))
                for row in range(0, src.height - side + 1, side):
                    for col in range(0, src.width - side + 1, side):
                        window = Window(col, row, side, side)
                        valid = src.dataset_mask(window=window, out_shape=(tile, tile)) > 0
                        if valid.mean() < 1 - MAX_NODATA:
                            continue
                        pixels: npt.NDArray[np.uint8] = src.read(
                            list(range(1, num_bands + 1)),
                            window=window,
                            out_shape=(num_bands, tile, tile),
                            resampling=Resampling.bilinear,
                        )
                        tiles.append(torch.from_numpy(pixels.astype(np.float32)) / 255)
        except RasterioError as err:
            raise ConfigError(f"cannot read unlabelled scene {scene} ({err}).") from None
    return tiles


class ContrastiveTask(L.LightningModule):
    """SimCLR on a timm backbone initialised as configured (e.g. ImageNet)."""

    def __init__(
        self,
        architecture: str,
        in_channels: int,
        init_kind: str,
        init_path: str | None,
        lr: float,
        warmup_epochs: float,
        milestones: tuple[float, ...],
        gamma: float,
        temperature: float,
        projection_dim: int,
    ) -> None:
        """Build the backbone (no classifier) and the projection head."""
        super().__init__()
        self.save_hyperparameters()
        init = InitSpec(kind=init_kind, path=init_path)  # type: ignore[arg-type]
        self.backbone = build_network(architecture, 0, in_channels, init)
        width = int(getattr(self.backbone, "num_features", 0))
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(width, width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(width, projection_dim),
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """NT-Xent over the batch's two views."""
        views = batch["image"]  # N x 2 x C x H x W
        both = torch.cat([views[:, 0], views[:, 1]])
        loss = nt_xent(self.projection(self.backbone(both)), self.hparams["temperature"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(views))
        return loss

    def configure_optimizers(self) -> Any:
        """The same Adam and schedule as supervised stages."""
        return adam_with_schedule(self)


def final_loss(trainer: L.Trainer) -> float:
    """The last logged training loss (NaN when nothing was logged)."""
    value = trainer.callback_metrics.get("train_loss")
    return float(value) if value is not None else math.nan
