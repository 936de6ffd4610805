"""A user's labels as patches of a scene's grid: which patch is which class.

Labels come from any vector file GDAL reads, in any CRS:

* polygons (``classify --suggest``'s patches, or any drawn area) label every patch of
  the model's grid that they cover at least half of (``MIN_COVER``);
* points label the patch that holds them (where patches overlap, the one whose centre
  is nearest).

Rows whose label is NULL or blank are ignored (the suggestions not labelled yet). In a
layer that has the field ``new_class`` (``classify --suggest``'s), a name filled there
is the row's label, whatever the label field says: QGIS's drop-down on ``label`` offers
only the model's classes and families.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyogrio  # type: ignore[import-untyped]
import shapely

from rsscgeo.errors import LabelsError, first_line
from rsscgeo.scene.grid import PatchGrid
from rsscgeo.scene.style import LabelFields

# A polygon labels a patch when it covers at least this share of the patch's area.
MIN_COVER = 0.5
# The layer classify --suggest writes, read by default when the file has it.
DEFAULT_LAYER = "to_label"


@dataclass(frozen=True)
class LabelRows:
    """The labelled rows of a vector layer, in the layer's CRS.

    Attributes:
        path: The file.
        layer: The layer read.
        field: The field holding the labels.
        frame: The rows with a label and a geometry (label stripped of blanks; a
            filled ``new_class`` in its place).
    """

    path: Path
    layer: str
    field: str
    frame: gpd.GeoDataFrame

    @property
    def names(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.frame[self.field]))


@dataclass(frozen=True)
class PatchLabels:
    """Labelled patches of one scene's grid (arrays of one length)."""

    scene: int  # index of the scene among those adapted on
    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    names: list[str]


def read_label_rows(path: Path, layer: str | None = None, field: str = "label") -> LabelRows:
    """The labelled rows of ``layer`` (default: ``to_label``, or the file's only layer).

    Raises:
        LabelsError: If the file is missing or not vector data, the layer or field does
            not exist, the layer has no CRS or holds lines, or no row is labelled.
    """
    if not path.exists():
        raise LabelsError(f"label file {path} does not exist; check the path.")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as err:  # pyogrio raises several error types for non-vector files
        raise LabelsError(
            f"{path} is not vector data ({first_line(err)}); give the GeoPackage written by "
            "classify --suggest, or any points or polygons (GeoPackage, shapefile, GeoJSON)."
        ) from None
    chosen = _layer(path, layers, layer)
    frame = gpd.read_file(path, layer=chosen, engine="pyogrio")
    if field not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != "geometry") or "none"
        raise LabelsError(
            f"layer {chosen!r} of {path} has no field {field!r} (fields: {fields})",
            "name the label field with field=...",
            cli_fix="name the label field with --field.",
        )
    if frame.crs is None:
        raise LabelsError(
            f"layer {chosen!r} of {path} has no CRS, so its labels cannot be placed on the "
            "scene; assign one (QGIS: Layer > Set CRS, or ogr2ogr -a_srs)."
        )
    text = frame[field].astype("string").str.strip()
    new_class = LabelFields().new_class
    if new_class in frame.columns and new_class != field:
        new = frame[new_class].astype("string").str.strip()
        text = new.where(new.notna() & (new != ""), text)
    keep = text.notna() & (text != "") & frame.geometry.notna() & ~frame.geometry.is_empty
    frame = frame.loc[keep].copy()
    frame[field] = text[keep].astype(str)
    if frame.empty:
        raise LabelsError(
            f"no labelled row in layer {chosen!r} of {path} (field {field!r} is empty "
            "everywhere); fill it in QGIS first."
        )
    kinds = set(frame.geometry.geom_type)
    lines = sorted(k for k in kinds if "Line" in k or "Collection" in k)
    if lines:
        raise LabelsError(
            f"layer {chosen!r} of {path} holds {lines[0]} geometries; labels must be points "
            "or polygons."
        )
    return LabelRows(path, chosen, field, frame)


def _layer(path: Path, layers: list[str], layer: str | None) -> str:
    if layer is not None:
        if layer not in layers:
            raise LabelsError(
                f"{path} has no layer {layer!r} (layers: {', '.join(layers) or 'none'})",
                "name one of them with layer=...",
                cli_fix="name one of them with --layer.",
            )
        return layer
    if DEFAULT_LAYER in layers:
        return DEFAULT_LAYER
    if len(layers) == 1:
        return layers[0]
    raise LabelsError(
        f"{path} has {len(layers)} layers ({', '.join(layers)}) and none is {DEFAULT_LAYER!r}",
        "choose the labels' layer with layer=...",
        cli_fix="choose the labels' layer with --layer.",
    )


