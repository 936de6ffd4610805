"""The one place rsscgeo imports TorchGeo.

TorchGeo's APIs move between minor releases (0.8 indexes datasets by slices, 0.9
reworked GeoDataset again); keeping every import here means an upgrade touches one
module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio
import torch
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NodataShadowWarning
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from torchgeo.datasets import RasterDataset

from rsscgeo._buffers import thread_buffer

if TYPE_CHECKING:
    from torchgeo.trainers import ClassificationTask

__all__ = ["ClassificationTask", "MosaicDataset"]


def __getattr__(name: str) -> Any:
    """``ClassificationTask``, imported on first use.

    TorchGeo's trainers import Lightning and kornia (about 0.6 s), which reading a
    scene never needs.
    """
    if name == "ClassificationTask":
        from torchgeo.trainers import ClassificationTask

        return ClassificationTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MosaicDataset(RasterDataset):
    """Scene files as one mosaic in the first file's CRS, read with a validity band.

    ``dataset[x0:x1:res, y0:y1:res, t0:t1]`` returns ``image`` with the selected bands
    followed by one band that is 1 where every band holds data (nodata values, masks
    and alpha bands respected) and 0 elsewhere, including beyond the mosaic's edge.
    8-bit mosaics stay ``uint8`` (a quarter of the memory of float32, and the model's
    preprocessing converts per batch anyway); other types become ``float32``. With
    ``reuse_buffer`` the returned image is a per-thread buffer, valid until the
    thread's next read of that size (how classify reads chunk after chunk).

    ``crs`` and ``origin`` put the mosaic on another scene's pixel grid (its CRS, and
    the top-left corner of its pixels): every file is then warped onto that grid, so
    two dates of one place are read pixel for pixel alike (``rsscgeo change``).
    """

    filename_glob = "*"

    def __init__(
        self,
        paths: Sequence[str],
        band_indexes: Sequence[int],
        res: tuple[float, float],
        *,
        reuse_buffer: bool = False,
        crs: Any = None,
        origin: tuple[float, float] | None = None,
    ) -> None:
        """Index ``paths`` (warped to ``crs``, default the first file's) at ``res``."""
        super().__init__(paths=list(paths), crs=crs, res=res, cache=True)
        self.bands_read: list[int] = list(band_indexes)
        self.reuse_buffer = reuse_buffer
        # Mosaic files are warped onto the reading grid itself (see _load_warp_file).
        xs, ys, _ = self.bounds
        self._grid: tuple[float, float, float, float] | None = None
        if origin is not None:
            self._grid = (*origin, *res)
        elif len(self.files) > 1:
            self._grid = (xs.start, ys.stop, *res)
        self._uint8 = all(
            self._cached_load_warp_file(path).dtypes[0] == "uint8" for path in self.files
        )

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self._uint8 else torch.float32

    @property
    def resampling(self) -> Resampling:
        # Decimated reads average neighbours whatever the data type (TorchGeo picks
        # nearest for integer data, which aliases).
        return Resampling.bilinear

    def _load_warp_file(self, filepath: Any) -> Any:
        """Open a file; a mosaic's (or aligned) files as warped views on the reading grid.

        Each mosaic file (reprojected or not) becomes a WarpedVRT whose pixels are the
        reading grid's pixels, so a chunk is an integer window of every file and a
        patch's pixels do not depend on the chunk it falls in. (A view on the file's own
        grid would be resampled per read, from windows whose fractional offsets differ
        from chunk to chunk.)
        """
        if self._grid is None:
            return super()._load_warp_file(filepath)
        left0, top0, xres, yres = self._grid
        src = rasterio.open(filepath)
        bounds = transform_bounds(src.crs, self.crs, *src.bounds)
        left = left0 + math.floor((bounds[0] - left0) / xres) * xres
        top = top0 - math.floor((top0 - bounds[3]) / yres) * yres
        width = max(1, math.ceil((bounds[2] - left) / xres))
        height = max(1, math.ceil((top - bounds[1]) / yres))
        transform = Affine(xres, 0, left, 0, -yres, top)
        return WarpedVRT(
            src,
            crs=self.crs,
            transform=transform,
            width=width,
            height=height,
            resampling=self.resampling,
        )

    def _merge_files(
        self, filepaths: Sequence[str], query: Any, band_indexes: Sequence[int] | None = None
    ) -> torch.Tensor:
        handles = [self._cached_load_warp_file(fp) for fp in filepaths]
        x, y, _ = self._disambiguate_slice(query)
        bounds = (x.start, y.start, x.stop, y.stop)
        height = round((y.stop - y.start) / y.step)
        width = round((x.stop - x.start) / x.step)
        # Bands then the validity band, filled in place: no full-size temporaries.
        shape = (len(self.bands_read) + 1, height, width)
        if self.reuse_buffer:
            out = thread_buffer(shape, self.dtype).numpy()
        else:
            out = np.empty(shape, np.uint8 if self._uint8 else np.float32)
        if len(handles) == 1:
            self._read_into(out, handles[0], bounds, (x.step, y.step))
        else:
            self._mosaic_into(out, handles, bounds, (x.step, y.step))
        return torch.from_numpy(out)

    def _mosaic_into(
        self,
        out: npt.NDArray[Any],
        handles: Sequence[Any],
        bounds: tuple[float, float, float, float],
        res: tuple[float, float],
    ) -> None:
        """Several files into ``out``: where files overlap, the first valid pixel wins.

        Each file is read on the chunk's own pixel grid (as a single file is), so a
        patch's pixels do not depend on which chunk it falls in. ``rasterio.merge``
        snaps each file's window to the file's edge and then to whole output pixels,
        shifting a file that is off the grid by up to half a pixel in every chunk that
        crosses its edge.
        """
        out.fill(0)
        part = np.empty_like(out)
        with warnings.catch_warnings():
            # A file with nodata and alpha: the nodata value decides, as in GDAL.
            warnings.simplefilter("ignore", NodataShadowWarning)
            for src in handles:
                self._read_into(part, src, bounds, res)
                take = (part[-1] != 0) & (out[-1] == 0)
                out[:, take] = part[:, take]

    def _read_into(
        self,
        out: npt.NDArray[Any],
        src: Any,
        bounds: tuple[float, float, float, float],
        res: tuple[float, float],
    ) -> None:
        """One windowed read of the part of a single file inside ``bounds``.

        Faster and leaner than ``rasterio.merge`` (no masked arrays): pixels outside
        the file become 0 and invalid; a chunk inside the file is decoded straight into
        ``out`` (which may hold anything beforehand).
        """
        left, _, _, top = bounds
        xres, yres = res
        _, height, width = out.shape
        inner = src.bounds
        c0 = max(0, round((inner.left - left) / xres))
        c1 = min(width, round((inner.right - left) / xres))
        r0 = max(0, round((top - inner.top) / yres))
        r1 = min(height, round((top - inner.bottom) / yres))
        if (r0, c0, r1, c1) != (0, 0, height, width):
            out.fill(0)  # the part outside the file: no data, not valid
        if c0 >= c1 or r0 >= r1:
            return
        window = src.window(left + c0 * xres, top - r1 * yres, left + c1 * xres, top - r0 * yres)
        shape = (len(self.bands_read), r1 - r0, c1 - c0)
        if (r0, c0, r1, c1) == (0, 0, height, width):
            part = src.read(
                self.bands_read, window=window, out=out[:-1], resampling=self.resampling
            )
        else:
            part = src.read(
                self.bands_read, window=window, out_shape=shape, resampling=self.resampling
            )
            out[:-1, r0:r1, c0:c1] = part
        out[-1, r0:r1, c0:c1] = self._validity(src, part, window, shape)

    def _validity(
        self, src: Any, part: npt.NDArray[Any], window: Any, shape: tuple[int, int, int]
    ) -> npt.NDArray[np.bool_] | bool:
        """Where every selected band holds data, from GDAL's mask flags."""
        flags = [src.mask_flag_enums[i - 1] for i in self.bands_read]
        if all(f == [MaskFlags.all_valid] for f in flags):
            return True
        native = (round(window.height), round(window.width)) == shape[1:]
        if native and src.nodata is not None and all(f == [MaskFlags.nodata] for f in flags):
            # Pixel equality with nodata is the mask at native resolution; reading
            # GDAL's mask would decode the blocks a second time.
            nodata = src.nodata
            if np.isnan(nodata):
                return ~np.isnan(part).any(axis=0)  # type: ignore[no-any-return]
            return (part != nodata).all(axis=0)  # type: ignore[no-any-return]
        masks = src.read_masks(self.bands_read, window=window, out_shape=shape)
        return (masks > 0).all(axis=0)  # type: ignore[no-any-return]
