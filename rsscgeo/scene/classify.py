"""``classify_scene``: large-scene classification from files to map outputs.

A run is planned first (``plan.plan_scene``: every check, every decision), then
executed here (``run_plan``).

The scene is read through TorchGeo in chunks of whole patches; each chunk is one Dask
task (read, cut into patches, classify in batches) on an embedded or existing Dask
cluster (see ``engine``). Tasks return only small per-patch arrays, which the client
journals as they arrive and streams to the writers in chunk order, so memory stays
bounded by a window of chunks however large the scene, and the outputs do not depend
on the number of workers or on interruptions. Uncertain patches (see ``legend``) are
decided as results are written, so the journal holds only probabilities.
"""

from __future__ import annotations

import errno
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rsscgeo.errors import OptionError, OutputError, RunInterrupted
from rsscgeo.hierarchy import CLASS_NODATA, Level
from rsscgeo.modelfile import LoadedModel
from rsscgeo.progress import progress_bar
from rsscgeo.scene.areas import AreaTally, ClassArea, areas_path, write_areas
from rsscgeo.scene.engine import Engine
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.journal import Journal, fingerprint, journal_dir
from rsscgeo.scene.legend import Legend
from rsscgeo.scene.lock import lock_outputs
from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
from rsscgeo.scene.plan import ScenePlan, plan_scene, refuse_existing
from rsscgeo.scene.staging import Staging
from rsscgeo.scene.style import to_label_qml
from rsscgeo.scene.suggest import (
    TO_LABEL_LAYER,
    CandidatePool,
    pool_size,
    suggest,
    suggest_frame,
)
from rsscgeo.scene.writers import GeoPackageWriter, GeoTiffWriter, MapContext
from rsscgeo.sources import SceneLike
from rsscgeo.stopping import STOP, stop_signal

Writer = GeoPackageWriter | GeoTiffWriter


