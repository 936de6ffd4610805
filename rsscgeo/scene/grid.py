"""The patch grid laid on a scene's pixel grid, and its division into read chunks.

Patches start at the scene's top-left pixel and step by ``stride``. The last row and
column of patches may run past the scene's edge: they are padded with nodata, never
stretched or dropped. Chunks group whole patches so that one read serves many.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from affine import Affine

from rsscgeo.errors import SceneError

if TYPE_CHECKING:  # only a field type; keeps the grid importable without rasterio
    from rasterio.crs import CRS


@dataclass(frozen=True)
class Chunk:
    """A block of ``nrows`` x ``ncols`` patches whose top-left patch is (``row``, ``col``)."""

    index: int
    row: int
    col: int
    nrows: int
    ncols: int


@dataclass(frozen=True)
class PatchGrid:
    """Patches of ``patch`` px every ``stride`` px on a north-up pixel grid.

    Attributes:
        crs: CRS of the grid.
        transform: Affine transform of the pixel grid the patches are read on.
        width: Grid width in pixels.
        height: Grid height in pixels.
        patch: Patch side in pixels.
        stride: Step between patches in pixels.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if self.transform.b != 0 or self.transform.d != 0:
            raise SceneError(
                "the scene's transform is rotated or sheared; warp it north-up first "
                "(gdalwarp -r bilinear in.tif out.tif)."
            )
        if self.transform.a <= 0 or self.transform.e >= 0:
            raise SceneError("the scene's transform is not north-up; warp it first (gdalwarp).")
        if self.patch <= 0 or self.stride <= 0:
            raise SceneError("patch size and stride must be positive pixel counts.")

    @property
    def rows(self) -> int:
        """Patch rows, the last one padded where the scene ends inside it."""
        return 1 + max(0, math.ceil((self.height - self.patch) / self.stride))

    @property
    def cols(self) -> int:
        """Patch columns, the last one padded where the scene ends inside it."""
        return 1 + max(0, math.ceil((self.width - self.patch) / self.stride))

    @property
    def output_transform(self) -> Affine:
        """Transform of a raster with one pixel per patch (the grid scaled by the stride)."""
        return self.transform @ Affine.scale(self.stride)

    def patch_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of one patch in the grid's CRS."""
        left, top = self.transform @ (col * self.stride, row * self.stride)
        right, bottom = self.transform @ (
            col * self.stride + self.patch,
            row * self.stride + self.patch,
        )
        return left, bottom, right, top

    def chunk_pixels(self, chunk: Chunk) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) of the pixels a chunk's patches cover."""
        width = (chunk.ncols - 1) * self.stride + self.patch
        height = (chunk.nrows - 1) * self.stride + self.patch
        return chunk.col * self.stride, chunk.row * self.stride, width, height

    def chunk_bounds(self, chunk: Chunk) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the pixels a chunk covers."""
        col, row, width, height = self.chunk_pixels(chunk)
        left, top = self.transform @ (col, row)
        right, bottom = self.transform @ (col + width, row + height)
        return left, bottom, right, top

    def chunks(self, patches_per_side: int) -> Iterator[Chunk]:
        """Chunks of up to ``patches_per_side`` x ``patches_per_side`` patches, row-major."""
        n = max(1, patches_per_side)
        index = 0
        for row in range(0, self.rows, n):
            for col in range(0, self.cols, n):
                yield Chunk(index, row, col, min(n, self.rows - row), min(n, self.cols - col))
                index += 1
