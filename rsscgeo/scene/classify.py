"""``classify_scene``: large-scene classification from files to map outputs.

The scene is read through TorchGeo in chunks of whole patches; each chunk is one Dask
task (read, cut into patches, classify in batches) and returns only small per-patch
arrays, which stream to the writers as tasks complete. Tasks run in waves so memory
stays bounded by a few chunks, however large the scene.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
import torch
from dask.base import compute
from dask.delayed import delayed
from tqdm.auto import tqdm

from rsscgeo.errors import OutputExistsError, SceneError
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import ChunkResult, Preprocess, classify_chunk
from rsscgeo.scene.journal import Journal, fingerprint, journal_dir
from rsscgeo.scene.plan import ScenePlan, plan_scene, resolve_device
from rsscgeo.scene.reader import SceneReader
from rsscgeo.scene.writers import GeoPackageWriter, GeoTiffWriter

# Chunk tasks per Dask compute call, per worker thread (see _run).
WAVE_PER_WORKER = 8
# Chunks are about this many pixels on a side: large reads, a few hundred patches each.
CHUNK_PIXELS = 2048
# GDAL's block cache (default 5% of RAM) otherwise fills with blocks that are read once
# and keeps growing with the scene; this much still holds the blocks neighbouring
# chunks share (a 256-pixel block row of a 32768-pixel-wide RGB scene is 24 MiB).
GDAL_CACHE_BYTES = 128 * 2**20


@dataclass
class ClassifySummary:
    """What a run did, for the command's report."""

    grid: PatchGrid
    outputs: list[Path]
    classified: int = 0
    skipped: int = 0
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
    workers: int | None = None,
    device: str = "auto",
    probabilities: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    model_path: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> ClassifySummary:
    """Classify ``scenes`` (one mosaic) patch by patch and write the requested outputs.

    Finished chunks are journaled beside the first output; ``resume`` continues an
    interrupted run from that journal (``model_path`` goes into its fingerprint).

    Raises:
        SceneError: If the scene or the options do not fit the model.
        OutputExistsError: If an output exists and ``overwrite`` is not set.
    """
    outputs = [p for p in (gpkg, geotiff) if p is not None]
    if not outputs:
        raise SceneError("no output requested; pass --out labels.gpkg and/or --out labels.tif.")
    for path in outputs:
        _check_output(path, overwrite)
    card = loaded.card
    plan = plan_scene(
        scenes, loaded, patch_size=patch_size, stride=stride, bands=bands, gsd=gsd, say=say
    )
    grid, scaling, notes = plan.grid, plan.scaling, plan.notes
    target = resolve_device(device)
    # One model serves every task (on a GPU, threads only overlap reading with it).
    loaded = LoadedModel(loaded.model.to(target), card)
    notes.append(f"running the model on {target}")
    say(notes[-1])
    workers = workers or os.cpu_count() or 1
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    options = {
        "patch": grid.patch,
        "stride": grid.stride,
        "bands": list(plan.band_indexes),
        "resolution": list(plan.reader.resolution),
        "min_valid": min_valid,
        "scaling": [scaling.low, scaling.high],
    }
    journal = Journal(
        journal_dir(outputs[0]), fingerprint(scenes, model_path, options), resume=resume
    )
    writers: list[GeoPackageWriter | GeoTiffWriter] = []
    summary = ClassifySummary(grid, outputs, notes=notes)
    start = time.perf_counter()
    try:
        if gpkg is not None:
            writers.append(GeoPackageWriter(gpkg, grid, card))
        if geotiff is not None:
            writers.append(GeoTiffWriter(geotiff, grid, card, probabilities))
        per_side = max(1, CHUNK_PIXELS // grid.stride)
        chunks = list(grid.chunks(per_side))
        bar = tqdm(
            total=grid.rows * grid.cols, unit="patch", desc="classifying", disable=not progress
        )
        with bar, _gdal_cache():
            work = ChunkTask.for_plan(plan, loaded, min_valid=min_valid, batch_size=batch_size)
            lock = threading.Lock()

            def tick(patches: int) -> None:
                with lock:
                    bar.update(patches)

            for result in _run(chunks, work, journal, workers, tick):
                for writer in writers:
                    writer.write(result)
                _count(summary, result, card.class_names)
        for writer in writers:
            writer.finish()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    journal.remove()
    summary.seconds = time.perf_counter() - start
    return summary


@dataclass(frozen=True)
class ChunkTask:
    """Everything one chunk task needs; the task itself is ``__call__``."""

    reader: SceneReader
    grid: PatchGrid
    loaded: LoadedModel
    preprocess: Preprocess
    min_valid: float
    batch_size: int

    @classmethod
    def for_plan(
        cls, plan: ScenePlan, loaded: LoadedModel, *, min_valid: float, batch_size: int
    ) -> ChunkTask:
        """The task for a planned scene; a convolutional model turns channels-last in place."""
        convolutional = any(isinstance(m, torch.nn.Conv2d) for m in loaded.model.modules())
        if convolutional:
            loaded.model.to(memory_format=torch.channels_last)
        preprocess = Preprocess.build(
            loaded.card, plan.scaling, plan.raw_dtype, channels_last=convolutional
        )
        return cls(plan.reader, plan.grid, loaded, preprocess, min_valid, batch_size)

    def __call__(self, chunk: Chunk) -> ChunkResult:
        """Read, cut and classify one chunk."""
        values, valid = self.reader.read(self.grid, chunk)
        return classify_chunk(
            self.loaded,
            values,
            valid,
            self.grid,
            chunk,
            preprocess=self.preprocess,
            min_valid=self.min_valid,
            batch_size=self.batch_size,
        )


def _run(
    chunks: list[Chunk],
    work: ChunkTask,
    journal: Journal,
    workers: int,
    progress: Callable[[int], None],
) -> Iterator[ChunkResult]:
    """Chunk results in chunk order.

    Journaled chunks are read back; the rest run as Dask tasks on ``workers`` threads,
    each journaled and counted as soon as it finishes. Only ``workers`` tasks hold
    pixels at a time and finished ones keep just their small per-patch arrays, so a
    wave can be many chunks long, which keeps every thread busy until its end.
    """

    def task(chunk: Chunk) -> ChunkResult:
        result = work(chunk)
        journal.save(result)
        progress(chunk.nrows * chunk.ncols)
        return result

    wave = max(1, workers * WAVE_PER_WORKER)
    for start in range(0, len(chunks), wave):
        batch = chunks[start : start + wave]
        done = {c.index: journal.load(c) for c in batch}
        for chunk in batch:
            if done[chunk.index] is not None:
                progress(chunk.nrows * chunk.ncols)
        todo = [delayed(task)(c) for c in batch if done[c.index] is None]
        for result in compute(*todo, scheduler="threads", num_workers=workers):  # type: ignore[no-untyped-call]
            done[result.chunk.index] = result
        for chunk in batch:
            result = done[chunk.index]
            assert result is not None
            yield result


def _count(summary: ClassifySummary, result: ChunkResult, names: list[str]) -> None:
    done = result.classified
    summary.classified += int(done.sum())
    summary.skipped += int((~done).sum())
    summary.per_class.update(names[i] for i in result.class_ids[done])


def _gdal_cache() -> rasterio.Env:
    """A bounded GDAL block cache for the run, unless the user set GDAL_CACHEMAX."""
    if "GDAL_CACHEMAX" in os.environ:
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() not in (".gpkg", ".tif", ".tiff"):
        raise SceneError(f"output {path} must end in .gpkg (polygons) or .tif (raster).")
    if not path.parent.is_dir():
        raise SceneError(f"output folder {path.parent} does not exist; create it first.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