def patches_of(
    rows: LabelRows, grid: PatchGrid, scene: int
) -> tuple[PatchLabels, npt.NDArray[np.bool_]]:
    """The patches of ``grid`` that ``rows`` label, and which rows label any of them.

    A patch labelled twice with different names is dropped (its label is unclear); one
    labelled twice with the same name counts once.
    """
    frame = rows.frame.to_crs(grid.crs) if rows.frame.crs != grid.crs else rows.frame
    cells: dict[tuple[int, int], set[str]] = {}
    placed = np.zeros(len(frame), bool)
    for i, (geometry, name) in enumerate(zip(frame.geometry, frame[rows.field], strict=True)):
        found = _cells(geometry, grid)
        placed[i] = bool(found)
        for cell in found:
            cells.setdefault(cell, set()).add(name)
    clear = sorted((cell, next(iter(n))) for cell, n in cells.items() if len(n) == 1)
    rows_, cols_ = (np.array([c[0][i] for c in clear], np.int64) for i in (0, 1))
    return PatchLabels(scene, rows_, cols_, [name for _, name in clear]), placed


def _cells(geometry: shapely.Geometry, grid: PatchGrid) -> list[tuple[int, int]]:
    """The grid's patches a point holds or a polygon covers at least ``MIN_COVER`` of."""
    pixel = grid.transform.a, -grid.transform.e
    x0, y0 = grid.transform.c, grid.transform.f
    step = grid.stride * pixel[0], grid.stride * pixel[1]
    size = grid.patch * pixel[0], grid.patch * pixel[1]
    if geometry.geom_type in ("Point", "MultiPoint"):
        found = []
        for point in shapely.get_parts(geometry):
            col = round(((point.x - x0) - size[0] / 2) / step[0])
            row = round(((y0 - point.y) - size[1] / 2) / step[1])
            if 0 <= row < grid.rows and 0 <= col < grid.cols:
                box = shapely.box(*grid.patch_bounds(row, col))
                if box.covers(point):
                    found.append((row, col))
        return found
    left, bottom, right, top = geometry.bounds
    cols = range(
        max(0, int(np.floor((left - x0 - size[0]) / step[0]))),
        min(grid.cols, int(np.ceil((right - x0) / step[0])) + 1),
    )
    rows = range(
        max(0, int(np.floor((y0 - top - size[1]) / step[1]))),
        min(grid.rows, int(np.ceil((y0 - bottom) / step[1])) + 1),
    )
    candidates = [(r, c) for r in rows for c in cols]
    if not candidates:
        return []
    boxes = shapely.box(*np.array([grid.patch_bounds(r, c) for r, c in candidates]).T)
    cover = shapely.area(shapely.intersection(boxes, geometry)) / (size[0] * size[1])
    return [cell for cell, share in zip(candidates, cover, strict=True) if share >= MIN_COVER]


def labels_hash(labels: Sequence[PatchLabels], scenes: Sequence[str]) -> str:
    """SHA-256 of the labelled patches (scene, row, col, name), independent of the file."""
    items = sorted(
        (scenes[p.scene], int(r), int(c), n)
        for p in labels
        for r, c, n in zip(p.rows, p.cols, p.names, strict=True)
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def place_labels(
    rows: LabelRows,
    grids: Sequence[PatchGrid],
    scenes: Sequence[str],
    say: Callable[[str], None] = lambda _: None,
) -> list[PatchLabels]:
    """The patches each scene's grid has labelled.

    Raises:
        LabelsError: If no labelled row lies on any scene.
    """
    placed = []
    anywhere = np.zeros(len(rows.frame), bool)
    for index, grid in enumerate(grids):
        labels, found = patches_of(rows, grid, index)
        placed.append(labels)
        anywhere |= found
    if not any(len(p.rows) for p in placed):
        raise LabelsError(
            f"none of the {len(rows.frame)} labelled rows of {rows.path} lies on a patch of "
            f"{', '.join(scenes)}; check that the labels belong to these scenes (and their CRS)."
        )
    missed = int((~anywhere).sum())
    if missed:
        say(f"warning: {missed} labelled rows lie on no scene's patch and are ignored")
    return placed