@dataclass
class ClassifySummary:
    """What a run did, for the command's report.

    Attributes:
        grid: The patch grid.
        outputs: The files written.
        classified: Patches classified (Uncertain ones included).
        skipped: Patches below ``min_valid``.
        uncertain: Classified patches mapped as Uncertain.
        by_family: Classified patches named by their family (back-off), not a class.
        backoff: Whether doubtful patches could be named by their family.
        uncertain_below: The Uncertain threshold used (0: none).
        uncertain_source: Where that threshold came from, in words (``Legend.source``).
        per_class: Patches per name on the map (classes and families), Uncertain ones
            left out.
        areas: Patches, area and mean score per category (Uncertain included), also
            written to ``<first output stem>.areas.csv``.
        class_map: One value per patch (rows x cols): the GeoTIFF class band's values
            (class ids, Uncertain, nodata where skipped).
        suggested: Patches in the GeoPackage's ``to_label`` layer (``--suggest``).
        seconds: Wall time of the classification.
        notes: The plan's decisions and where the run ran, in words.
    """

    grid: PatchGrid
    outputs: list[Path]
    classified: int = 0
    skipped: int = 0
    uncertain: int = 0
    by_family: int = 0
    backoff: bool = False
    uncertain_below: float = 0.0
    uncertain_source: str = ""
    per_class: Counter[str] = field(default_factory=Counter)
    areas: list[ClassArea] = field(default_factory=list)
    class_map: npt.NDArray[np.uint8] = field(default_factory=lambda: np.empty((0, 0), np.uint8))
    suggested: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def classify_scene(
    scenes: Sequence[SceneLike],
    loaded: LoadedModel,
    options: ClassifyOptions,
    outputs: ClassifyOutputs,
    engine: Engine,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ClassifySummary:
    """Classify ``scenes`` (one mosaic) patch by patch into ``outputs`` on ``engine``.

    The same as ``run_plan(plan_scene(scenes, loaded, options, outputs), engine)``; plan
    first yourself to check several jobs before opening an engine (as the CLI does).

    Raises:
        SceneError: If the scene or the options do not fit the model.
        OutputExistsError: If an output exists and ``outputs.overwrite`` is not set.
        OutputBusyError: If another run is writing one of the outputs.
        ClusterError: If the Dask cluster cannot run the tasks.
        RunInterrupted: If a signal stopped the run (its journal is kept for resuming).
    """
    plan = plan_scene(scenes, loaded, options, outputs, say=say)
    return run_plan(plan, engine, progress=progress, say=say)


def run_plan(
    plan: ScenePlan,
    engine: Engine,
    *,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ClassifySummary:
    """Execute a plan on ``engine`` and write its outputs.

    Finished chunks are journaled beside the first output, so ``outputs.resume``
    continues an interrupted run; outputs are locked for the run and appear only when
    complete. Probabilities are calibrated with the card's temperature; patches below
    the legend's threshold are written as Uncertain. A stop request
    (``stopping.STOP``, or ``KeyboardInterrupt``) is honoured between chunks and up to
    the moment the finished outputs are moved into place.

    Raises:
        OptionError: If the plan has no outputs.
        OutputExistsError: If an output appeared since planning and may not be replaced.
        OutputBusyError: If another run is writing one of the outputs.
        OutputError: If the disk fills up (the journal is kept for resuming).
        ClusterError: If the Dask cluster cannot run the tasks.
        RunInterrupted: If a signal stopped the run (the journal is kept for resuming).
    """
    if plan.outputs is None:
        raise OptionError("the plan has no outputs", "plan with ClassifyOutputs(...).")
    outputs = plan.outputs
    paths = outputs.paths
    legend = plan.legend
    summary = ClassifySummary(
        plan.grid,
        paths,
        uncertain_below=legend.uncertain_below,
        uncertain_source=legend.source,
        notes=list(plan.notes),
        backoff=legend.hierarchical,
    )
    summary.notes.append(f"running on a {engine.description}, model on {engine.device}")
    say(summary.notes[-1])
    chunks = plan.chunks
    with lock_outputs(paths):
        # Checked again under the lock: a run that just finished has written its outputs.
        refuse_existing(outputs)
        folder = journal_dir(paths[0])
        try:
            journal = Journal(
                folder,
                fingerprint(plan.reader.sources, plan.model.identity, plan.reading()),
                resume=outputs.resume,
                restart=outputs.overwrite,
            )
            start = time.perf_counter()
            _write(plan, engine, journal, chunks, summary, progress)
        except (KeyboardInterrupt, RunInterrupted) as err:
            raise RunInterrupted(
                f"interrupted after {_journaled(folder)} of {len(chunks)} chunks",
                "call again with ClassifyOutputs(resume=True) to continue.",
                cli_fix="rerun with --resume to continue",
                signum=stop_signal(err),
            ) from None
        except Exception as err:
            if not _disk_full(err):
                raise
            raise OutputError(
                f"no space left on the device of {paths[0].parent} ({_journaled(folder)} of "
                f"{len(chunks)} chunks are journaled; nothing was written at the output path)",
                "free some space and call again with ClassifyOutputs(resume=True).",
                cli_fix="free some space and rerun with --resume.",
            ) from None
        journal.remove()
        summary.seconds = time.perf_counter() - start
    return summary


def _write(
    plan: ScenePlan,
    engine: Engine,
    journal: Journal,
    chunks: list[Chunk],
    summary: ClassifySummary,
    progress: bool,
) -> None:
    """Run the chunks and stream them into the writers; on failure, no output appears.

    Stops are honoured between chunks and once more after every file is complete,
    just before they are all moved into place.
    """
    assert plan.outputs is not None
    STOP.check()
    key = engine.install(plan.model)
    tally = AreaTally(plan.grid, plan.legend)
    summary.class_map = np.full((plan.grid.rows, plan.grid.cols), CLASS_NODATA, np.uint8)
    staging = Staging()
    writers: list[Writer] = []
    wanted = plan.outputs.suggest
    pool = CandidatePool(pool_size(wanted), plan.outputs.seed) if wanted else None
    try:
        context = MapContext(staging, plan.grid, plan.legend, plan.metadata)
        if plan.outputs.gpkg is not None:
            gpkg = GeoPackageWriter(plan.outputs.gpkg, context)
            writers.append(gpkg)
        if plan.outputs.geotiff is not None:
            probabilities = plan.options.probabilities
            writers.append(
                GeoTiffWriter(plan.outputs.geotiff, context, probabilities=probabilities)
            )
        for result in _results(engine, plan, key, chunks, journal, progress):
            STOP.check()
            for writer in writers:
                writer.write(result)
            _count(summary, result, plan.legend)
            tally.add(result)
            if pool is not None:
                pool.add(result)
        for writer in writers:
            writer.finish()
        if pool is not None:
            summary.suggested = _add_suggestions(plan, pool, gpkg)
        summary.areas = tally.table()
        areas = write_areas(staging, areas_path(plan.outputs.paths[0]), summary.areas)
        STOP.check()  # the last safe point: from here on the run completes
        staging.publish()
    except BaseException:  # temporary files go; the journal stays for resuming
        for writer in writers:
            writer.abort()
        staging.discard()
        raise
    summary.outputs.append(areas)


def _add_suggestions(plan: ScenePlan, pool: CandidatePool, gpkg: GeoPackageWriter) -> int:
    """Pick the patches worth labelling and write them as the layer ``to_label``."""
    assert plan.outputs is not None
    picks = suggest(pool, plan.outputs.suggest, plan, plan.network or plan.model)
    card = plan.model.card
    qml = to_label_qml([*card.class_names, *card.parent_names])
    frame = suggest_frame(picks, plan.grid)
    gpkg.file.add_layer(TO_LABEL_LAYER, frame, qml, "rsscgeo patches to label")
    return len(frame)


def _journaled(folder: Path) -> int:
    return sum(1 for _ in folder.glob("chunk-*.npz"))


# How a full disk reads when GDAL or SQLite rather than Python reports it.
DISK_FULL_MESSAGES = ("no space left", "disk is full", "free disk space available")


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return any(text in str(err).lower() for text in DISK_FULL_MESSAGES)


def _results(
    engine: Engine,
    plan: ScenePlan,
    key: str,
    chunks: list[Chunk],
    journal: Journal,
    progress: bool,
) -> Iterator[ChunkResult]:
    """Chunk results in order, from the journal or the engine, with a progress bar."""
    grid = plan.grid
    with progress_bar(grid.rows * grid.cols, "classifying", "patch", disable=not progress) as bar:

        def finished(chunk: Chunk) -> ChunkResult | None:
            result = journal.load(chunk)
            if result is not None:
                bar.update(chunk.nrows * chunk.ncols)
            return result

        def arrived(result: ChunkResult) -> None:
            journal.save(result)
            bar.update(result.chunk.nrows * result.chunk.ncols)

        yield from engine.run(plan.work, key, chunks, finished, arrived)


def _count(summary: ClassifySummary, result: ChunkResult, legend: Legend) -> None:
    done = result.classified
    labels = legend.label(result.probabilities)
    uncertain = done & (labels.level == Level.UNCERTAIN)
    summary.classified += int(done.sum())
    summary.skipped += int((~done).sum())
    summary.uncertain += int(uncertain.sum())
    summary.by_family += int((done & (labels.level == Level.PARENT)).sum())
    names = legend.names
    summary.per_class.update(names[v] for v in labels.values[done & ~uncertain])
    chunk = result.chunk
    rows, cols = (
        slice(chunk.row, chunk.row + chunk.nrows),
        slice(chunk.col, chunk.col + chunk.ncols),
    )
    summary.class_map[rows, cols] = labels.values
