"""Streaming per-chunk results into a GeoPackage and a Cloud-Optimised GeoTIFF.

Both writers write every file (layer, raster, style, sidecar) to a temporary name a
run's :class:`~rsscgeo.scene.staging.Staging` gives them; ``finish`` completes those
files and the run publishes them all at once, so a failed or stopped run leaves
nothing. ``abort`` closes what is open and removes scratch files.
Both label patches through the run's ``Legend`` (the card's classes and Uncertain).
The file mechanics (:class:`GeoPackageLayer`, :class:`PatchRaster`) serve other
per-patch outputs too (``change``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import shapely
from rasterio.windows import Window

from rsscgeo.hierarchy import CLASS_NODATA, Level
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import UNCERTAIN_ID, Legend
from rsscgeo.scene.staging import Staging
from rsscgeo.scene.style import CLASS_FIELD, categorised_qml, embed_default_style

# GDAL >= 3.7 writes GeoPackage 1.4 by default, which QGIS 3.22's GDAL 3.6 reports as
# only partially supported; 1.2 opens everywhere without a warning.
GPKG_VERSION = "1.2"


@dataclass(frozen=True)
class MapContext:
    """What every output of one run shares.

    Attributes:
        staging: Where the run's files are written until they are published together.
        grid: The patch grid (one feature or pixel per patch).
        legend: What the map says and in which colours.
        metadata: Dataset metadata (e.g. STAC item ids) for every output.
    """

    staging: Staging
    grid: PatchGrid
    legend: Legend
    metadata: Mapping[str, str] = field(default_factory=dict)


class GeoPackageLayer:
    """A GeoPackage of one layer (named after the file), appended frame by frame.

    Frames go to the staged temporary path; ``finish`` embeds a QGIS style as the
    layer's default and stages it as a ``.qml`` beside the output too.
    ``metadata`` becomes the layer's GDAL metadata.
    """

    def __init__(self, path: Path, staging: Staging, metadata: Mapping[str, str] = {}) -> None:
        self.path = path
        self.staging = staging
        self.metadata = dict(metadata)
        self.tmp = staging.stage(path)
        self.layer = path.stem
        self.count = 0

    def append(self, frame: gpd.GeoDataFrame) -> None:
        """Append ``frame``'s features (none: nothing happens)."""
        if frame.empty:
            return
        self._write(frame, append=self.count > 0)
        self.count += len(frame)

    def finish(self, schema: gpd.GeoDataFrame, qml: str, description: str) -> None:
        """Style the layer with ``qml`` and stage the style beside it.

        Args:
            schema: An empty frame with the layer's columns, written if no feature was.
            qml: The QGIS style.
            description: The style's description in QGIS.
        """
        if self.count == 0:
            self._write(schema, append=False)
        embed_default_style(self.tmp, self.layer, qml, description)
        self.staging.stage(self.path.with_suffix(".qml")).write_text(qml)

    def add_layer(self, name: str, frame: gpd.GeoDataFrame, qml: str, description: str) -> None:
        """Write ``frame`` as another layer ``name`` of the file, styled with ``qml``.

        The style is also staged beside the output as ``<stem>.<name>.qml``.
        """
        frame.to_file(self.tmp, layer=name, driver="GPKG", engine="pyogrio")
        embed_default_style(self.tmp, name, qml, description)
        self.staging.stage(self.path.with_name(f"{self.path.stem}.{name}.qml")).write_text(qml)

    def _write(self, frame: gpd.GeoDataFrame, *, append: bool) -> None:
        creation = (
            {} if append else {"VERSION": GPKG_VERSION, "layer_metadata": self.metadata or None}
        )
        frame.to_file(
            self.tmp, layer=self.layer, driver="GPKG", engine="pyogrio", append=append, **creation
        )


