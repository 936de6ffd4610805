"""``classify_change``: where the classes of two scenes of one place differ, patch by patch.

Both scenes are classified on one patch grid: the first scene's, with the second read
and warped onto it (``plan_scene(..., align_to=...)``), so a patch covers the same
ground at both dates. The first scene is read through the same warp onto its own grid,
so both are resampled alike and identical scenes give identical results (a plain
``classify`` of the first scene resamples differently: a unit in a few pixels, which
can tip a borderline patch into or out of Uncertain). The chunks of both runs go to
the engine together and pair up in chunk order, so memory stays bounded as for
``classify_scene``.

A patch is compared where it is classified in both scenes (``min_valid`` reached in
each); it is *changed* when its two map categories differ and neither is Uncertain.
Outputs (each written at a temporary path and moved into place when complete):

* GeoPackage: one polygon per patch classified in both, with ``from_class``,
  ``to_class``, ``from_score``, ``to_score`` (calibrated top-1 probabilities),
  ``changed`` and ``valid_fraction`` (the smaller of the two), styled for QGIS
  (changed patches filled, the others outlined).
* GeoTIFF: one pixel per patch, bands ``from_class``, ``to_class`` (class ids, 254
  Uncertain) and ``changed`` (0/1); 255 where a patch is not classified in both.
* ``<first output stem>.fromto.csv``: the from-to matrix in hectares, rows the
  BEFORE category, columns the AFTER one, over the categories present in either
  scene (Uncertain included). A patch counts its grid cell's area times the smaller
  of its two valid fractions (see ``areas``), so the matrix sums to the compared area.

Unlike ``classify_scene``, a change run keeps no journal: an interrupted run leaves no
output and is started over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
from rasterio.enums import ColorInterp
from tqdm.auto import tqdm

from rsscgeo.errors import OptionError, RunInterrupted, SceneError, signal_number
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.areas import SQUARE_METRES_PER_HECTARE, PatchAreas, write_csv
from rsscgeo.scene.engine import Engine
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import CLASS_NODATA, UNCERTAIN, UNCERTAIN_VALUE, Legend
from rsscgeo.scene.lock import lock_outputs
from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
from rsscgeo.scene.plan import ScenePlan, plan_scene, refuse_existing
from rsscgeo.scene.style import CHANGED_FIELD, change_qml
from rsscgeo.scene.writers import (
    GeoPackageLayer,
    PatchRaster,
    category_names,
    write_category_names,
)
from rsscgeo.sources import SceneLike

# The from-to table's top-left cell: rows are BEFORE categories, columns AFTER ones.
FROMTO_CORNER = "from/to"
CHANGED_NAMES = {0: "unchanged", 1: "changed"}


def fromto_path(output: Path) -> Path:
    """``<output stem>.fromto.csv`` beside ``output``."""
    return output.with_name(f"{output.stem}.fromto.csv")


@dataclass(frozen=True)
class ChangePlan:
    """Two classify plans on one patch grid, and where the change maps go.

    Attributes:
        before: The first scene's plan (its grid is the change map's).
        after: The second scene's plan, read onto ``before``'s grid.
        outputs: Where the change maps go (``overwrite`` honoured, ``resume`` not).
    """

    before: ScenePlan
    after: ScenePlan
    outputs: ClassifyOutputs

    @property
    def grid(self) -> PatchGrid:
        """The patch grid both scenes are classified on."""
        return self.before.grid

    @property
    def legend(self) -> Legend:
        """The map's categories (the same for both scenes)."""
        return self.before.legend

    @property
    def notes(self) -> list[str]:
        """The decisions of both plans, in words."""
        return [f"before: {n}" for n in self.before.notes] + [
            f"after: {n}" for n in self.after.notes
        ]

    @property
    def metadata(self) -> dict[str, str]:
        """What the outputs record: both scenes, and their STAC metadata prefixed."""
        metadata = {
            "before": ", ".join(map(str, self.before.reader.sources)),
            "after": ", ".join(map(str, self.after.reader.sources)),
        }
        for name, plan in (("before", self.before), ("after", self.after)):
            metadata.update({f"{name}_{k}": v for k, v in plan.metadata.items()})
        return metadata


