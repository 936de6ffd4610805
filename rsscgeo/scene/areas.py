"""Area per class: what planners ask of a class map ("how many hectares of each").

A classified patch counts with its grid cell's area (``stride`` x ``stride`` pixels of
the reading grid) times its valid fraction, so overlapping patches are not counted twice
and nodata is not counted at all. Cells of a projected CRS have one area (in the CRS's
linear unit, converted to metres); cells of a geographic CRS get their geodesic area on
the CRS's ellipsoid, one value per row of patches (it depends on latitude only).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rsscgeo.hierarchy import UNCERTAIN_VALUE
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import Legend
from rsscgeo.scene.staging import Staging

COLUMNS = ("class", "level", "family", "patches", "area_m2", "area_ha", "percent", "mean_score")
# The level of a family's total row: its classes' rows plus the patches named by it.
FAMILY = "family"
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
    """One row of the area table.

    ``level`` is ``leaf``, ``parent`` or ``uncertain`` for what the map says, or
    ``family`` for a family's total; ``family`` names the family a row belongs to.
    """

    name: str
    patches: int
    area_m2: float
    percent: float
    mean_score: float
    level: str = "leaf"
    family: str = ""

    @property
    def area_ha(self) -> float:
        """The area in hectares."""
        return self.area_m2 / SQUARE_METRES_PER_HECTARE


class PatchAreas:
    """Where each map category sits in the legend, and the area patches count with.

    Shared by the area table of a run and the from-to matrix of ``change``.
    """

    def __init__(self, grid: PatchGrid, legend: Legend) -> None:
        self.names = [e.name for e in legend.entries]
        self._row_area = cell_areas(grid)
        self._position = np.full(UNCERTAIN_VALUE + 2, -1)
        for position, entry in enumerate(legend.entries):
            self._position[entry.value] = position

    def positions(self, values: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The legend positions of map values (class ids, Uncertain)."""
        return self._position[values]

    def of(
        self, chunk: Chunk, where: npt.NDArray[np.bool_], valid: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float64]:
        """Area in m² of the chunk's patches at ``where``: cell area x valid fraction."""
        rows = self._row_area[chunk.row : chunk.row + chunk.nrows]
        return np.broadcast_to(rows[:, None], where.shape)[where] * valid[where]


class AreaTally:
    """Patches, area and score per map category, summed chunk by chunk.

    Categories are the legend's (the card's classes, their families when patches may be
    named by them, then Uncertain when enabled); patches below ``min_valid`` (skipped)
    count nowhere. The score is the probability of what the map says.
    """

    def __init__(self, grid: PatchGrid, legend: Legend) -> None:
        self.legend = legend
        self.entries = legend.entries
        self._areas = PatchAreas(grid, legend)
        size = len(self.entries)
        self.patches = np.zeros(size, np.int64)
        self.area = np.zeros(size)
        self.score = np.zeros(size)

    def add(self, result: ChunkResult) -> None:
        """Count one chunk's patches."""
        done = result.classified
        labels = self.legend.label(result.probabilities)
        position = self._areas.positions(labels.values[done])
        size = len(self.entries)
        area = self._areas.of(result.chunk, done, result.valid_fraction)
        self.patches += np.bincount(position, minlength=size)
        self.area += np.bincount(position, area, minlength=size)
        self.score += np.bincount(position, labels.score[done], minlength=size)

    def table(self) -> list[ClassArea]:
        """Every category in legend order with its share of the classified area.

        On a card with families, each family's total follows (its classes and the
        patches named by the family itself), at level ``family``.
        """
        total = self.area.sum()

        def row(name: str, at: npt.NDArray[np.bool_], level: str, family: str) -> ClassArea:
            patches, area = int(self.patches[at].sum()), float(self.area[at].sum())
            mean = float(self.score[at].sum() / patches) if patches else float("nan")
            return ClassArea(
                name, patches, area, 100 * area / total if total else 0.0, mean, level, family
            )

        families = np.array([self.legend.family(e) or "" for e in self.entries])
        rows = [
            row(
                e.name,
                np.arange(len(self.entries)) == i,
                self.legend.level_of(e).label,
                families[i],
            )
            for i, e in enumerate(self.entries)
        ]
        if self.legend.card.parents:
            rows += [row(p, families == p, FAMILY, p) for p in self.legend.card.parent_names]
        return rows


def write_areas(staging: Staging, path: Path, table: list[ClassArea]) -> Path:
    """Stage the table as CSV at ``path``, to be published with the run's other files."""
    rows = [
        [
            row.name,
            row.level,
            row.family,
            row.patches,
            f"{row.area_m2:.1f}",
            f"{row.area_ha:.4f}",
            f"{row.percent:.3f}",
            "" if np.isnan(row.mean_score) else f"{row.mean_score:.4f}",
        ]
        for row in table
    ]
    return write_csv(staging, path, [list(COLUMNS), *rows])


def write_csv(staging: Staging, path: Path, rows: Sequence[Sequence[object]]) -> Path:
    """Stage ``rows`` as CSV at ``path``; returns ``path``."""
    with staging.stage(path).open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path