class GeoPackageWriter:
    """One polygon per classified patch, with a categorised QGIS style embedded.

    ``class_name`` is what the map says: a class, a family (back-off) or Uncertain;
    ``level`` says which (``leaf``, ``parent``, ``uncertain``), ``class_id`` is its map
    value (-1 for Uncertain), ``leaf_name`` the most probable class, ``parent_name``
    the family named or the class's family (empty on flat cards), and ``score`` the
    probability of what the map says (for Uncertain, of the top class). ``top1``-``top3``
    and ``p_*`` are the class probabilities.
    ``metadata`` (e.g. STAC item ids) becomes the layer's GDAL metadata.
    """

    def __init__(self, path: Path, context: MapContext) -> None:
        self.path = path
        self.file = GeoPackageLayer(path, context.staging, context.metadata)
        self.grid = context.grid
        self.legend = context.legend
        self.card = context.legend.card

    def write(self, result: ChunkResult) -> None:
        """Append the chunk's classified patches."""
        self.file.append(self._frame(result))

    def finish(self) -> None:
        """Embed the style and stage the ``.qml`` beside the output."""
        self.file.finish(self._frame_schema(), categorised_qml(self.legend), "rsscgeo classes")

    def abort(self) -> None:
        """Nothing is open between chunks; the staged files go with the run's staging."""

    def _frame(self, result: ChunkResult) -> gpd.GeoDataFrame:
        chunk = result.chunk
        probs = result.probabilities.reshape(-1, self.card.num_classes)
        rows, cols = np.divmod(np.arange(len(probs)), chunk.ncols)
        rows, cols = rows + chunk.row, cols + chunk.col
        keep = result.classified.reshape(-1)
        probs, rows, cols = probs[keep], rows[keep], cols[keep]
        return self._assemble(probs, rows, cols, result.valid_fraction.reshape(-1)[keep])

    def _frame_schema(self) -> gpd.GeoDataFrame:
        n = self.card.num_classes
        return self._assemble(
            np.empty((0, n), np.float32), np.empty(0, int), np.empty(0, int), np.empty(0)
        )

    def _assemble(
        self, probs: np.ndarray, rows: np.ndarray, cols: np.ndarray, valid: np.ndarray
    ) -> gpd.GeoDataFrame:
        names = np.array(self.card.class_names)
        parents = np.array([*self.card.parent_names, ""])  # -1 (flat card): ""
        order = np.argsort(-probs, axis=1)
        labels = self.legend.label(probs)
        said = self.legend.names
        uncertain = labels.level == Level.UNCERTAIN
        columns: dict[str, Any] = {
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "class_id": np.where(uncertain, UNCERTAIN_ID, labels.values).astype(np.int32),
            CLASS_FIELD: np.array([said[v] for v in labels.values], dtype=object).astype(str)
            if len(probs)
            else names[:0],
            "level": np.array([level.label for level in Level])[labels.level],
            "leaf_name": names[labels.leaf],
            "parent_name": parents[labels.parent],
            "score": labels.score,
        }
        for rank in range(3):
            columns[f"top{rank + 1}"] = names[order[:, rank]] if len(probs) else names[:0]
        for index, name in enumerate(self.card.class_names):
            columns[f"p_{name}"] = probs[:, index].astype(np.float32)
        if self.card.task == "multilabel":
            assert self.card.thresholds is not None
            for index, name in enumerate(self.card.class_names):
                columns[f"has_{name}"] = probs[:, index] >= self.card.thresholds[index]
        columns["valid_fraction"] = valid.astype(np.float32)
        boxes = [self.grid.patch_bounds(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
        geometry = shapely.box(*np.array(boxes).T) if boxes else []
        return gpd.GeoDataFrame(pd.DataFrame(columns), geometry=geometry, crs=self.grid.crs)


class PatchRaster:
    """A raster of one pixel per patch, written chunk by chunk and published as a COG.

    Pixels go to a tiled work file beside the output (nodata 255); ``finish`` copies
    it to a Cloud-Optimised GeoTIFF at the staged path; ``abort`` closes and removes
    the work file. Set band descriptions, tags or a colour table on ``dst`` before
    finishing.
    """

    def __init__(
        self, path: Path, staging: Staging, grid: PatchGrid, count: int, dtype: str
    ) -> None:
        self.path = path
        self.staging = staging
        self.work = path.with_name(f".{path.name}.work.tif")
        self.dst = rasterio.open(
            self.work,
            "w",
            driver="GTiff",
            width=grid.cols,
            height=grid.rows,
            count=count,
            dtype=dtype,
            crs=grid.crs,
            transform=grid.output_transform,
            nodata=CLASS_NODATA,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        )

    def write(self, bands: np.ndarray, chunk: Chunk, first_band: int = 1) -> None:
        """Write ``bands`` (bands x nrows x ncols) at ``chunk``'s pixels from ``first_band``."""
        window = Window(chunk.col, chunk.row, chunk.ncols, chunk.nrows)
        indexes = list(range(first_band, first_band + len(bands)))
        self.dst.write(bands.astype(self.dst.dtypes[0]), indexes, window=window)

    def finish(self) -> None:
        """Close the work file and copy it to a COG at the staged path."""
        self.dst.close()
        tmp = self.staging.stage(self.path)
        rasterio.shutil.copy(self.work, tmp, driver="COG", compress="deflate", overviews="auto")
        self.work.unlink()

    def abort(self) -> None:
        """Close and remove the work file."""
        if not self.dst.closed:
            self.dst.close()
        self.work.unlink(missing_ok=True)


class GeoTiffWriter:
    """One pixel per patch: class id, then optionally one probability band per class.

    The class band has a colour table, 254 for Uncertain patches and nodata (255)
    where patches were skipped. Written tiled, then copied to a Cloud-Optimised
    GeoTIFF on finish. ``metadata`` (e.g. STAC item ids) becomes dataset tags.
    """

    def __init__(self, path: Path, context: MapContext, *, probabilities: bool = False) -> None:
        self.path = path
        self.staging = context.staging
        self.metadata = dict(context.metadata)
        self.legend = legend = context.legend
        self.card = legend.card
        self.probabilities = probabilities
        count = 1 + (self.card.num_classes if probabilities else 0)
        dtype = "float32" if probabilities else "uint8"
        self.raster = PatchRaster(path, self.staging, context.grid, count, dtype)
        self.dst = self.raster.dst
        if not probabilities:  # a colour table must exist before pixels are written
            colors = {e.value: (*e.rgb, 255) for e in legend.entries}
            self.dst.write_colormap(1, colors)

    def write(self, result: ChunkResult) -> None:
        """Write the chunk's block of pixels."""
        chunk = result.chunk
        self.raster.write(self.legend.raster_values(result)[None], chunk)
        if self.probabilities:
            skipped = ~result.classified
            bands = np.where(skipped[..., None], CLASS_NODATA, result.probabilities)
            self.raster.write(bands.transpose(2, 0, 1), chunk, first_band=2)

    def finish(self) -> None:
        """Add band descriptions, copy to a COG and stage its category names."""
        self.dst.set_band_description(1, "class_id")
        for index, name in enumerate(self.card.class_names if self.probabilities else []):
            self.dst.set_band_description(index + 2, f"p_{name}")
        self.dst.update_tags(
            1,
            classes=",".join(self.legend.mapped_names),  # by class band value
            uncertain_below=f"{self.legend.uncertain_below:g}",
        )
        if self.metadata:
            self.dst.update_tags(**self.metadata)
        self.raster.finish()
        write_category_names(self.staging, self.path, [category_names(self.legend)])

    def abort(self) -> None:
        """Close and remove the work file."""
        self.raster.abort()


def category_names(legend: Legend) -> dict[int, str]:
    """The legend's names by GeoTIFF class-band value."""
    return {e.value: e.name for e in legend.entries}


def write_category_names(staging: Staging, path: Path, bands: Sequence[Mapping[int, str]]) -> None:
    """Stage each band's category names (by pixel value) in GDAL's ``.aux.xml`` sidecar.

    ``bands`` holds the names of bands 1, 2, ... in order. GeoTIFF has no internal place
    for category names; GDAL reads the sidecar and QGIS shows the names in the legend.
    Values without a name (e.g. between the last class and Uncertain, 254) get empty
    names.
    """
    root = ET.Element("PAMDataset")
    for number, names in enumerate(bands, start=1):
        band = ET.SubElement(root, "PAMRasterBand", band=str(number))
        categories = ET.SubElement(band, "CategoryNames")
        for value in range(max(names) + 1):
            ET.SubElement(categories, "Category").text = names.get(value, "")
    sidecar = path.with_name(path.name + ".aux.xml")
    staging.stage(sidecar).write_text(ET.tostring(root, encoding="unicode"))