def plan_change(
    before: Sequence[SceneLike],
    after: Sequence[SceneLike],
    loaded: LoadedModel,
    options: ClassifyOptions | None = None,
    outputs: ClassifyOutputs | None = None,
    *,
    say: Callable[[str], None] = lambda _: None,
) -> ChangePlan:
    """Check both scenes, the options and the outputs, and plan both runs on one grid.

    Args:
        before: The earlier scene (one mosaic of rasters or STAC items); its patch
            grid is the change map's.
        after: The later scene, read and warped onto ``before``'s grid.
        loaded: The model.
        options: How to read and classify both (``probabilities`` is not supported).
        outputs: A ``.gpkg`` and/or a ``.tif`` (``resume`` is not supported).
        say: Receives each decision, in words, prefixed ``before:`` or ``after:``.

    Raises:
        SceneError: If a scene cannot be used with this model, or AFTER does not
            overlap BEFORE.
        OptionError: If an option does not fit the scenes, the model or a change run.
        OutputError: If an output cannot be written where it was asked for.
        OutputExistsError: If an output exists and ``outputs.overwrite`` is not set.
    """
    options = options or ClassifyOptions()
    outputs = outputs or ClassifyOutputs()
    _check_change_options(loaded, options, outputs)
    first = _read_onto_own_grid(
        plan_scene(before, loaded, options, outputs, say=lambda n: say(f"before: {n}"))
    )
    say(f"before: {first.notes[-1]}")
    second = plan_scene(
        after, first.model, options, align_to=first.grid, say=lambda n: say(f"after: {n}")
    )
    # The aligned reader's grid is ``first.grid`` with the same patch and stride, and the
    # chunk side depends only on the grid and the options: the chunks pair up.
    assert second.grid == first.grid and second.chunk_side == first.chunk_side
    _check_overlap(first, second)
    return ChangePlan(first, second, outputs)


def _read_onto_own_grid(plan: ScenePlan) -> ScenePlan:
    """``plan`` reading its scene warped onto its own grid, as AFTER is read onto it.

    Resampled reads of a file on its own grid and warped reads differ by a unit in a
    few pixels (GDAL rounds differently), which moved scores of the bundled model by up
    to 0.05: read both scenes alike, so that identical scenes give identical results.
    """
    reader = replace(plan.reader, align_to=plan.grid)
    note = "read warped onto its own grid, as AFTER is, so both are resampled alike"
    return replace(
        plan, reader=reader, work=replace(plan.work, reader=reader), notes=[*plan.notes, note]
    )


def _check_change_options(
    loaded: LoadedModel, options: ClassifyOptions, outputs: ClassifyOutputs
) -> None:
    if loaded.card.task == "multilabel":
        raise OptionError(
            "change compares one class per patch; this model is multi-label",
            "use a single-label (multiclass) model.",
        )
    if options.probabilities:
        raise OptionError(
            "a change GeoTIFF holds from/to classes and changed, not probabilities",
            "leave probabilities unset (classify each scene for its probabilities).",
            cli_fix="drop --probabilities (classify each scene for its probabilities).",
        )
    if outputs.resume:
        raise OptionError(
            "change runs keep no journal to resume from",
            "leave resume unset; an interrupted run starts over.",
        )


def _check_overlap(before: ScenePlan, after: ScenePlan) -> None:
    """AFTER must cover some of BEFORE's grid, or no patch could be compared."""
    grid = before.grid
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.width, grid.height)
    xs, ys, _ = after.reader.dataset.bounds  # in BEFORE's CRS
    if xs.start >= right or xs.stop <= left or ys.start >= top or ys.stop <= bottom:
        raise SceneError(
            f"{after.reader.sources[0]} does not overlap {before.reader.sources[0]}; "
            "change compares two scenes of the same place."
        )


