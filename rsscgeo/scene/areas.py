"""Area per class: what planners ask of a class map ("how many hectares of each").

A classified patch counts with its grid cell's area (``stride`` x ``stride`` pixels of
the reading grid) times its valid fraction, so overlapping patches are not counted twice
and nodata is not counted at all. Cells of a projected CRS have one area (in the CRS's
linear unit, converted to metres); cells of a geographic CRS get their geodesic area on
the CRS's ellipsoid, one value per row of patches (it depends on latitude only).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rsscgeo.scene.grid import PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import UNCERTAIN_VALUE, Legend

COLUMNS = ("class", "patches", "area_m2", "area_ha", "percent", "mean_score")
SQUARE_METRES_PER_HECTARE = 10_000.0


def areas_path(output: Path) -> Path:
    """``<output stem>.areas.csv`` beside ``output``."""
    return output.with_name(f"{output.stem}.areas.csv")


def cell_areas(grid: PatchGrid) -> npt.NDArray[np.float64]:
    """Area in m² of one grid cell (stride x stride pixels), per row of patches."""
    from pyproj import CRS

    xres, yres = grid.transform.a, -grid.transform.e
    side_x, side_y = grid.stride * xres, grid.stride * yres
    crs = CRS.from_user_input(grid.crs.to_wkt())
    if not crs.is_geographic:
        metres = crs.axis_info[0].unit_conversion_factor  # e.g. 0.3048 for US feet
        return np.full(grid.rows, side_x * side_y * metres**2)
    geod = crs.get_geod()
    assert geod is not None  # a geographic CRS has an ellipsoid
    left, top = grid.transform.c, grid.transform.f
    areas = np.empty(grid.rows)
    for row in range(grid.rows):
        north = np.clip(top - row * side_y, -90, 90)
        south = np.clip(north - side_y, -90, 90)
        lons = [left, left + side_x, left + side_x, left]
        lats = [south, south, north, north]
        area, _ = geod.polygon_area_perimeter(lons, lats)
        areas[row] = abs(area)
    return areas


@dataclass(frozen=True)
class ClassArea:
    """One row of the area table."""

    name: str
    patches: int
    area_m2: float
    percent: float
    mean_score: float

    @property
    def area_ha(self) -> float:
        """The area in hectares."""
        return self.area_m2 / SQUARE_METRES_PER_HECTARE


class AreaTally:
    """Patches, area and top-1 probability per map category, summed chunk by chunk.

    Categories are the legend's (the card's classes, then Uncertain when enabled);
    patches below ``min_valid`` (skipped) count nowhere.
    """

    def __init__(self, grid: PatchGrid, legend: Legend) -> None:
        self.legend = legend
        self.entries = legend.entries
        self._row_area = cell_areas(grid)
        self._index = np.full(UNCERTAIN_VALUE + 2, -1)
        for position, entry in enumerate(self.entries):
            self._index[entry.value] = position
        size = len(self.entries)
        self.patches = np.zeros(size, np.int64)
        self.area = np.zeros(size)
        self.score = np.zeros(size)

    def add(self, result: ChunkResult) -> None:
        """Count one chunk's patches."""
        chunk = result.chunk
        done = result.classified
        values = self.legend.raster_values(result)[done]
        position = self._index[values]
        rows = np.arange(chunk.row, chunk.row + chunk.nrows)
        cell = np.broadcast_to(self._row_area[rows][:, None], done.shape)[done]
        size = len(self.entries)
        self.patches += np.bincount(position, minlength=size)
        self.area += np.bincount(position, cell * result.valid_fraction[done], minlength=size)
        self.score += np.bincount(position, result.scores[done], minlength=size)

    def table(self) -> list[ClassArea]:
        """Every category in legend order, with its share of the classified area."""
        total = self.area.sum()
        return [
            ClassArea(
                entry.name,
                int(self.patches[i]),
                float(self.area[i]),
                float(100 * self.area[i] / total) if total else 0.0,
                float(self.score[i] / self.patches[i]) if self.patches[i] else float("nan"),
            )
            for i, entry in enumerate(self.entries)
        ]


def write_areas(path: Path, table: list[ClassArea]) -> Path:
    """Write the table as CSV (temporary name, then moved into place)."""
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in table:
            score = "" if np.isnan(row.mean_score) else f"{row.mean_score:.4f}"
            writer.writerow(
                [
                    row.name,
                    row.patches,
                    f"{row.area_m2:.1f}",
                    f"{row.area_ha:.4f}",
                    f"{row.percent:.3f}",
                    score,
                ]
            )
    os.replace(tmp, path)
    return path
