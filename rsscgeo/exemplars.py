"""A few training tiles per class that travel inside a model file, for rehearsal.

``rsscgeo adapt`` fine-tunes a model on a user's labels from their own scenes. Classes
that never appear in those scenes are held in place only by what the adapted model
still sees of them: the exemplars, tiles drawn from the model's training split, on
which the base model's answers are distilled. (Unlabelled patches of the scenes
protect only the classes the scenes show.)

Each tile's bands are stored as grayscale JPEGs (any band count, a tenth of the raw
size), under tensor names that start with ``exemplars.`` beside the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt
import torch

# Tensor names in the model file.
PREFIX = "exemplars."
_BYTES, _OFFSETS, _CLASSES, _SHAPE = (
    f"{PREFIX}jpeg",
    f"{PREFIX}offsets",
    f"{PREFIX}classes",
    f"{PREFIX}shape",
)
# Of the JPEG codec: enough that a tile's texture survives, a tenth of the raw bytes.
JPEG_QUALITY = 90
# The default number of exemplars per class a training run stores.
PER_CLASS = 8


@dataclass(frozen=True)
class Exemplars:
    """Tiles with the one class each was labelled.

    Attributes:
        tiles: N x bands x S x S uint8, as training decoded them (before normalising).
        classes: N class indexes into the model card's classes.
    """

    tiles: torch.Tensor
    classes: torch.Tensor

    def __post_init__(self) -> None:
        if self.tiles.dtype != torch.uint8 or self.tiles.ndim != 4:
            raise ValueError("exemplar tiles must be N x bands x S x S uint8")
        if self.classes.shape != (len(self.tiles),):
            raise ValueError("exemplars need one class per tile")

    def __len__(self) -> int:
        return len(self.tiles)

    def remapped(self, index: Sequence[int]) -> Exemplars:
        """The exemplars under new class indexes: ``index[c]`` for class ``c``, -1 drops it."""
        new = torch.tensor(list(index), dtype=torch.long)[self.classes]
        keep = new >= 0
        return Exemplars(self.tiles[keep], new[keep])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors stored in a model file (the tiles JPEG-encoded band by band)."""
        from torchvision.io import encode_jpeg

        count, bands, height, width = self.tiles.shape
        planes = self.tiles.reshape(count * bands, 1, height, width)
        encoded = [encode_jpeg(plane, quality=JPEG_QUALITY) for plane in planes]
        sizes = torch.tensor([0, *(len(e) for e in encoded)], dtype=torch.long)
        return {
            _BYTES: torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8),
            _OFFSETS: sizes.cumsum(0),
            _CLASSES: self.classes.to(torch.long),
            _SHAPE: torch.tensor([count, bands, height, width], dtype=torch.long),
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> Exemplars | None:
        """The exemplars stored among a model file's tensors, if any."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if _SHAPE not in tensors:
            return None
        count, bands, height, width = (int(v) for v in tensors[_SHAPE])
        data, offsets = tensors[_BYTES], tensors[_OFFSETS].tolist()
        planes = [
            decode_jpeg(data[start:end], mode=ImageReadMode.GRAY)
            for start, end in pairwise(offsets)
        ]
        tiles = (
            torch.stack(planes).reshape(count, bands, height, width)
            if planes
            else torch.empty((0, bands, height, width), dtype=torch.uint8)
        )
        return cls(tiles, tensors[_CLASSES].to(torch.long))


def choose(
    targets: npt.NDArray[np.bool_], per_class: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Up to ``per_class`` rows of each class, drawn at random among the rows of one class.

    Rows that may be several classes (a coarser source label) are never exemplars: their
    class is not known.

    Args:
        targets: N x classes, True for the classes a row may be.
        per_class: Rows wanted per class.
        seed: Seeds the draw.

    Returns:
        The chosen rows and the class of each.
    """
    rng = np.random.default_rng(seed)
    single = targets.sum(1) == 1
    rows: list[int] = []
    classes: list[int] = []
    for c in range(targets.shape[1]):
        members = np.flatnonzero(single & targets[:, c])
        picked = rng.permutation(members)[:per_class]
        rows += picked.tolist()
        classes += [c] * len(picked)
    return np.asarray(rows, dtype=np.int64), np.asarray(classes, dtype=np.int64)


def is_exemplar_tensor(name: str) -> bool:
    """Whether a model file's tensor holds exemplars rather than a weight."""
    return name.startswith(PREFIX)
