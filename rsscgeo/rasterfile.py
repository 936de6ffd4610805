"""Opening one raster file with every check later steps rely on.

Shared by the scene reader (classify) and tile cutting (``rsscgeo tiles``), so a bad
file fails the same way, in one line naming the file, before any work starts.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NodataShadowWarning, RasterioError
from rasterio.windows import Window

from rsscgeo.errors import SceneError, first_line
from rsscgeo.sources import SceneSource, scene_source, use_cog_defaults

# The data check reads a scene decimated to about this many pixels on its long side.
DATA_CHECK_PIXELS = 1024


def open_scene(scene: str | Path | SceneSource) -> rasterio.DatasetReader:
    """Open a scene after checking everything later steps rely on.

    The scene (a local file, a URL or a GDAL virtual path, see ``rsscgeo.sources``)
    must be a non-empty raster, readable from its first to its last block (truncated
    files fail here, not hours into a run), georeferenced, north-up and hold some valid
    pixels.

    Returns:
        The open dataset (a context manager).

    Raises:
        SceneError: Naming the scene as given and the fix.
    """
    source = scene_source(scene)
    src = _open_remote(source) if source.is_remote else _open_local(source.path, source.name)
    try:
        _check_raster(src, source.name)
    except BaseException:
        src.close()
        raise
    return src


def _open_remote(source: SceneSource) -> rasterio.DatasetReader:
    use_cog_defaults()
    try:
        return rasterio.open(source.gdal_path)
    except RasterioError as err:
        raise SceneError(
            f"cannot read scene {source.name} ({gdal_message(err)})",
            "check the URL, that the server is reachable and that it serves a GeoTIFF.",
        ) from None


def _open_local(path: Path, name: str) -> rasterio.DatasetReader:
    if path.is_dir():
        raise SceneError(
            f"scene {name} is a folder, not a raster file", "pass the raster files inside it."
        )
    if not path.is_file():
        raise SceneError(f"scene {name} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise SceneError(f"{name} is empty (0 bytes); re-download or re-export it.")
    try:
        src = rasterio.open(path)
    except RasterioError as err:
        raise SceneError(
            f"{name} is not a readable raster ({gdal_message(err)}); pass a GeoTIFF."
        ) from None
    return src


def _check_raster(src: Any, path: str) -> None:
    if src.width == 0 or src.height == 0:
        raise SceneError(f"{path} has no pixels; pass a non-empty raster.")
    try:
        # One pixel of every band in the first and the last block: a file cut short
        # (or a header declaring more pixels than the file holds) fails here.
        for row, col in ((0, 0), (src.height - 1, src.width - 1)):
            src.read(window=Window(col, row, 1, 1))
    except RasterioError as err:
        raise SceneError(
            f"{path} is truncated or corrupt: its header declares {src.width}x{src.height} "
            f"pixels in {src.count} band(s) but reading them failed ({gdal_message(err)}); "
            "re-download or re-export it."
        ) from None
    if src.crs is None:
        raise SceneError(
            f"{path} has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX {path})."
        )
    transform = src.transform
    if transform.b != 0 or transform.d != 0:
        raise SceneError(f"{path} has a rotated transform; warp it north-up with gdalwarp.")
    _check_has_data(src, path)


def _check_has_data(src: Any, path: str) -> None:
    """Refuse a scene whose (decimated) pixels are all nodata, masked or NaN."""
    floating = np.dtype(src.dtypes[0]).kind == "f"
    masked = any(flags != [MaskFlags.all_valid] for flags in src.mask_flag_enums)
    if not (floating or masked):  # every pixel is valid: nothing to read
        return
    factor = max(1, math.ceil(max(src.width, src.height) / DATA_CHECK_PIXELS))
    shape = (max(1, src.height // factor), max(1, src.width // factor))
    try:
        with warnings.catch_warnings():
            # A file with nodata and alpha: GDAL uses the nodata value, as we do.
            warnings.simplefilter("ignore", NodataShadowWarning)
            valid = src.dataset_mask(out_shape=shape) > 0
        if valid.any() and floating:
            nan = np.isnan(src.read(out_shape=(src.count, *shape))).all(axis=0)
            if not (valid & ~nan).any():
                raise SceneError(
                    f"{path} has no valid pixels: every value is NaN; fill the raster or "
                    "mark NaN as nodata in a scene with data (gdal_translate -a_nodata nan)."
                )
    except RasterioError as err:
        raise SceneError(
            f"{path} is corrupt: reading its pixels failed ({gdal_message(err)}); "
            "re-download or re-export it."
        ) from None
    if not valid.any():
        nodata = "" if src.nodata is None else f" (nodata value {src.nodata:g})"
        raise SceneError(
            f"{path} has no valid pixels: every pixel is nodata or masked{nodata}; check "
            "the nodata value with gdalinfo (gdal_edit.py -a_nodata) or pass a scene with data."
        )


def gdal_message(err: Exception) -> str:
    """GDAL's own first line: rasterio's often says only 'see previous exception'."""
    while isinstance(err.__cause__, Exception):
        err = err.__cause__
    return first_line(err)
