"""The one place rsscgeo imports TorchGeo.

TorchGeo's APIs move between minor releases (0.8 indexes datasets by slices, 0.9
reworked GeoDataset again); keeping every import here means an upgrade touches one
module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.merge
import torch
from torchgeo.datasets import RasterDataset
from torchgeo.trainers import ClassificationTask

__all__ = ["ClassificationTask", "MosaicDataset"]


class MosaicDataset(RasterDataset):
    """Scene files as one mosaic in the first file's CRS, read with a validity band.

    ``dataset[x0:x1:res, y0:y1:res, t0:t1]`` returns ``image`` with the selected bands
    followed by one band that is 1 where every band holds data (nodata values, masks
    and alpha bands respected) and 0 elsewhere, including beyond the mosaic's edge.
    """

    filename_glob = "*"

    def __init__(
        self, paths: Sequence[Path], band_indexes: Sequence[int], res: tuple[float, float]
    ) -> None:
        """Index ``paths`` (warped to the first file's CRS) at resolution ``res``."""
        super().__init__(paths=[str(p) for p in paths], res=res, cache=True)
        self.band_indexes = list(band_indexes)

    def _merge_files(
        self, filepaths: Sequence[str], query: Any, band_indexes: Sequence[int] | None = None
    ) -> torch.Tensor:
        vrts = [self._cached_load_warp_file(fp) for fp in filepaths]
        x, y, _ = self._disambiguate_slice(query)
        merged, _ = rasterio.merge.merge(
            vrts,
            (x.start, y.start, x.stop, y.stop),
            (x.step, y.step),
            indexes=self.band_indexes,
            resampling=self.resampling,
            masked=True,
        )
        valid = ~np.ma.getmaskarray(merged).any(axis=0, keepdims=True)
        data = np.ma.filled(merged, 0).astype(np.float32)
        return torch.from_numpy(np.concatenate([data, valid.astype(np.float32)]))
