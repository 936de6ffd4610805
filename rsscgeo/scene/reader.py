"""Opening scenes: checking the files, then reading chunks through TorchGeo.

Several files form one mosaic in the first file's CRS (TorchGeo's RasterDataset warps
the others). Each chunk is one read of the mosaic at the reading resolution, returned
with a validity mask (nodata, masks and alpha bands respected).
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from rsscgeo.errors import OptionError, SceneError, first_line
from rsscgeo.rasterfile import open_scene
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.sources import SceneLike, SceneSource, scene_source, use_cog_defaults


@dataclass(frozen=True)
class SceneInfo:
    """What the scene files are, checked before any work starts."""

    sources: tuple[SceneSource, ...]
    crs: CRS
    resolution: tuple[float, float]
    band_count: int
    dtype: str
    reprojected: tuple[SceneSource, ...]

    def check_band_numbers(self, bands: Sequence[int], cli_option: str) -> None:
        """Refuse 1-based band numbers the scene does not have.

        Args:
            bands: The band numbers asked for.
            cli_option: The command-line option that chose them (for the fix).

        Raises:
            OptionError: Naming the first missing band and the scene's bands.
        """
        missing = [b for b in bands if not 1 <= b <= self.band_count]
        if missing:
            raise OptionError(
                f"band {missing[0]} does not exist in {self.sources[0]} "
                f"(bands 1-{self.band_count})",
                "choose existing bands.",
                cli_fix=f"choose existing bands with {cli_option}.",
            )


def inspect_scenes(scenes: Sequence[SceneLike]) -> SceneInfo:
    """Check that every scene is a georeferenced raster and describe the mosaic.

    Args:
        scenes: Local files, URLs or GDAL virtual paths (see ``rsscgeo.sources``).

    Raises:
        SceneError: Naming the scene and the fix.
    """
    if not scenes:
        raise SceneError("no scene given; pass one or more GeoTIFF files.")
    paths = [scene_source(scene) for scene in scenes]
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
    return SceneInfo(
        tuple(paths),
        first["crs"],
        first["res"],
        first["count"],
        first["dtype"],
        tuple(reprojected),
    )


def _check_overlap(paths: list[SceneSource], footprints: list[tuple[CRS, Any]], crs: CRS) -> None:
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
        sources: The scene files (paths given are made ``SceneSource`` objects).
        band_indexes: 1-based bands to read, in the model's band order.
        resolution: Reading resolution (x, y) in CRS units per pixel.
        align_to: Another scene's patch grid to read onto (its CRS and pixel grid,
            warping these files), e.g. a later date of the same place; ``None`` reads
            on the first file's own grid.
    """

    sources: tuple[SceneSource, ...]
    band_indexes: tuple[int, ...]
    resolution: tuple[float, float]
    align_to: PatchGrid | None = None
    # GDAL file handles are not thread-safe: every thread gets its own dataset (and so
    # its own cached handles); sharing one gave decode errors and wrong pixels.
    _local: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.sources = tuple(scene_source(s) for s in self.sources)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "band_indexes": self.band_indexes,
            "resolution": self.resolution,
            "align_to": self.align_to,
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

            if any(s.is_remote for s in self.sources):
                use_cog_defaults()  # in every worker process that reads
            try:
                with warnings.catch_warnings():
                    # TorchGeo warns about a missing file before failing; our error says it.
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = MosaicDataset(
                        [s.gdal_path for s in self.sources],
                        self.band_indexes,
                        self.resolution,
                        reuse_buffer=True,
                        **self._alignment(),
                    )
            except (OSError, RasterioError) as err:
                raise SceneError(
                    f"cannot open {self._names} on {socket.gethostname()} "
                    f"({first_line(err)}); every Dask worker needs the scene at the same path "
                    "(a shared filesystem)."
                ) from None
            self._local.dataset = dataset
        return dataset

    def _alignment(self) -> dict[str, Any]:
        if self.align_to is None:
            return {}
        transform = self.align_to.transform
        return {"crs": self.align_to.crs, "origin": (transform.c, transform.f)}

    @property
    def _names(self) -> str:
        return ", ".join(map(str, self.sources))

    def grid(self, patch: int, stride: int) -> PatchGrid:
        """The patch grid on the mosaic's pixel grid at the reading resolution.

        An aligned reader's grid is the one it is aligned to, with this patch and stride.
        """
        if self.align_to is not None:
            return replace(self.align_to, patch=patch, stride=stride)
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
        except IndexError:  # an aligned scene that does not reach this chunk
            _, _, width, height = grid.chunk_pixels(chunk)
            dtype = np.uint8 if self.dataset.dtype == torch.uint8 else np.float32
            shape = (len(self.band_indexes), height, width)
            return np.zeros(shape, dtype), np.zeros((height, width), bool)
        except RasterioError as err:
            raise SceneError(
                f"reading {self._names} failed ({first_line(err)}); the "
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
