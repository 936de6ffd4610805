"""Cutting labelled training tiles from a GeoTIFF and a vector layer of labelled polygons.

Tiles are laid on the scene's own pixel grid (``size`` px, stepping ``stride`` px). A
tile takes every class whose polygons cover at least ``min_cover`` of its area, so a
tile inside one polygon gets one label and a tile across several may get several.
Tiles that no class covers enough are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import rasterio
import shapely
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm.auto import tqdm

from rsscgeo.data.catalog import write_manifest
from rsscgeo.errors import DatasetError, OutputExistsError
from rsscgeo.rasterfile import open_scene

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class TilingSummary:
    """What ``cut_tiles`` wrote."""

    out_dir: Path
    manifest: Path
    tiles: int
    per_class: dict[str, int]


def cut_tiles(
    scene: Path,
    labels: Path,
    field: str,
    out_dir: Path,
    *,
    size: int = 256,
    stride: int | None = None,
    min_cover: float = 0.5,
    overwrite: bool = False,
) -> TilingSummary:
    """Write georeferenced GeoTIFF tiles and a ``path,labels`` manifest.

    Raises:
        SceneError: If the scene is not a readable, georeferenced, north-up raster
            with valid pixels.
        DatasetError: If the labels cannot be read, lack ``field``, or miss the scene.
        OutputExistsError: If ``out_dir`` already has a manifest and not ``overwrite``.
    """
    stride = stride or size
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise OutputExistsError(
            f"{manifest} exists",
            "set overwrite=True to replace the tiles.",
            cli_fix="pass --overwrite to replace the tiles.",
        )
    with open_scene(scene) as src:
        polygons = _read_labels(labels, field, src.crs)
        classes = sorted(polygons[field].astype(str).unique())
        tiles = list(_labelled_windows(src, polygons, field, size, stride, min_cover))
        if not tiles:
            raise DatasetError(
                f"no {size}px tile of {scene} is covered to {min_cover:.0%} by a polygon of "
                f"{labels}",
                "check that they overlap, or lower min_cover or size.",
                cli_fix="check that they overlap, or lower --min-cover or --size.",
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        profile = src.profile | {"driver": "GTiff", "width": size, "height": size, "tiled": False}
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        rows: list[tuple[str, list[str]]] = []
        for window, names in tqdm(tiles, desc="writing tiles", unit="tile"):
            data = src.read(window=window, boundless=True, fill_value=src.nodata or 0)
            name = f"tile_r{int(window.row_off):06d}_c{int(window.col_off):06d}.tif"
            tile_profile = profile | {"transform": window_transform(window, src.transform)}
            with rasterio.open(out_dir / name, "w", **tile_profile) as dst:
                dst.write(data)
            rows.append((name, names))
    write_manifest(manifest, rows)
    per_class = {c: sum(c in names for _, names in rows) for c in classes}
    return TilingSummary(out_dir, manifest, len(rows), per_class)


def _read_labels(labels: Path, field: str, crs: rasterio.crs.CRS) -> gpd.GeoDataFrame:
    if not labels.exists():
        raise DatasetError(f"label layer {labels} does not exist; check the path.")
    try:
        frame = gpd.read_file(labels)
    except Exception as err:  # pyogrio raises several error types
        raise DatasetError(
            f"cannot read label layer {labels} ({err}); pass a GeoPackage or shapefile."
        ) from None
    if field not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != "geometry")
        raise DatasetError(f"{labels} has no field {field!r}; available fields: {fields}.")
    if frame.crs is None:
        raise DatasetError(f"{labels} has no CRS; assign one before cutting tiles.")
    frame = frame[frame[field].notna() & frame.geometry.notna()]
    return frame.to_crs(crs) if frame.crs != crs else frame


def _labelled_windows(
    src: rasterio.DatasetReader,
    polygons: gpd.GeoDataFrame,
    field: str,
    size: int,
    stride: int,
    min_cover: float,
) -> Iterator[tuple[Window, list[str]]]:
    by_class = {
        str(name): shapely.union_all(group.geometry.values)
        for name, group in polygons.groupby(polygons[field].astype(str))
    }
    for name in by_class:
        shapely.prepare(by_class[name])
    for row in range(0, max(src.height - size, 0) + 1, stride):
        for col in range(0, max(src.width - size, 0) + 1, stride):
            window = Window(col, row, size, size)
            box = shapely.box(*rasterio.windows.bounds(window, src.transform))
            names = [
                name
                for name, area in by_class.items()
                if area.intersects(box) and area.intersection(box).area >= min_cover * box.area
            ]
            if names:
                yield window, sorted(names)


__all__ = ["MANIFEST_NAME", "TilingSummary", "cut_tiles"]
