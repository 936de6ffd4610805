"""Streaming per-chunk results into a GeoPackage and a Cloud-Optimised GeoTIFF.

Both writers work on a temporary path beside the output and move it into place only
in ``finish``; ``abort`` removes the temporary files, so a failed run leaves nothing.
Both label patches through the run's ``Legend`` (the card's classes and Uncertain).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import shapely
from rasterio.windows import Window

from rsscgeo.scene.grid import PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import CLASS_NODATA, UNCERTAIN, UNCERTAIN_ID, Legend
from rsscgeo.scene.style import CLASS_FIELD, categorised_qml, embed_default_style

# GDAL >= 3.7 writes GeoPackage 1.4 by default, which QGIS 3.22's GDAL 3.6 reports as
# only partially supported; 1.2 opens everywhere without a warning.
GPKG_VERSION = "1.2"


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` that is moved into place on success."""
    return path.with_name(f".{path.name}.part{path.suffix}")


class GeoPackageWriter:
    """One polygon per classified patch, with a categorised QGIS style embedded.

    An Uncertain patch has ``class_id`` -1 and ``class_name`` Uncertain; its ``score``,
    ``top1``-``top3`` and ``p_*`` columns are written as for any other patch.
    ``metadata`` (e.g. STAC item ids) becomes the layer's GDAL metadata.
    """

    def __init__(
        self, path: Path, grid: PatchGrid, legend: Legend, metadata: Mapping[str, str] = {}
    ) -> None:
        self.path = path
        self.metadata = dict(metadata)
        self.tmp = temporary_path(path)
        self.grid = grid
        self.legend = legend
        self.card = legend.card
        self.layer = path.stem
        self.count = 0
        self.tmp.unlink(missing_ok=True)

    def write(self, result: ChunkResult) -> None:
        """Append the chunk's classified patches."""
        frame = self._frame(result)
        if frame.empty:
            return
        frame.to_file(
            self.tmp,
            layer=self.layer,
            driver="GPKG",
            engine="pyogrio",
            append=self.count > 0,
            **({} if self.count else self._creation),
        )
        self.count += len(frame)

    def finish(self) -> Path:
        """Embed the style, write the ``.qml`` beside the output and move it into place."""
        if self.count == 0:
            self._frame_schema().to_file(
                self.tmp, layer=self.layer, driver="GPKG", engine="pyogrio", **self._creation
            )
        qml = categorised_qml(self.legend)
        embed_default_style(self.tmp, self.layer, "geometry", qml)
        self.path.with_suffix(".qml").write_text(qml)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file."""
        self.tmp.unlink(missing_ok=True)

    @property
    def _creation(self) -> dict[str, Any]:
        """Options of the write that creates the file."""
        return {"VERSION": GPKG_VERSION, "layer_metadata": self.metadata or None}

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
        order = np.argsort(-probs, axis=1)
        best = order[:, 0] if len(probs) else np.empty(0, int)
        score = probs[np.arange(len(probs)), best].astype(np.float32)
        uncertain = self.legend.uncertain(score)
        columns: dict[str, Any] = {
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "class_id": np.where(uncertain, UNCERTAIN_ID, best).astype(np.int32),
            CLASS_FIELD: np.where(uncertain, UNCERTAIN, names[best]),
            "score": score,
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


class GeoTiffWriter:
    """One pixel per patch: class id, then optionally one probability band per class.

    The class band has a colour table, 254 for Uncertain patches and nodata (255)
    where patches were skipped. Written tiled, then copied to a Cloud-Optimised
    GeoTIFF on finish. ``metadata`` (e.g. STAC item ids) becomes dataset tags.
    """

    def __init__(
        self,
        path: Path,
        grid: PatchGrid,
        legend: Legend,
        probabilities: bool,
        metadata: Mapping[str, str] = {},
    ) -> None:
        self.path = path
        self.metadata = dict(metadata)
        self.work = path.with_name(f".{path.name}.work.tif")
        self.tmp = temporary_path(path)
        self.legend = legend
        self.card = legend.card
        self.probabilities = probabilities
        count = 1 + (self.card.num_classes if probabilities else 0)
        self.dst = rasterio.open(
            self.work,
            "w",
            driver="GTiff",
            width=grid.cols,
            height=grid.rows,
            count=count,
            dtype="float32" if probabilities else "uint8",
            crs=grid.crs,
            transform=grid.output_transform,
            nodata=CLASS_NODATA,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        )
        if not probabilities:  # a colour table must exist before pixels are written
            colors = {e.value: (*e.rgb, 255) for e in legend.entries}
            self.dst.write_colormap(1, colors)

    def write(self, result: ChunkResult) -> None:
        """Write the chunk's block of pixels."""
        chunk = result.chunk
        skipped = ~result.classified
        classes = self.legend.raster_values(result)
        window = Window(chunk.col, chunk.row, chunk.ncols, chunk.nrows)
        self.dst.write(classes.astype(self.dst.dtypes[0]), 1, window=window)
        if self.probabilities:
            bands = np.where(skipped[..., None], CLASS_NODATA, result.probabilities)
            bands = bands.transpose(2, 0, 1)
            self.dst.write(bands.astype(np.float32), list(range(2, 2 + len(bands))), window=window)

    def finish(self) -> Path:
        """Add band descriptions, copy to a COG and move it into place."""
        self.dst.set_band_description(1, "class_id")
        for index, name in enumerate(self.card.class_names if self.probabilities else []):
            self.dst.set_band_description(index + 2, f"p_{name}")
        self.dst.update_tags(
            1,
            classes=",".join(self.card.class_names),
            uncertain_below=f"{self.legend.uncertain_below:g}",
        )
        if self.metadata:
            self.dst.update_tags(**self.metadata)
        self.dst.close()
        rasterio.shutil.copy(
            self.work, self.tmp, driver="COG", compress="deflate", overviews="auto"
        )
        self.work.unlink()
        os.replace(self.tmp, self.path)
        _write_category_names(self.path, self.legend)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary files."""
        if not self.dst.closed:
            self.dst.close()
        self.work.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)


def _write_category_names(path: Path, legend: Legend) -> None:
    """Write band 1's category names (by pixel value) to GDAL's ``.aux.xml`` sidecar.

    GeoTIFF has no internal place for category names; GDAL reads the sidecar and QGIS
    shows the names in the legend. Values between the last class and Uncertain (254)
    get empty names.
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    names = {e.value: e.name for e in legend.entries}
    for value in range(max(names) + 1):
        ET.SubElement(categories, "Category").text = names.get(value, "")
    sidecar = path.with_name(path.name + ".aux.xml")
    tmp = sidecar.with_name(f".{sidecar.name}.part")
    tmp.write_text(ET.tostring(root, encoding="unicode"))
    os.replace(tmp, sidecar)