@dataclass
class ChangeSummary:
    """What a change run found, for the command's report.

    Attributes:
        grid: The patch grid (BEFORE's).
        outputs: The files written, the from-to table last.
        compared: Patches classified in both scenes.
        skipped: Patches not classified in one or both (below ``min_valid``, or
            outside a scene).
        changed: Compared patches whose categories differ, neither Uncertain.
        uncertain_below: The Uncertain threshold used (0: none).
        uncertain_source: Where that threshold came from, in words.
        categories: The legend's categories, the order of ``fromto``'s axes.
        fromto: Area in m² by BEFORE category (rows) and AFTER category (columns).
        seconds: Wall time of classifying and writing.
        notes: The plans' decisions and where the run ran, in words.
    """

    grid: PatchGrid
    outputs: list[Path]
    compared: int = 0
    skipped: int = 0
    changed: int = 0
    uncertain_below: float = 0.0
    uncertain_source: str = ""
    categories: list[str] = field(default_factory=list)
    fromto: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def compared_ha(self) -> float:
        """The compared area in hectares."""
        return float(self.fromto.sum()) / SQUARE_METRES_PER_HECTARE

    def transitions(self) -> list[tuple[str, str, float]]:
        """(from, to, hectares) of every change, largest first (Uncertain is no change)."""
        found = [
            (self.categories[i], self.categories[j], float(area) / SQUARE_METRES_PER_HECTARE)
            for (i, j), area in np.ndenumerate(self.fromto)
            if area > 0 and i != j and UNCERTAIN not in (self.categories[i], self.categories[j])
        ]
        return sorted(found, key=lambda t: -t[2])

    @property
    def changed_ha(self) -> float:
        """The changed area in hectares."""
        return sum(ha for _, _, ha in self.transitions())


