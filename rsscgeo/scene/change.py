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
each); it is *changed* when what the two maps say differs and neither is Uncertain.
With a class hierarchy the two answers are compared at the coarser of their levels:
two classes are compared as classes, but when either date names only a family (its
class was doubtful), the families are compared, so Pond -> Lake is a change only when
both dates are sure of the class, and Water -> Pond is none.
Outputs (each written at a temporary path and moved into place when complete):

* GeoPackage: one polygon per patch classified in both, with ``from_class``,
  ``to_class``, ``from_score``, ``to_score`` (the probabilities of what each map
  says), ``compared_at`` (``leaf`` or ``parent``), ``changed`` and ``valid_fraction``
  (the smaller of the two), styled for QGIS
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

from rsscgeo.errors import OptionError, RunInterrupted, SceneError
from rsscgeo.hierarchy import CLASS_NODATA, Labels, Level
from rsscgeo.modelfile import LoadedModel
from rsscgeo.progress import progress_bar
from rsscgeo.scene.areas import SQUARE_METRES_PER_HECTARE, PatchAreas, write_csv
from rsscgeo.scene.engine import Engine
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import Legend
from rsscgeo.scene.lock import lock_outputs
from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
from rsscgeo.scene.plan import ScenePlan, plan_scene, refuse_existing
from rsscgeo.scene.staging import Staging
from rsscgeo.scene.style import CHANGED_FIELD, change_qml
from rsscgeo.scene.writers import (
    GeoPackageLayer,
    MapContext,
    PatchRaster,
    category_names,
    write_category_names,
)
from rsscgeo.sources import SceneLike
from rsscgeo.stopping import STOP, stop_signal

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
        changes: The same over changed patches only (a family named at one date and
            one of its classes at the other is no change).
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
    changes: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
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
            for (i, j), area in np.ndenumerate(self.changes)
            if area > 0
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
        except (KeyboardInterrupt, RunInterrupted) as err:
            raise RunInterrupted(
                "interrupted; no change output was written (change runs keep no journal)",
                "call again to start over.",
                cli_fix="rerun to start over",
                signum=stop_signal(err),
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
        from_labels: What BEFORE's map says (values: class ids, family ids, Uncertain
            254, skipped 255).
        to_labels: What AFTER's map says.
        compared: Classified in both.
        by_family: Compared by family: either date names only a family.
        changed: Compared, neither Uncertain, and the classes (or, ``by_family``, the
            families) differ.
        valid_fraction: The smaller of the two valid fractions.
    """

    chunk: Chunk
    before: ChunkResult
    after: ChunkResult
    from_labels: Labels
    to_labels: Labels
    compared: npt.NDArray[np.bool_]
    by_family: npt.NDArray[np.bool_]
    changed: npt.NDArray[np.bool_]
    valid_fraction: npt.NDArray[np.float32]

    @property
    def from_values(self) -> npt.NDArray[np.intp]:
        """BEFORE's map values."""
        return self.from_labels.values

    @property
    def to_values(self) -> npt.NDArray[np.intp]:
        """AFTER's map values."""
        return self.to_labels.values

    @classmethod
    def compare(cls, before: ChunkResult, after: ChunkResult, legend: Legend) -> PatchPair:
        """Pair the two results of one chunk."""
        assert before.chunk == after.chunk
        first, second = legend.label(before.probabilities), legend.label(after.probabilities)
        compared = before.classified & after.classified
        certain = (first.level != Level.UNCERTAIN) & (second.level != Level.UNCERTAIN)
        by_family = (first.level == Level.PARENT) | (second.level == Level.PARENT)
        differ = np.where(by_family, first.parent != second.parent, first.values != second.values)
        changed = compared & certain & differ
        valid = np.minimum(before.valid_fraction, after.valid_fraction)
        return cls(before.chunk, before, after, first, second, compared, by_family, changed, valid)


def _write(plan: ChangePlan, engine: Engine, summary: ChangeSummary, progress: bool) -> None:
    """Classify both scenes chunk by chunk into the writers; on failure, no output appears."""
    outputs = plan.outputs
    STOP.check()
    keys = [engine.install(plan.before.model), engine.install(plan.after.model)]
    fromto = FromTo(plan.grid, plan.legend)
    staging = Staging()
    writers: list[ChangeGeoPackage | ChangeGeoTiff] = []
    try:
        context = MapContext(staging, plan.grid, plan.legend, plan.metadata)
        if outputs.gpkg is not None:
            writers.append(ChangeGeoPackage(outputs.gpkg, context))
        if outputs.geotiff is not None:
            writers.append(ChangeGeoTiff(outputs.geotiff, context))
        for pair in _pairs(plan, engine, keys, progress):
            STOP.check()
            for writer in writers:
                writer.write(pair)
            fromto.add(pair)
            summary.compared += int(pair.compared.sum())
            summary.changed += int(pair.changed.sum())
        for writer in writers:
            writer.finish()
        summary.skipped = plan.grid.rows * plan.grid.cols - summary.compared
        summary.fromto = fromto.area
        summary.changes = fromto.changed
        table = fromto.write(staging, fromto_path(outputs.paths[0]))
        STOP.check()  # the last safe point: from here on the run completes
        staging.publish()
    except BaseException:
        for writer in writers:
            writer.abort()
        staging.discard()
        raise
    summary.outputs.append(table)


