"""Reading tile images into band-first numpy arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rsscgeo.errors import DatasetError

# BigEarthNet stores one file per Sentinel-2 band; true colour is B04, B03, B02.
BIGEARTHNET_RGB = ("B04", "B03", "B02")


def read_image(path: Path) -> npt.NDArray[np.generic]:
    """Read an image file (or a BigEarthNet patch folder) as a CxHxW array.

    JPEG/PNG go through Pillow (RGB); GeoTIFF/TIFF through rasterio (all bands, native
    dtype).

    Raises:
        DatasetError: If the file is missing, truncated or not an image.
    """
    if path.is_dir():
        return _read_band_folder(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_raster(path)
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # writable: callers wrap it in tensors
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read image {path} ({err}); replace or remove the corrupt file."
        ) from None
    return array.transpose(2, 0, 1)


def check_images(paths: Sequence[Path]) -> None:
    """Decode every image once so a corrupt file fails before training starts.

    Decoding releases the GIL, so threads use all cores.

    Raises:
        DatasetError: Naming the first unreadable image.
    """
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        tqdm(total=len(paths), desc="checking images", unit="img", leave=False) as bar,
    ):
        for _ in pool.map(read_image, paths):
            bar.update()


def _read_raster(path: Path) -> npt.NDArray[np.generic]:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            array: npt.NDArray[np.generic] = src.read()
    except (RasterioError, OSError) as err:
        while isinstance(err.__cause__, Exception):  # rasterio's own says "see previous"
            err = err.__cause__
        raise DatasetError(
            f"cannot read image {path} ({str(err).strip() or type(err).__name__}); "
            "replace or remove the corrupt file."
        ) from None
    # NaN reaches the network as NaN loss and NaN predictions; nodata tiles are unusable.
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise DatasetError(
            f"image {path} holds NaN pixels; replace or remove it (or fill the NaN, e.g. "
            "gdal_calc.py or gdal_fillnodata.py)."
        )
    return array


def _read_band_folder(folder: Path) -> npt.NDArray[np.generic]:
    bands = []
    for band in BIGEARTHNET_RGB:
        files = sorted(folder.glob(f"*_{band}.tif"))
        if not files:
            raise DatasetError(f"{folder} has no *_{band}.tif; a BigEarthNet patch needs B02-B04.")
        bands.append(_read_raster(files[0])[0])
    return np.stack(bands)