def classify_change(
    before: Sequence[SceneLike],
    after: Sequence[SceneLike],
    loaded: LoadedModel,
    options: ClassifyOptions,
    outputs: ClassifyOutputs,
    engine: Engine,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ChangeSummary:
    """Classify ``before`` and ``after`` on one patch grid and map what changed.

    The same as ``run_change(plan_change(before, after, loaded, options, outputs),
    engine)``; plan first yourself to check the inputs before opening an engine.

    Raises:
        SceneError: If a scene or the options do not fit the model.
        OutputExistsError: If an output exists and ``outputs.overwrite`` is not set.
        OutputBusyError: If another run is writing one of the outputs.
        ClusterError: If the Dask cluster cannot run the tasks.
        RunInterrupted: If a signal stopped the run (nothing is written).
    """
    plan = plan_change(before, after, loaded, options, outputs, say=say)
    return run_change(plan, engine, progress=progress, say=say)


def run_change(
    plan: ChangePlan,
    engine: Engine,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ChangeSummary:
    """Execute a change plan on ``engine`` and write its outputs.

    Raises:
        OptionError: If the plan has no outputs.
        OutputExistsError: If an output appeared since planning and may not be replaced.
        OutputBusyError: If another run is writing one of the outputs.
        ClusterError: If the Dask cluster cannot run the tasks.
        RunInterrupted: If a signal stopped the run (no output is left behind).
    """
    outputs = plan.outputs
    paths = outputs.paths
    if not paths:
        raise OptionError("the plan has no outputs", "plan with ClassifyOutputs(...).")
    legend = plan.legend
    summary = ChangeSummary(
        plan.grid,
        list(paths),
        uncertain_below=legend.uncertain_below,
        uncertain_source=legend.source,
        categories=[e.name for e in legend.entries],
        notes=plan.notes,
    )
    summary.notes.append(f"running on a {engine.description}, model on {engine.device}")
    say(summary.notes[-1])
    with lock_outputs(paths):
        refuse_existing(outputs)  # again under the lock: another run may just have written
        start = time.perf_counter()
        try:
            _write(plan, engine, summary, progress)
        except KeyboardInterrupt as err:
            raise RunInterrupted(
                "interrupted; no change output was written (change runs keep no journal)",
                "call again to start over.",
                cli_fix="rerun to start over",
                signum=signal_number(err),
            ) from None
        summary.seconds = time.perf_counter() - start
    return summary


@dataclass(frozen=True)
class PatchPair:
    """One chunk's patches at both dates, compared.

    Attributes:
        chunk: The chunk.
        before: BEFORE's results.
        after: AFTER's results.
        from_values: BEFORE's map values (class ids, Uncertain 254, skipped 255).
        to_values: AFTER's map values.
        compared: Classified in both.
        changed: Compared, categories differ and neither is Uncertain.
        valid_fraction: The smaller of the two valid fractions.
    """

    chunk: Chunk
    before: ChunkResult
    after: ChunkResult
    from_values: npt.NDArray[np.intp]
    to_values: npt.NDArray[np.intp]
    compared: npt.NDArray[np.bool_]
    changed: npt.NDArray[np.bool_]
    valid_fraction: npt.NDArray[np.float32]

    @classmethod
    def compare(cls, before: ChunkResult, after: ChunkResult, legend: Legend) -> PatchPair:
        """Pair the two results of one chunk."""
        assert before.chunk == after.chunk
        from_values = legend.raster_values(before)
        to_values = legend.raster_values(after)
        compared = before.classified & after.classified
        certain = (from_values != UNCERTAIN_VALUE) & (to_values != UNCERTAIN_VALUE)
        changed = compared & certain & (from_values != to_values)
        valid = np.minimum(before.valid_fraction, after.valid_fraction)
        return cls(before.chunk, before, after, from_values, to_values, compared, changed, valid)


def _write(plan: ChangePlan, engine: Engine, summary: ChangeSummary, progress: bool) -> None:
    """Classify both scenes chunk by chunk into the writers; on failure, no output appears."""
    outputs = plan.outputs
    keys = [engine.install(plan.before.model), engine.install(plan.after.model)]
    fromto = FromTo(plan.grid, plan.legend)
    writers: list[ChangeGeoPackage | ChangeGeoTiff] = []
    try:
        if outputs.gpkg is not None:
            writers.append(ChangeGeoPackage(outputs.gpkg, plan.grid, plan.legend, plan.metadata))
        if outputs.geotiff is not None:
            writers.append(ChangeGeoTiff(outputs.geotiff, plan.grid, plan.legend, plan.metadata))
        for pair in _pairs(plan, engine, keys, progress):
            for writer in writers:
                writer.write(pair)
            fromto.add(pair)
            summary.compared += int(pair.compared.sum())
            summary.changed += int(pair.changed.sum())
        for writer in writers:
            writer.finish()
        summary.skipped = plan.grid.rows * plan.grid.cols - summary.compared
        summary.fromto = fromto.area
        summary.outputs.append(fromto.write(fromto_path(outputs.paths[0])))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


def _pairs(
    plan: ChangePlan, engine: Engine, keys: list[str], progress: bool
) -> Iterator[PatchPair]:
    """Both scenes' results, chunk by chunk in order, with one progress bar.

    Both runs keep their window of tasks in flight, so the cluster works on both dates
    at once; closing the runs (also on an error) cancels what is still in flight.
    """
    grid = plan.grid
    chunks = plan.before.chunks
    with tqdm(
        total=2 * grid.rows * grid.cols, unit="patch", desc="classifying", disable=not progress
    ) as bar:

        def arrived(result: ChunkResult) -> None:
            bar.update(result.chunk.nrows * result.chunk.ncols)

        def none(_: Chunk) -> None:
            return None

        before, after = (
            cast(Generator[ChunkResult, None, None], engine.run(p.work, key, chunks, none, arrived))
            for p, key in zip((plan.before, plan.after), keys, strict=True)
        )
        with closing(before), closing(after):
            for first, second in zip(before, after, strict=True):
                yield PatchPair.compare(first, second, plan.legend)


class FromTo:
    """Area in m² by BEFORE category and AFTER category, summed chunk by chunk."""

    def __init__(self, grid: PatchGrid, legend: Legend) -> None:
        self._areas = PatchAreas(grid, legend)
        self.names = self._areas.names
        self.area = np.zeros((len(self.names), len(self.names)))

    def add(self, pair: PatchPair) -> None:
        """Count one chunk's compared patches."""
        compared = pair.compared
        weight = self._areas.of(pair.chunk, compared, pair.valid_fraction)
        where = (
            self._areas.positions(pair.from_values[compared]),
            self._areas.positions(pair.to_values[compared]),
        )
        np.add.at(self.area, where, weight)

    def write(self, path: Path) -> Path:
        """Write the matrix in hectares over the categories present (temporary, then moved)."""
        present = (self.area.sum(axis=0) + self.area.sum(axis=1)) > 0
        keep = np.flatnonzero(present)
        rows: list[list[object]] = [[FROMTO_CORNER, *(self.names[i] for i in keep)]]
        for i in keep:
            hectares = self.area[i, keep] / SQUARE_METRES_PER_HECTARE
            rows.append([self.names[i], *(f"{ha:.4f}" for ha in hectares)])
        return write_csv(path, rows)


class ChangeGeoPackage:
    """One polygon per compared patch, styled to show the changed ones."""

    def __init__(
        self, path: Path, grid: PatchGrid, legend: Legend, metadata: dict[str, str]
    ) -> None:
        self.file = GeoPackageLayer(path, metadata)
        self.grid = grid
        self.names = np.full(CLASS_NODATA + 1, "", dtype=object)
        for entry in legend.entries:
            self.names[entry.value] = entry.name

    def write(self, pair: PatchPair) -> None:
        """Append the chunk's compared patches."""
        chunk = pair.chunk
        rows, cols = np.nonzero(pair.compared)
        keep = (rows, cols)
        self.file.append(
            self._frame(
                rows + chunk.row,
                cols + chunk.col,
                pair.from_values[keep],
                pair.to_values[keep],
                pair.before.scores[keep],
                pair.after.scores[keep],
                pair.changed[keep],
                pair.valid_fraction[keep],
            )
        )

    def finish(self) -> Path:
        """Style the layer and move it into place."""
        ints, scores = np.empty(0, np.intp), np.empty(0, np.float32)
        schema = self._frame(ints, ints, ints, ints, scores, scores, ints != 0, scores)
        return self.file.finish(schema, change_qml(), "rsscgeo change")

    def abort(self) -> None:
        """Remove the temporary file."""
        self.file.abort()

    def _frame(
        self,
        rows: npt.NDArray[np.intp],
        cols: npt.NDArray[np.intp],
        from_values: npt.NDArray[np.intp],
        to_values: npt.NDArray[np.intp],
        from_scores: npt.NDArray[np.float32],
        to_scores: npt.NDArray[np.float32],
        changed: npt.NDArray[np.bool_],
        valid: npt.NDArray[np.floating],
    ) -> gpd.GeoDataFrame:
        columns: dict[str, Any] = {
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "from_class": self.names[from_values].astype(str),
            "to_class": self.names[to_values].astype(str),
            "from_score": from_scores.astype(np.float32),
            "to_score": to_scores.astype(np.float32),
            CHANGED_FIELD: changed.astype(bool),
            "valid_fraction": valid.astype(np.float32),
        }
        boxes = [self.grid.patch_bounds(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
        geometry = shapely.box(*np.array(boxes).T) if boxes else []
        return gpd.GeoDataFrame(pd.DataFrame(columns), geometry=geometry, crs=self.grid.crs)


class ChangeGeoTiff:
    """One pixel per patch: bands from class, to class and changed (0/1); 255 elsewhere."""

    def __init__(
        self, path: Path, grid: PatchGrid, legend: Legend, metadata: dict[str, str]
    ) -> None:
        self.path = path
        self.legend = legend
        self.metadata = metadata
        self.raster = PatchRaster(path, grid, 3, "uint8")
        # Three 8-bit bands would otherwise be tagged red, green and blue.
        self.raster.dst.colorinterp = [
            ColorInterp.gray,
            ColorInterp.undefined,
            ColorInterp.undefined,
        ]

    def write(self, pair: PatchPair) -> None:
        """Write the chunk's block of pixels."""
        bands = np.stack([pair.from_values, pair.to_values, pair.changed])
        self.raster.write(np.where(pair.compared, bands, CLASS_NODATA), pair.chunk)

    def finish(self) -> Path:
        """Describe the bands, publish the COG and name the categories."""
        dst = self.raster.dst
        for band, name in enumerate(("from_class", "to_class", CHANGED_FIELD), start=1):
            dst.set_band_description(band, name)
        dst.update_tags(
            classes=",".join(self.legend.card.class_names),
            uncertain_below=f"{self.legend.uncertain_below:g}",
            **self.metadata,
        )
        self.raster.publish()
        names = category_names(self.legend)
        write_category_names(self.path, [names, names, CHANGED_NAMES])
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary files."""
        self.raster.abort()