def _pairs(
    plan: ChangePlan, engine: Engine, keys: list[str], progress: bool
) -> Iterator[PatchPair]:
    """Both scenes' results, chunk by chunk in order, with one progress bar.

    Both runs keep their window of tasks in flight, so the cluster works on both dates
    at once; closing the runs (also on an error) cancels what is still in flight.
    """
    grid = plan.grid
    chunks = plan.before.chunks
    with progress_bar(
        2 * grid.rows * grid.cols, "classifying", "patch", disable=not progress
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
        self.changed = np.zeros_like(self.area)

    def add(self, pair: PatchPair) -> None:
        """Count one chunk's compared patches, and apart its changed ones."""
        for matrix, patches in ((self.area, pair.compared), (self.changed, pair.changed)):
            weight = self._areas.of(pair.chunk, patches, pair.valid_fraction)
            where = (
                self._areas.positions(pair.from_values[patches]),
                self._areas.positions(pair.to_values[patches]),
            )
            np.add.at(matrix, where, weight)

    def write(self, staging: Staging, path: Path) -> Path:
        """Stage the matrix in hectares over the categories present at ``path``."""
        present = (self.area.sum(axis=0) + self.area.sum(axis=1)) > 0
        keep = np.flatnonzero(present)
        rows: list[list[object]] = [[FROMTO_CORNER, *(self.names[i] for i in keep)]]
        for i in keep:
            hectares = self.area[i, keep] / SQUARE_METRES_PER_HECTARE
            rows.append([self.names[i], *(f"{ha:.4f}" for ha in hectares)])
        return write_csv(staging, path, rows)


class ChangeGeoPackage:
    """One polygon per compared patch, styled to show the changed ones."""

    def __init__(self, path: Path, context: MapContext) -> None:
        self.file = GeoPackageLayer(path, context.staging, context.metadata)
        self.grid = context.grid
        self.names = np.full(CLASS_NODATA + 1, "", dtype=object)
        for entry in context.legend.entries:
            self.names[entry.value] = entry.name

    def write(self, pair: PatchPair) -> None:
        """Append the chunk's compared patches."""
        self.file.append(self._frame(pair))

    def finish(self) -> None:
        """Style the layer and stage its style beside it."""
        self.file.finish(self._frame(None), change_qml(), "rsscgeo change")

    def abort(self) -> None:
        """Nothing is open between chunks; the staged files go with the run's staging."""

    def _frame(self, pair: PatchPair | None) -> gpd.GeoDataFrame:
        """The compared patches of ``pair`` (``None``: no rows, the layer's schema)."""
        if pair is None:
            rows = cols = np.empty(0, np.intp)
            keep = np.empty(0, bool)
            first = second = Labels(*(np.empty(0, t) for t in (int, np.int8, int, int, np.float32)))
            by_family: npt.NDArray[Any] = np.empty(0, bool)
            changed: npt.NDArray[Any] = np.empty(0, bool)
            valid: npt.NDArray[Any] = np.empty(0, np.float32)
        else:
            keep = pair.compared
            rows, cols = np.nonzero(keep)
            rows, cols = rows + pair.chunk.row, cols + pair.chunk.col
            first, second = pair.from_labels, pair.to_labels
            by_family, changed, valid = pair.by_family, pair.changed, pair.valid_fraction
        columns: dict[str, Any] = {
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "from_class": self.names[first.values[keep]].astype(str),
            "to_class": self.names[second.values[keep]].astype(str),
            "from_score": first.score[keep].astype(np.float32),
            "to_score": second.score[keep].astype(np.float32),
            "compared_at": np.where(by_family[keep].astype(bool), "parent", "leaf").astype(str),
            CHANGED_FIELD: changed[keep].astype(bool),
            "valid_fraction": valid[keep].astype(np.float32),
        }
        boxes = [self.grid.patch_bounds(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
        geometry = shapely.box(*np.array(boxes).T) if boxes else []
        return gpd.GeoDataFrame(pd.DataFrame(columns), geometry=geometry, crs=self.grid.crs)


class ChangeGeoTiff:
    """One pixel per patch: bands from class, to class and changed (0/1); 255 elsewhere."""

    def __init__(self, path: Path, context: MapContext) -> None:
        self.path = path
        self.staging = context.staging
        self.legend = context.legend
        self.metadata = dict(context.metadata)
        self.raster = PatchRaster(path, context.staging, context.grid, 3, "uint8")
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

    def finish(self) -> None:
        """Describe the bands, make the COG and stage the category names."""
        dst = self.raster.dst
        for band, name in enumerate(("from_class", "to_class", CHANGED_FIELD), start=1):
            dst.set_band_description(band, name)
        dst.update_tags(
            classes=",".join(self.legend.mapped_names),  # by from/to band value
            uncertain_below=f"{self.legend.uncertain_below:g}",
            **self.metadata,
        )
        self.raster.finish()
        names = category_names(self.legend)
        write_category_names(self.staging, self.path, [names, names, CHANGED_NAMES])

    def abort(self) -> None:
        """Close and remove the work file."""
        self.raster.abort()
