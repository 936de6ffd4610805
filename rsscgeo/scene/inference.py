"""Classifying one chunk: cut it into patches, scale, normalise, run the model in batches.

Pixel scaling rule: 8-bit scenes are divided by the card's ``input_scale`` (255), as
the model was trained. Other data types (uint16, int16, float) are stretched linearly
per band from the scene's 2nd to 98th percentile onto 0..1 first (percentiles from a
decimated read of the whole scene), so a 12-bit Landsat scene looks like the 8-bit
imagery the model knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from rsscgeo._buffers import thread_buffer
from rsscgeo.backends import OnnxNetwork, model_device
from rsscgeo.modelfile import LoadedModel, ModelCard
from rsscgeo.predict import probabilities
from rsscgeo.scene.grid import Chunk, PatchGrid


@dataclass(frozen=True)
class Scaling:
    """Per-band linear map of raw values onto 0..1: ``(v - low) / (high - low)``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def divide_by(cls, scale: float, bands: int) -> Scaling:
        """The rule for 8-bit scenes: divide by ``scale``."""
        return cls((0.0,) * bands, (scale,) * bands)

    @classmethod
    def percentile_stretch(
        cls, values: npt.NDArray[np.uint8 | np.float32], valid: npt.NDArray[np.bool_]
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

    @property
    def scores(self) -> npt.NDArray[np.float32]:
        """Nrows x ncols: the top-1 probability, NaN where the patch was skipped."""
        best: npt.NDArray[np.float32] = self.probabilities.max(axis=-1)
        return best


def cut_patches(
    values: npt.NDArray[np.uint8 | np.float32],
    valid: npt.NDArray[np.bool_],
    grid: PatchGrid,
    chunk: Chunk,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N x C x P x P views of ``values``) and their valid fractions (N), row-major."""
    p, s = grid.patch, grid.stride
    image = torch.from_numpy(values)
    patches = image.unfold(1, p, s).unfold(2, p, s)  # C x rows x cols x P x P
    patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], p, p)
    expected = chunk.nrows * chunk.ncols
    if valid.all():  # most chunks of most scenes: skip counting
        fraction = torch.ones(expected)
    else:
        mask = torch.from_numpy(valid).unfold(0, p, s).unfold(1, p, s)
        fraction = mask.sum(dim=(-1, -2), dtype=torch.int32).reshape(-1) / float(p * p)
    assert patches.shape[0] == expected, (patches.shape, chunk)
    return patches, fraction


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """Whether ``model`` is convolutional, so channels-last batches and weights help.

    About 30% faster for EfficientNet on CPU, and GPUs need it; for other networks the
    conversion would only cost a pass.
    """
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def prepare_model(loaded: LoadedModel, device: torch.device) -> LoadedModel:
    """``loaded`` on ``device``, channels-last where that helps, ready for classify_patches.

    An ONNX Runtime model gets a session with this process's torch thread count.
    """
    if isinstance(loaded.model, OnnxNetwork):
        return loaded.with_network(loaded.model.with_threads(torch.get_num_threads()))
    model = loaded.model.to(device)
    if prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    return loaded.with_network(model)


@dataclass(frozen=True)
class Preprocess:
    """Raw patches to the network's input, equal to ``card_transform(scaling(x))``.

    Scaling and normalisation are one per-band multiply-add on the raw patch, done
    before the card's resize (bilinear resampling commutes with per-band affine maps),
    so the model's preprocessing costs three passes over each patch instead of six.
    Values are clamped to the scaled 0..1 range only where raw values can leave it.
    Batches are channels-last when ``channels_last`` (see ``prefers_channels_last``).
    """

    scale: torch.Tensor  # 1 x C x 1 x 1
    shift: torch.Tensor  # 1 x C x 1 x 1
    clamp: tuple[torch.Tensor, torch.Tensor] | None
    resize: int
    crop: int | None
    channels_last: bool

    @classmethod
    def build(
        cls, card: ModelCard, scaling: Scaling, raw: torch.dtype, *, channels_last: bool
    ) -> Preprocess:
        """The preprocessing for patches of dtype ``raw`` under ``scaling``."""

        def band(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)

        low, high = band(scaling.low), band(scaling.high)
        mean, std = band(card.mean), band(card.std)
        span = (high - low).clamp(min=1e-6)
        scale, shift = 1 / (span * std), (-low / span - mean) / std
        clamp = None
        if raw != torch.uint8 or bool((low > 0).any() or (high < 255).any()):
            clamp = ((-mean / std).float(), ((1 - mean) / std).float())
        return cls(
            scale.float(), shift.float(), clamp, card.eval_resize, card.eval_crop, channels_last
        )

    def to(self, device: torch.device) -> Preprocess:
        """The same preprocessing with its constants on ``device``."""
        clamp = None if self.clamp is None else (self.clamp[0].to(device), self.clamp[1].to(device))
        return replace(self, scale=self.scale.to(device), shift=self.shift.to(device), clamp=clamp)

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """N x C x P x P raw patches (any dtype and strides) to a normalised float batch."""
        resizes = patches.shape[-1] != self.resize
        final = torch.channels_last if self.channels_last else torch.contiguous_format
        # The resize is fastest channels-first, so a resized batch changes layout after it.
        layout = torch.contiguous_format if resizes else final
        batch = thread_buffer(tuple(patches.shape), torch.float32, patches.device, layout)
        # One pass reads the raw (uint8) view and writes the scaled, normalised batch.
        torch.addcmul(self.shift, patches, self.scale, out=batch)
        if self.clamp is not None:
            batch.clamp_(*self.clamp)
        if resizes:
            # v2.Resize's antialias=True: identical when enlarging, needed when shrinking.
            batch = F.interpolate(
                batch, size=(self.resize, self.resize), mode="bilinear", antialias=True
            )
        if self.crop is not None and self.crop < self.resize:
            top = (self.resize - self.crop) // 2
            batch = batch[..., top : top + self.crop, top : top + self.crop]
        return batch.contiguous(memory_format=final)


@torch.inference_mode()
def classify_patches(
    loaded: LoadedModel,
    patches: torch.Tensor,
    preprocess: Preprocess,
    batch_size: int,
    *,
    tta: bool = False,
) -> torch.Tensor:
    """Calibrated class probabilities of raw patches (see ``rsscgeo.predict``).

    Softmax of the logits over the card's temperature (sigmoid for multilabel); with
    ``tta`` averaged over the 8 dihedral transforms of each patch. On a GPU the raw
    patches are copied there (as uint8 for 8-bit scenes) and preprocessed there, and
    the model runs under fp16 autocast.
    """
    card = loaded.card
    device = model_device(loaded.model)
    on_gpu = device.type == "cuda"
    preprocess = preprocess.to(device)
    outputs = []
    for start in range(0, len(patches), batch_size):
        batch = preprocess(patches[start : start + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.float16, enabled=on_gpu):
            probs = probabilities(loaded.model, batch, card, tta=tta)
        outputs.append(probs.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, card.num_classes)


def classify_chunk(
    loaded: LoadedModel,
    values: npt.NDArray[np.uint8 | np.float32],
    valid: npt.NDArray[np.bool_],
    grid: PatchGrid,
    chunk: Chunk,
    *,
    preprocess: Preprocess,
    min_valid: float,
    batch_size: int,
    tta: bool = False,
) -> ChunkResult:
    """Classify every patch of a chunk whose valid fraction reaches ``min_valid``."""
    patches, fraction = cut_patches(values, valid, grid, chunk)
    keep = fraction >= min_valid
    if keep.all():  # the usual case: classify the view, no copy of the chunk
        probs = classify_patches(loaded, patches, preprocess, batch_size, tta=tta)
    else:
        probs = torch.full((len(patches), loaded.card.num_classes), float("nan"))
        if keep.any():
            probs[keep] = classify_patches(loaded, patches[keep], preprocess, batch_size, tta=tta)
    shape = (chunk.nrows, chunk.ncols)
    return ChunkResult(
        chunk,
        probs.reshape(*shape, -1).numpy(),
        fraction.reshape(shape).numpy(),
    )
