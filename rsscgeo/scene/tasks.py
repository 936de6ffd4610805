"""The chunk task: read a block of whole patches, cut it and classify it.

A :class:`ChunkWork` is small and model-free, so it ships to Dask workers cheaply;
each worker holds the model itself (see ``engine``). ``chunk_side`` decides how many
patches a task covers, the same way for ``classify_scene`` and ``patch_dataset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import (
    ChunkResult,
    Preprocess,
    Scaling,
    classify_chunk,
    prefers_channels_last,
)
from rsscgeo.scene.options import ClassifyOptions
from rsscgeo.scene.reader import SceneReader

# Chunks are at most this many pixels on a side by default: large reads, a few hundred
# patches each, a few tens of MB per task in flight...
CHUNK_PIXELS = 2048
# ...and small enough that a scene makes at least this many chunks, so that several
# workers share even a small scene, but never under MIN_SIDE patches a side (each task
# costs a few ms of scheduling and a read). None depends on the worker count, so a run
# can be resumed on another cluster.
MIN_CHUNKS = 16
MIN_SIDE = 4


def chunk_side(grid: PatchGrid, chunk_size: int | None = None) -> int:
    """Patches per chunk side for ``grid``.

    ``chunk_size`` pixels (whole strides) if given; else up to ``CHUNK_PIXELS``, small
    enough for ``MIN_CHUNKS`` chunks, and at least ``MIN_SIDE``.
    """
    if chunk_size:
        return max(1, chunk_size // grid.stride)
    spread = math.isqrt(grid.rows * grid.cols // MIN_CHUNKS)
    return max(1, min(CHUNK_PIXELS // grid.stride, max(MIN_SIDE, spread)))


@dataclass(frozen=True)
class ChunkWork:
    """What every chunk task needs besides the model; the task is ``__call__``."""

    reader: SceneReader
    grid: PatchGrid
    preprocess: Preprocess
    min_valid: float
    batch_size: int
    tta: bool = False

    @classmethod
    def build(
        cls,
        reader: SceneReader,
        grid: PatchGrid,
        scaling: Scaling,
        raw_dtype: torch.dtype,
        loaded: LoadedModel,
        options: ClassifyOptions,
    ) -> ChunkWork:
        """The work for a scene read by ``reader`` on ``grid`` and the model ``loaded``.

        ``raw_dtype`` is what the reader returns (uint8 for 8-bit scenes, else float32).
        """
        channels_last = prefers_channels_last(loaded.model)
        preprocess = Preprocess.build(loaded.card, scaling, raw_dtype, channels_last=channels_last)
        return cls(reader, grid, preprocess, options.min_valid, options.batch_size, options.tta)

    def __call__(self, chunk: Chunk, loaded: LoadedModel) -> ChunkResult:
        """Read, cut and classify one chunk."""
        values, valid = self.reader.read(self.grid, chunk)
        return classify_chunk(
            loaded,
            values,
            valid,
            self.grid,
            chunk,
            preprocess=self.preprocess,
            min_valid=self.min_valid,
            batch_size=self.batch_size,
            tta=self.tta,
        )
