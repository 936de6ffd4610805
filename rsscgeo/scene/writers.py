"""Streaming per-chunk results into a GeoPackage and a Cloud-Optimised GeoTIFF.

Both writers work on a temporary path beside the output and move it into place only
in ``finish``; ``abort`` removes the temporary files, so a failed run leaves nothing.
Both label patches through the run's ``Legend`` (the card's classes and Uncertain).
The file mechanics (:class:`GeoPackageLayer`, :class:`PatchRaster`) serve other
per-patch outputs too (``change``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import shapely
from rasterio.windows import Window

from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import CLASS_NODATA, UNCERTAIN, UNCERTAIN_ID, Legend
from rsscgeo.scene.style import CLASS_FIELD, categorised_qml, embed_default_style

# GDAL >= 3.7 writes GeoPackage 1.4 by default, which QGIS 3.22's GDAL 3.6 reports as
# only partially supported; 1.2 opens everywhere without a warning.
GPKG_VERSION = "1.2"


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` that is moved into place on success."""
    return path.with_name(f".{path.name}.part{path.suffix}")


class GeoPackageLayer:
    """A GeoPackage of one layer (named after the file), appended frame by frame.

    Frames go to a temporary path; ``finish`` embeds a QGIS style as the layer's
    default, writes it as a ``.qml`` beside the output and moves the file into place;
    ``abort`` removes the temporary file. ``metadata`` becomes the layer's GDAL metadata.
    """

    def __init__(self, path: Path, metadata: Mapping[str, str] = {}) -> None:
        self.path = path
        self.metadata = dict(metadata)
        self.tmp = temporary_path(path)
        self.layer = path.stem
        self.count = 0
        self.tmp.unlink(missing_ok=True)

    def append(self, frame: gpd.GeoDataFrame) -> None:
        """Append ``frame``'s features (none: nothing happens)."""
        if frame.empty:
            return
        self._write(frame, append=self.count > 0)
        self.count += len(frame)

    def finish(self, schema: gpd.GeoDataFrame, qml: str, description: str) -> Path:
        """Style the layer with ``qml`` and move the file into place.

        Args:
            schema: An empty frame with the layer's columns, written if no feature was.
            qml: The QGIS style.
            description: The style's description in QGIS.
        """
        if self.count == 0:
            self._write(schema, append=False)
        embed_default_style(self.tmp, self.layer, "geometry", qml, description)
        self.path.with_suffix(".qml").write_text(qml)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file."""
        self.tmp.unlink(missing_ok=True)

    def _write(self, frame: gpd.GeoDataFrame, *, append: bool) -> None:
        creation = (
            {} if append else {"VERSION": GPKG_VERSION, "layer_metadata": self.metadata or None}
        )
        frame.to_file(
            self.tmp, layer=self.layer, driver="GPKG", engine="pyogrio", append=append, **creation
        )


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
        self.file = GeoPackageLayer(path, metadata)
        self.grid = grid
        self.legend = legend
        self.card = legend.card

    def write(self, result: ChunkResult) -> None:
        """Append the chunk's classified patches."""
        self.file.append(self._frame(result))

    def finish(self) -> Path:
        """Embed the style, write the ``.qml`` beside the output and move it into place."""
        return self.file.finish(
            self._frame_schema(), categorised_qml(self.legend), "rsscgeo classes"
        )

    def abort(self) -> None:
        """Remove the temporary file."""
        self.file.abort()

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


class PatchRaster:
    """A raster of one pixel per patch, written chunk by chunk and published as a COG.

    Pixels go to a tiled work file beside the output (nodata 255); ``publish`` copies
    it to a Cloud-Optimised GeoTIFF and moves that into place; ``abort`` removes both.
    Set band descriptions, tags or a colour table on ``dst`` before publishing.
    """

    def __init__(self, path: Path, grid: PatchGrid, count: int, dtype: str) -> None:
        self.path = path
        self.work = path.with_name(f".{path.name}.work.tif")
        self.tmp = temporary_path(path)
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

    def publish(self) -> Path:
        """Close the work file, copy it to a COG and move that into place."""
        self.dst.close()
        rasterio.shutil.copy(
            self.work, self.tmp, driver="COG", compress="deflate", overviews="auto"
        )
        self.work.unlink()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary files."""
        if not self.dst.closed:
            self.dst.close()
        self.work.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)


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
        self.legend = legend
        self.card = legend.card
        self.probabilities = probabilities
        count = 1 + (self.card.num_classes if probabilities else 0)
        self.raster = PatchRaster(path, grid, count, "float32" if probabilities else "uint8")
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
        self.raster.publish()
        write_category_names(self.path, [category_names(self.legend)])
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary files."""
        self.raster.abort()


def category_names(legend: Legend) -> dict[int, str]:
    """The legend's names by GeoTIFF class-band value."""
    return {e.value: e.name for e in legend.entries}


def write_category_names(path: Path, bands: Sequence[Mapping[int, str]]) -> None:
    """Write each band's category names (by pixel value) to GDAL's ``.aux.xml`` sidecar.

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
    tmp = sidecar.with_name(f".{sidecar.name}.part")
    tmp.write_text(ET.tostring(root, encoding="unicode"))
    os.replace(tmp, sidecar)
