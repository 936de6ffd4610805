"""``classify_scene``: large-scene classification from files to map outputs.

The scene is read through TorchGeo in chunks of whole patches; each chunk is one Dask
task (read, cut into patches, classify in batches) on an embedded or existing Dask
cluster (see ``engine``). Tasks return only small per-patch arrays, which the client
journals as they arrive and streams to the writers in chunk order, so memory stays
bounded by a window of chunks however large the scene, and the outputs do not depend
on the number of workers or on interruptions. Uncertain patches (see ``legend``) are
decided as results are written, so the journal holds only probabilities.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rsscgeo.errors import OutputExistsError, SceneError
from rsscgeo.modelfile import LoadedModel
from rsscgeo.outputs import check_output_folder
from rsscgeo.scene.engine import Engine, open_engine
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import (
    ChunkResult,
    Preprocess,
    classify_chunk,
    prefers_channels_last,
)
from rsscgeo.scene.journal import Journal, fingerprint, journal_dir
from rsscgeo.scene.legend import UNCERTAIN_VALUE, Legend
from rsscgeo.scene.lock import lock_outputs
from rsscgeo.scene.plan import ScenePlan, plan_scene
from rsscgeo.scene.reader import SceneReader
from rsscgeo.scene.writers import GeoPackageWriter, GeoTiffWriter

# Chunks are at most this many pixels on a side by default: large reads, a few hundred
# patches each, a few tens of MB per task in flight...
CHUNK_PIXELS = 2048
# ...and small enough that a scene makes at least this many chunks, so that several
# workers share even a small scene, but never under MIN_SIDE patches a side (each task
# costs a few ms of scheduling and a read). None depends on the worker count, so a run
# can be resumed on another cluster.
MIN_CHUNKS = 16
MIN_SIDE = 4


@dataclass
class ClassifySummary:
    """What a run did, for the command's report.

    Attributes:
        classified: Patches classified (Uncertain ones included).
        skipped: Patches below ``min_valid``.
        uncertain: Classified patches mapped as Uncertain.
        uncertain_below: The Uncertain threshold used (0: none).
        uncertain_source: Where that threshold came from, in words (``Legend.source``).
        per_class: Patches per class, Uncertain ones left out.
    """

    grid: PatchGrid
    outputs: list[Path]
    classified: int = 0
    skipped: int = 0
    uncertain: int = 0
    uncertain_below: float = 0.0
    uncertain_source: str = ""
    per_class: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def classify_scene(
    scenes: list[Path],
    loaded: LoadedModel,
    *,
    gpkg: Path | None = None,
    geotiff: Path | None = None,
    patch_size: int | None = None,
    stride: int | None = None,
    bands: list[int] | None = None,
    gsd: float | None = None,
    min_valid: float = 0.5,
    batch_size: int = 64,
    chunk_pixels: int | None = None,
    workers: int | None = None,
    processes: bool = False,
    scheduler: str | None = None,
    engine: Engine | None = None,
    device: str = "auto",
    probabilities: bool = False,
    tta: bool = False,
    uncertain_below: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    model_path: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ClassifySummary:
    """Classify ``scenes`` (one mosaic) patch by patch and write the requested outputs.

    Each task reads a chunk of whole patches about ``chunk_pixels`` on a side
    (default: see ``chunk_side``). Tasks run on ``engine`` when given (several scenes
    can share one), else on a cluster opened for this call from ``scheduler``,
    ``workers``, ``processes`` and ``device`` (see ``engine.open_engine``). Finished
    chunks are journaled beside the first output; ``resume`` continues an interrupted
    run from that journal (``model_path`` goes into its fingerprint). Outputs are
    locked for the run.

    Probabilities are calibrated with the card's temperature and, with ``tta``,
    averaged over the 8 dihedral transforms of each patch. Patches whose top-1
    probability is below ``uncertain_below`` (default: the card's calibration; 0
    disables it; never for multi-label models) are written as Uncertain.

    Raises:
        SceneError: If the scene or the options do not fit the model.
        OutputExistsError: If an output exists and ``overwrite`` is not set.
        OutputBusyError: If another run is writing one of the outputs.
        ClusterError: If the Dask cluster cannot be reached or cannot run the tasks.
    """
    outputs = [p for p in (gpkg, geotiff) if p is not None]
    if not outputs:
        raise SceneError("no output requested; pass --out labels.gpkg and/or --out labels.tif.")
    for path in outputs:
        _check_output(path)
    card = loaded.card
    legend = Legend.for_card(card, uncertain_below)
    if geotiff is not None and card.num_classes > UNCERTAIN_VALUE:
        raise SceneError(
            f"the model has {card.num_classes} classes; a GeoTIFF class band holds at most "
            f"{UNCERTAIN_VALUE}; write a .gpkg instead."
        )
    plan = plan_scene(
        scenes, loaded, patch_size=patch_size, stride=stride, bands=bands, gsd=gsd, say=say
    )
    grid, scaling, notes = plan.grid, plan.scaling, plan.notes
    side = chunk_side(grid, chunk_pixels)
    options = {
        "patch": grid.patch,
        "stride": grid.stride,
        "bands": list(plan.band_indexes),
        "resolution": list(plan.reader.resolution),
        "min_valid": min_valid,
        "scaling": [scaling.low, scaling.high],
        "chunk_side": side,
        "tta": tta,  # the Uncertain threshold is applied on writing, so it is not here
    }
    summary = ClassifySummary(
        grid,
        outputs,
        uncertain_below=legend.uncertain_below,
        uncertain_source=legend.source,
        notes=notes,
    )
    if tta:
        notes.append("test-time augmentation: probabilities averaged over 8 rotations/flips")
        say(notes[-1])
    with ExitStack() as stack:
        stack.enter_context(lock_outputs(outputs))
        # Checked under the lock: a run that just finished has written its outputs. A
        # run being resumed may have moved some into place before it was killed.
        resuming = resume and journal_dir(outputs[0]).exists()
        for path in outputs:
            if path.exists() and not (overwrite or resuming):
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
        if engine is None:
            engine = stack.enter_context(
                open_engine(scheduler, workers=workers, processes=processes, device=device)
            )
        notes.append(f"running on a {engine.description}, model on {engine.device}")
        say(notes[-1])
        journal = Journal(
            journal_dir(outputs[0]), fingerprint(scenes, model_path, options), resume=resume
        )
        work = ChunkWork.for_plan(plan, loaded, min_valid=min_valid, batch_size=batch_size, tta=tta)
        key = engine.install(loaded)
        chunks = list(grid.chunks(side))
        start = time.perf_counter()
        writers: list[GeoPackageWriter | GeoTiffWriter] = []
        try:
            if gpkg is not None:
                writers.append(GeoPackageWriter(gpkg, grid, legend))
            if geotiff is not None:
                writers.append(GeoTiffWriter(geotiff, grid, legend, probabilities))
            for result in _results(engine, work, key, chunks, journal, progress):
                for writer in writers:
                    writer.write(result)
                _count(summary, result, legend)
            for writer in writers:
                writer.finish()
        except BaseException:  # temporary files go; the journal stays for --resume
            for writer in writers:
                writer.abort()
            raise
        journal.remove()
        summary.seconds = time.perf_counter() - start
    return summary


def _results(
    engine: Engine,
    work: ChunkWork,
    key: str,
    chunks: list[Chunk],
    journal: Journal,
    progress: bool,
) -> Iterator[ChunkResult]:
    """Chunk results in order, from the journal or the engine, with a progress bar."""
    grid = work.grid
    with tqdm(
        total=grid.rows * grid.cols, unit="patch", desc="classifying", disable=not progress
    ) as bar:

        def finished(chunk: Chunk) -> ChunkResult | None:
            result = journal.load(chunk)
            if result is not None:
                bar.update(chunk.nrows * chunk.ncols)
            return result

        def arrived(result: ChunkResult) -> None:
            journal.save(result)
            bar.update(result.chunk.nrows * result.chunk.ncols)

        yield from engine.run(work, key, chunks, finished, arrived)


@dataclass(frozen=True)
class ChunkWork:
    """What every chunk task needs besides the model; the task is ``__call__``.

    Small and model-free, so it ships to Dask workers cheaply; each worker holds the
    model itself (see ``engine.ModelPlugin``).
    """

    reader: SceneReader
    grid: PatchGrid
    preprocess: Preprocess
    min_valid: float
    batch_size: int
    tta: bool = False

    @classmethod
    def for_plan(
        cls,
        plan: ScenePlan,
        loaded: LoadedModel,
        *,
        min_valid: float,
        batch_size: int,
        tta: bool = False,
    ) -> ChunkWork:
        """The work for a planned scene and ``loaded`` (see ``prepare_model``)."""
        preprocess = Preprocess.build(
            loaded.card,
            plan.scaling,
            plan.raw_dtype,
            channels_last=prefers_channels_last(loaded.model),
        )
        return cls(plan.reader, plan.grid, preprocess, min_valid, batch_size, tta)

    def __call__(self, chunk: Chunk, loaded: LoadedModel) -> ChunkResult:
        """Read, cut and classify one chunk."""
        values, valid = self.reader.read(self.grid, chunk)
        return classify_chunk(
            loaded,
            values,
            valid,
            self.grid,
            chunk,
            preprocess=self.preprocess,
            min_valid=self.min_valid,
            batch_size=self.batch_size,
            tta=self.tta,
        )


def chunk_side(grid: PatchGrid, chunk_pixels: int | None = None) -> int:
    """Patches per chunk side for ``grid``.

    ``chunk_pixels`` if given; else up to ``CHUNK_PIXELS``, small enough for
    ``MIN_CHUNKS`` chunks, and at least ``MIN_SIDE``.
    """
    if chunk_pixels:
        return max(1, chunk_pixels // grid.stride)
    spread = math.isqrt(grid.rows * grid.cols // MIN_CHUNKS)
    return max(1, min(CHUNK_PIXELS // grid.stride, max(MIN_SIDE, spread)))


def _count(summary: ClassifySummary, result: ChunkResult, legend: Legend) -> None:
    done = result.classified
    uncertain = legend.uncertain(result.scores)
    summary.classified += int(done.sum())
    summary.skipped += int((~done).sum())
    summary.uncertain += int(uncertain.sum())
    names = legend.card.class_names
    summary.per_class.update(names[i] for i in result.class_ids[done & ~uncertain])


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in (".gpkg", ".tif", ".tiff"):
        raise SceneError(f"output {path} must end in .gpkg (polygons) or .tif (raster).")
    check_output_folder(path.parent, "--out", create=False)
