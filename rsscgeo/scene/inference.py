"""Classifying one chunk: cut it into patches, scale, normalise, run the model in batches.

Pixel scaling rule: 8-bit scenes are divided by the card's ``input_scale`` (255), as
the model was trained. Other data types (uint16, int16, float) are stretched linearly
per band from the scene's 2nd to 98th percentile onto 0..1 first (percentiles from a
decimated read of the whole scene), so a 12-bit Landsat scene looks like the 8-bit
imagery the model knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from rsscgeo.data.transforms import card_transform
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import Chunk, PatchGrid


@dataclass(frozen=True)
class Scaling:
    """Per-band linear map of raw values onto 0..1: ``(v - low) / (high - low)``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Scale bands (dimension 1 of an N x C x H x W tensor), clipped to 0..1."""
        low = torch.tensor(self.low, device=values.device).view(1, -1, 1, 1)
        high = torch.tensor(self.high, device=values.device).view(1, -1, 1, 1)
        span = (high - low).clamp(min=1e-6)
        return ((values - low) / span).clamp(0, 1)

    @classmethod
    def divide_by(cls, scale: float, bands: int) -> Scaling:
        """The rule for 8-bit scenes: divide by ``scale``."""
        return cls((0.0,) * bands, (scale,) * bands)

    @classmethod
    def percentile_stretch(
        cls, values: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
    ) -> Scaling:
        """The rule for other data types: 2nd-98th percentile of valid pixels per band."""
        pixels = values[:, valid] if valid.any() else values.reshape(values.shape[0], -1)
        low, high = np.percentile(pixels, [2, 98], axis=1)
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high))


@dataclass(frozen=True)
class ChunkResult:
    """Per-patch results of one chunk (patches in row-major order)."""

    chunk: Chunk
    probabilities: npt.NDArray[np.float32]  # nrows x ncols x classes, NaN where skipped
    valid_fraction: npt.NDArray[np.float32]  # nrows x ncols

    @property
    def classified(self) -> npt.NDArray[np.bool_]:
        """Nrows x ncols: True where the patch was classified (not below --min-valid)."""
        return ~np.isnan(self.probabilities[..., 0])

    @property
    def class_ids(self) -> npt.NDArray[np.intp]:
        """Nrows x ncols: the most probable class, -1 where the patch was skipped."""
        best = np.nan_to_num(self.probabilities).argmax(axis=-1)
        return np.where(self.classified, best, -1)


def cut_patches(
    values: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_], grid: PatchGrid, chunk: Chunk
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N x C x P x P) and their valid fractions (N), row-major, without copies."""
    p, s = grid.patch, grid.stride
    image = torch.from_numpy(values)
    patches = image.unfold(1, p, s).unfold(2, p, s)  # C x rows x cols x P x P
    patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], p, p)
    mask = torch.from_numpy(valid.astype(np.float32)).unfold(0, p, s).unfold(1, p, s)
    fraction = mask.mean(dim=(-1, -2)).reshape(-1)
    expected = chunk.nrows * chunk.ncols
    assert patches.shape[0] == expected, (patches.shape, chunk)
    return patches, fraction


@torch.inference_mode()
def classify_patches(
    loaded: LoadedModel, patches: torch.Tensor, scaling: Scaling, batch_size: int
) -> torch.Tensor:
    """Class probabilities (softmax, or sigmoid for multilabel) of raw patches.

    On a GPU the patches are scaled and normalised there, in channels-last layout, and
    the model runs under fp16 autocast.
    """
    card = loaded.card
    transform = card_transform(card)
    device = next(loaded.model.parameters()).device
    on_gpu = device.type == "cuda"
    outputs = []
    for start in range(0, len(patches), batch_size):
        batch = patches[start : start + batch_size].to(device, non_blocking=True).float()
        batch = transform(scaling.apply(batch))
        if on_gpu:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=on_gpu):
            logits = loaded.model(batch).float()
        probs = logits.sigmoid() if card.task == "multilabel" else F.softmax(logits, dim=1)
        outputs.append(probs.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, card.num_classes)


def classify_chunk(
    loaded: LoadedModel,
    values: npt.NDArray[np.float32],
    valid: npt.NDArray[np.bool_],
    grid: PatchGrid,
    chunk: Chunk,
    *,
    scaling: Scaling,
    min_valid: float,
    batch_size: int,
) -> ChunkResult:
    """Classify every patch of a chunk whose valid fraction reaches ``min_valid``."""
    patches, fraction = cut_patches(values, valid, grid, chunk)
    keep = fraction >= min_valid
    probs = torch.full((len(patches), loaded.card.num_classes), float("nan"))
    if keep.any():
        probs[keep] = classify_patches(loaded, patches[keep], scaling, batch_size)
    shape = (chunk.nrows, chunk.ncols)
    return ChunkResult(
        chunk,
        probs.reshape(*shape, -1).numpy(),
        fraction.reshape(shape).numpy(),
    )
