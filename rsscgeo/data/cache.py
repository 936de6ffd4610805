"""Decode labelled tiles once into a memory-mapped uint8 array.

Training reads the same images every epoch; decoding a JPEG costs more than a
training step's share of it on a CPU. :func:`cached_tiles` decodes every image once,
resized to one side, into an ``N x 3 x S x S`` uint8 ``.npy`` file and memory-maps it
afterwards. The file is named by a key over the image paths, their sizes and
modification times and the side, so any changed, added or removed file makes a new
cache instead of a stale one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from numpy.lib.format import open_memmap
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rsscgeo.cachedir import cache_dir
from rsscgeo.errors import DatasetError
from rsscgeo.stopping import STOP

Tiles = npt.NDArray[np.uint8]  # N x 3 x side x side


def cache_key(paths: Sequence[Path], side: int) -> str:
    """A hash of the images (path, size, modification time) and the side they take."""
    digest = hashlib.sha256(f"rsscgeo-tiles-v1\0{side}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cached_tiles(
    paths: Sequence[Path], side: int, *, folder: Path | None = None, progress: bool = True
) -> Tiles:
    """The images of ``paths`` as RGB uint8 ``side x side``, decoded once and memory-mapped.

    Args:
        paths: Image files (8-bit RGB or grey: JPEG, PNG, ...), in the order wanted.
        side: Their side in the cache (resized with Pillow's antialiasing filter).
        folder: Where the cache lives (default: ``cache_dir("tiles")``).
        progress: Show a progress bar while decoding.

    Raises:
        DatasetError: If an image cannot be decoded.
    """
    if not paths:
        raise DatasetError("no images to cache; the dataset is empty.")
    folder = folder or cache_dir("tiles")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{len(paths)}x{side}px-{cache_key(paths, side)[:32]}.npy"
    if path.exists():
        tiles: Tiles = np.load(path, mmap_mode="r")
        return tiles
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    array = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, side, side))

    def decode(index: int) -> None:
        array[index] = _decode(paths[index], side)

    try:
        # Decoding and resizing release the GIL: threads use every core.
        with (
            ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
            tqdm(total=len(paths), desc="caching images", unit="img", disable=not progress) as bar,
        ):
            for _ in pool.map(decode, range(len(paths))):
                bar.update()
                STOP.check("interrupted while caching images")  # the partial cache goes
        array.flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tiles = np.load(path, mmap_mode="r")
    return tiles


def _decode(path: Path, side: int) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (side, side):
                rgb = rgb.resize((side, side), Image.Resampling.BILINEAR)
            pixels: npt.NDArray[np.uint8] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read image {path} ({err}); replace or remove the corrupt file."
        ) from None
    return pixels
