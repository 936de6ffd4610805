"""Opening scenes: checking the files, then reading chunks through TorchGeo.

Several files form one mosaic in the first file's CRS (TorchGeo's RasterDataset warps
the others). Each chunk is one read of the mosaic at the reading resolution, returned
with a validity mask (nodata, masks and alpha bands respected).
"""

from __future__ import annotations

import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from rsscgeo.errors import SceneError, first_line
from rsscgeo.rasterfile import open_scene
from rsscgeo.scene.grid import Chunk, PatchGrid


@dataclass(frozen=True)
class SceneInfo:
    """What the scene files are, checked before any work starts."""

    paths: tuple[Path, ...]
    crs: CRS
    resolution: tuple[float, float]
    band_count: int
    dtype: str
    reprojected: tuple[Path, ...]


def inspect_scenes(paths: list[Path]) -> SceneInfo:
    """Check that every file is a georeferenced raster and describe the mosaic.

    Raises:
        SceneError: Naming the file and the fix.
    """
    if not paths:
        raise SceneError("no scene given; pass one or more GeoTIFF files.")
    first: dict[str, Any] = {}
    reprojected = []
    footprints = []  # (CRS, bounds) of each file, for the overlap check
    for path in paths:
        with open_scene(path) as src:
            crs = src.crs
            footprints.append((crs, src.bounds))
            meta = {"crs": crs, "res": src.res, "count": src.count, "dtype": src.dtypes[0]}
        if not first:
            first = meta
        elif meta["count"] != first["count"]:
            raise SceneError(
                f"{path} has {meta['count']} bands, {paths[0]} has {first['count']}; "
                "a mosaic needs the same bands in every file."
            )
        elif meta["dtype"] != first["dtype"]:
            raise SceneError(
                f"{path} holds {meta['dtype']}, {paths[0]} holds {first['dtype']}; a mosaic "
                "needs one data type (convert with gdal_translate -ot)."
            )
        elif crs != first["crs"]:
            reprojected.append(path)
    _check_overlap(paths, footprints, first["crs"])
    # Absolute paths: Dask workers may run in another working directory.
    return SceneInfo(
        tuple(p.absolute() for p in paths),
        first["crs"],
        first["res"],
        first["count"],
        first["dtype"],
        tuple(reprojected),
    )


def _check_overlap(paths: list[Path], footprints: list[tuple[CRS, Any]], crs: CRS) -> None:
    """Every file of a mosaic must overlap or touch another one (in the first CRS)."""
    if len(paths) < 2:
        return
    boxes = [
        shapely.box(*transform_bounds(src_crs, crs, *bounds)) for src_crs, bounds in footprints
    ]
    for index, box in enumerate(boxes):
        others = shapely.union_all([b for i, b in enumerate(boxes) if i != index])
        if not box.intersects(others):
            raise SceneError(
                f"{paths[index]} does not overlap or touch the other scene files; "
                "a mosaic needs files of one area (classify them separately)."
            )


@dataclass
class SceneReader:
    """Reads chunks of a mosaic; cheap to pickle (the dataset opens on first use).

    Attributes:
        paths: The scene files.
        band_indexes: 1-based bands to read, in the model's band order.
        resolution: Reading resolution (x, y) in CRS units per pixel.
    """

    paths: tuple[Path, ...]
    band_indexes: tuple[int, ...]
    resolution: tuple[float, float]
    # GDAL file handles are not thread-safe: every thread gets its own dataset (and so
    # its own cached handles); sharing one gave decode errors and wrong pixels.
    _local: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "paths": self.paths,
            "band_indexes": self.band_indexes,
            "resolution": self.resolution,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def dataset(self) -> Any:
        """The TorchGeo mosaic, opened once per thread.

        Raises:
            SceneError: If this process cannot open the files (e.g. a Dask worker on a
                machine without the client's filesystem).
        """
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            from rsscgeo._torchgeo import MosaicDataset

            try:
                with warnings.catch_warnings():
                    # TorchGeo warns about a missing file before failing; our error says it.
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = MosaicDataset(
                        [str(p) for p in self.paths],
                        self.band_indexes,
                        self.resolution,
                        reuse_buffer=True,
                    )
            except (OSError, RasterioError) as err:
                raise SceneError(
                    f"cannot open {', '.join(map(str, self.paths))} on {socket.gethostname()} "
                    f"({first_line(err)}); every Dask worker needs the scene at the same path "
                    "(a shared filesystem)."
                ) from None
            self._local.dataset = dataset
        return dataset

    def grid(self, patch: int, stride: int) -> PatchGrid:
        """The patch grid on the mosaic's pixel grid at the reading resolution."""
        xs, ys, _ = self.dataset.bounds
        xres, yres = self.resolution
        width = max(1, round((xs.stop - xs.start) / xres))
        height = max(1, round((ys.stop - ys.start) / yres))
        transform = Affine(xres, 0, xs.start, 0, -yres, ys.stop)
        return PatchGrid(self.dataset.crs, transform, width, height, patch, stride)

    def read(
        self, grid: PatchGrid, chunk: Chunk
    ) -> tuple[npt.NDArray[np.uint8 | np.float32], npt.NDArray[np.bool_]]:
        """One read of the pixels under ``chunk``: (bands x H x W values, H x W validity).

        Values are ``uint8`` for 8-bit scenes and ``float32`` otherwise. They live in a
        buffer this thread reuses: valid until its next read of a chunk of that size.
        """
        left, bottom, right, top = grid.chunk_bounds(chunk)
        _, _, t = self.dataset.bounds
        xres, yres = self.resolution
        try:
            sample = self.dataset[left:right:xres, bottom:top:yres, t.start : t.stop]
        except RasterioError as err:
            raise SceneError(
                f"reading {', '.join(map(str, self.paths))} failed ({first_line(err)}); the "
                "file may be truncated or corrupt: check it with gdalinfo -checksum."
            ) from None
        image = sample["image"].numpy()
        values, valid = image[:-1], image[-1] > 0
        if values.dtype.kind == "f":
            nan = np.isnan(values).any(axis=0)
            if nan.any():  # undeclared nodata: NaN would turn the patch's output into NaN
                values[:, nan] = 0
                valid &= ~nan
        return values, valid
