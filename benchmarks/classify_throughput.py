"""Scene classification throughput: ``classify_scene`` against its bounds and TorchGeo's loop.

Writes one synthetic RGB uint8 scene (tiled 256x256, deflate, EPSG:32633, 2 m pixels, so
the bundled model reads it at native resolution; smooth multi-octave noise plus pixel
noise, so it compresses like imagery rather than like a constant) into a temporary
folder, then measures, for the bundled EfficientNet-Lite0 model and for a trivial model
(global average pool + linear, 30 outputs, on the patch as read without the bundled
card's resize; it makes the run I/O-bound):

1. decode bound: rasterio reads the whole raster block by block on all cores
   (a thread pool over the 256x256 blocks, one dataset handle per thread);
2. model-only bound, per backend (``--backends``, default ``torch,onnx``): random,
   already normalised float batches at the card's eval size (the 150 px patch resized
   to 176) through the model, with all cores as intra-op threads of one caller and
   with one intra-op thread per worker thread (as ``classify_scene`` runs); the faster
   of the two is the bound. ``torch`` runs the PyTorch network (channels-last),
   ``onnx`` the ``OnnxNetwork`` that ``rsscgeo.backends.choose_backend`` returns (one
   ONNX Runtime session per layout, ``with_threads``);
3. end to end, once per backend: ``rsscgeo.scene.classify.classify_scene`` (GeoTIFF
   output with the class band and, unless ``--no-probabilities``, one probability band
   per class; ``ClassifyOptions(backend=...)``, ``progress=False``), in a subprocess,
   which also reports its peak RSS. The torch and onnx outputs are then compared
   (class band and top-1 agreement, largest probability difference);
4. TorchGeo loop: ``RasterDataset`` + ``GridGeoSampler(size=150, stride=150, units=PIXELS)``
   + ``DataLoader(batch_size=64, collate_fn=stack_samples)``, one patch per sample,
   then the same scaling, resize, normalisation, PyTorch model and softmax.

ONNX exports are cached in ``$RSSCGEO_CACHE_DIR/onnx``; when that variable is unset the
benchmark points it at its temporary folder, so every run exports afresh (the export
and check time is printed) and the user's cache is left alone. A model whose export
fails or disagrees with PyTorch is reported as such instead of an onnx figure.

patches/s counts patches of the 150 px grid (the last row and column padded, as both
``classify_scene`` and ``GridGeoSampler`` do); MP/s is megapixels of scene per second
(model-only: patches/s x 150^2). The scene is read from the page cache (it was just
written). ``--rss`` adds peak-RSS runs of the end-to-end path (trivial model) on 8192^2
and 32768^2 scenes; see benchmarks/README.md for timings.

Example::

    .venv/bin/python benchmarks/classify_throughput.py --size 4096 --backends torch,onnx
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window

from rsscgeo.backends import Backend, OnnxNetwork, choose_backend, model_device
from rsscgeo.errors import ModelFileError
from rsscgeo.hierarchy import CLASS_NODATA
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, load_model, read_card

PIXEL_SIZE = 2.0
CRS = "EPSG:32633"
ORIGIN = (400_000.0, 5_800_000.0)  # UTM 33N, upper left
BLOCK = 256
STRIP = 512  # rows generated per write; a multiple of every octave below
OCTAVES = ((256, 55.0), (32, 28.0), (4, 12.0))  # (cell px, amplitude): coarse to fine
PIXEL_NOISE = 5  # +- uniform integer noise per pixel and band
MODELS = ("bundled", "trivial")
BACKENDS = ("torch", "onnx")
TARGETS = {
    "trivial e2e / decode": 0.8,
    "trivial e2e / torchgeo": 10.0,
    "bundled e2e / model-only": 0.95,
    "peak RSS 32768^2 (GB)": 1.5,  # 10^9 bytes
    "peak RSS 32768^2 / 8192^2": 1.25,
}


# --------------------------------------------------------------------------- scene


def _field(grid: torch.Tensor, cell: int, row0: int, rows: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of ``grid`` (C x gh x gw, one node every ``cell`` px) on a strip.

    Node (i, j) sits on pixel (i * cell, j * cell), so strips computed separately join
    without seams.
    """
    first = row0 // cell
    last = (row0 + rows) // cell + 1
    coarse = grid[:, first : last + 1, :].unsqueeze(0)
    out_h = (coarse.shape[2] - 1) * cell + 1
    out_w = (coarse.shape[3] - 1) * cell + 1
    fine = F.interpolate(coarse, size=(out_h, out_w), mode="bilinear", align_corners=True)
    return fine[0, :, :rows, :width]


def scene_profile(width: int, height: int) -> dict[str, Any]:
    """The benchmark scenes' GeoTIFF profile: RGB uint8, EPSG:32633 at 2 m, tiled, deflate.

    Tiled 256x256, deflate (GDAL's default level), pixel-interleaved, BigTIFF when needed,
    upper left corner at ``ORIGIN`` (``aid_mosaic.py`` writes its mosaics with it too).
    """
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": Affine(PIXEL_SIZE, 0, ORIGIN[0], 0, -PIXEL_SIZE, ORIGIN[1]),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "interleave": "pixel",
        "photometric": "RGB",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def write_scene(path: Path, size: int, seed: int = 0) -> float:
    """Write a ``size`` x ``size`` RGB uint8 GeoTIFF of smooth noise; return seconds taken.

    Profile: :func:`scene_profile`; written in 512-row strips so memory stays small for
    any size.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    grids = []
    for cell, _ in OCTAVES:
        nodes = size // cell + 2
        # Mostly shared between bands (luminance), partly per band (colour).
        shared = torch.rand(1, nodes, nodes, generator=generator) * 2 - 1
        own = torch.rand(3, nodes, nodes, generator=generator) * 2 - 1
        grids.append(0.7 * shared + 0.3 * own)
    with rasterio.open(path, "w", **scene_profile(size, size)) as dst:
        for row0 in range(0, size, STRIP):
            rows = min(STRIP, size - row0)
            values = torch.full((3, rows, size), 128.0)
            for grid, (cell, amplitude) in zip(grids, OCTAVES, strict=True):
                values += amplitude * _field(grid, cell, row0, rows, size)
            noise = torch.randint(-PIXEL_NOISE, PIXEL_NOISE + 1, values.shape, generator=generator)
            pixels = (values + noise).clamp(0, 255).to(torch.uint8).numpy()
            dst.write(pixels, window=Window(0, row0, size, rows))
    return time.perf_counter() - started


def grid_patches(size: int, patch: int) -> int:
    """Patches of the ``patch`` px grid (stride = patch) on a ``size``^2 scene, edges padded."""
    per_side = 1 + max(0, math.ceil((size - patch) / patch))
    return per_side * per_side


# --------------------------------------------------------------------------- models


class TrivialNet(torch.nn.Module):
    """Global average pool + linear layer: next to no compute, so runs become I/O-bound."""

    def __init__(self, bands: int = 3, classes: int = 30) -> None:
        super().__init__()
        self.head = torch.nn.Linear(bands, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an N x C x H x W batch."""
        logits: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return logits


def get_model(name: str) -> LoadedModel:
    """The bundled model file, or the trivial network with the bundled model's card.

    ``load_model`` builds timm architectures only, so the trivial network is wrapped in a
    ``LoadedModel`` directly (``classify_scene`` takes one). Its card takes the patch as
    read (no 150 -> 176 px resize): the resize is model compute, and this model is meant
    to leave only reading, cutting and batching.
    """
    if name == "bundled":
        return load_model(BUNDLED_MODEL)
    card = read_card(BUNDLED_MODEL)
    card = card.model_copy(update={"eval_resize": card.patch_size, "eval_crop": None})
    torch.manual_seed(0)
    return LoadedModel(
        model=TrivialNet(len(card.bands), card.num_classes).eval(),
        card=card,
    )


def onnx_model(name: str) -> tuple[LoadedModel | None, str]:
    """``name``'s model on ONNX Runtime, as ``classify_scene`` would run it, or why not.

    Exports (or finds in the cache) and checks the model with ``choose_backend``; a
    fresh copy of the model is used, since the export moves the network to the CPU.

    Returns:
        (the model with an ``OnnxNetwork``, a note on the export) or (None, why not).
    """
    started = time.perf_counter()
    try:
        choice = choose_backend(get_model(name), "onnx", gpu=False)
    except ModelFileError as err:
        return None, f"no ONNX export: {err}"
    if choice.fallback or not isinstance(choice.loaded.model, OnnxNetwork):
        return None, choice.note
    prepared = time.perf_counter() - started
    network = choice.loaded.model
    started = time.perf_counter()
    network.with_threads(network.threads + 1)  # a throwaway session: its opening time
    opening = time.perf_counter() - started
    size = len(network.onnx) / 2**20
    return choice.loaded, (
        f"export {size:.1f} MiB: export/cache + check {prepared:.1f} s, "
        f"session open {opening:.2f} s"
    )


# --------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One measured path."""

    model: str
    path: str
    patches: int
    seconds: float
    pixels: float  # scene pixels covered by the patches done
    note: str = ""
    backend: str = "torch"  # what ran the model: torch, onnx, or "-" (no model)

    @property
    def patches_per_second(self) -> float:
        """Patches per second."""
        return self.patches / self.seconds

    @property
    def megapixels_per_second(self) -> float:
        """Megapixels of scene per second."""
        return self.pixels / self.seconds / 1e6


@dataclass
class Results:
    """Everything measured in one run, by (model, path, backend)."""

    figures: dict[tuple[str, str, str], Figure] = field(default_factory=dict)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)
    # model -> why it has no onnx figures (its export failed or disagrees with PyTorch)
    no_onnx: dict[str, str] = field(default_factory=dict)
    # model -> torch vs onnx end-to-end outputs (see compare_outputs)
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        """Store and print one figure."""
        self.figures[(figure.model, figure.path, figure.backend)] = figure
        print(
            f"  {figure.model:<8} {figure.path:<12} {figure.backend:<7} {figure.patches:>7d} "
            f"patches {figure.seconds:>8.2f} s {figure.patches_per_second:>9.1f} patch/s "
            f"{figure.megapixels_per_second:>8.2f} MP/s  {figure.note}",
            flush=True,
        )
        return figure

    def get(self, model: str, path: str, backend: str = "torch") -> Figure | None:
        """A figure, or None if it was not measured."""
        return self.figures.get((model, path, backend))


# --------------------------------------------------------------------------- (1) decode


def decode_bound(scene: Path, threads: int, window: int | None = None) -> tuple[float, int]:
    """Read the whole raster on ``threads`` threads, one dataset handle per thread.

    Args:
        scene: The GeoTIFF.
        threads: Thread count.
        window: Side of the square read windows; None reads the file's own blocks.

    Returns:
        (seconds, windows read).
    """
    with rasterio.open(scene) as src:
        if window is None:
            windows = [w for _, w in src.block_windows(1)]
        else:
            windows = [
                Window(c, r, min(window, src.width - c), min(window, src.height - r))
                for r in range(0, src.height, window)
                for c in range(0, src.width, window)
            ]
    local = threading.local()
    handles: list[Any] = []
    lock = threading.Lock()

    def read(win: Window) -> int:
        src = getattr(local, "src", None)
        if src is None:
            src = local.src = rasterio.open(scene)
            with lock:
                handles.append(src)
        return int(src.read(window=win).shape[-1])

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(read, windows, chunksize=16):
            pass
    seconds = time.perf_counter() - started
    for src in handles:
        src.close()
    return seconds, len(windows)


# --------------------------------------------------------------------------- (2) model only


def model_only(
    loaded: LoadedModel,
    batch_size: int,
    workers: int,
    torch_threads: int,
    max_seconds: float,
    max_patches: int,
) -> tuple[int, float]:
    """Random normalised batches at the card's input size through the model.

    ``workers`` Python threads each run batches with ``torch_threads`` intra-op threads
    (process-wide for PyTorch; for an ``OnnxNetwork``, one ONNX Runtime session with
    that many intra-op threads, shared by the workers as ``classify_scene`` shares it).
    After one warm-up batch per worker, rounds of one batch per worker run until
    ``max_seconds`` have passed or ``max_patches`` are done (at least two rounds).

    Returns:
        (patches, seconds).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    card = loaded.card
    network = loaded.model
    device = model_device(network)
    size = card.input_size
    generator = torch.Generator().manual_seed(0)
    if isinstance(network, OnnxNetwork):
        # ONNX Runtime takes contiguous NCHW arrays (classify_scene feeds it those).
        network = network.with_threads(torch_threads)
        layout = torch.contiguous_format
    else:
        # Channels-last model and batches: the fastest layout, and the one classify_scene uses.
        network.to(memory_format=torch.channels_last)
        layout = torch.channels_last
    batches = [
        torch.randn(batch_size, len(card.bands), size, size, generator=generator)
        .to(device)
        .contiguous(memory_format=layout)
        for _ in range(2)
    ]

    def run(index: int) -> torch.Tensor:
        # Inference mode is per thread: enter it in the worker thread, as classify_patches does.
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"),
        ):
            return F.softmax(network(batches[index % len(batches)]).float(), dim=1).cpu()

    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(workers)))  # warm-up
            done = rounds = 0
            started = time.perf_counter()
            while True:
                list(pool.map(run, range(workers)))
                done += workers * batch_size
                rounds += 1
                elapsed = time.perf_counter() - started
                if rounds >= 2 and (elapsed >= max_seconds or done >= max_patches):
                    break
    finally:
        torch.set_num_threads(previous)
    return done, elapsed


# --------------------------------------------------------------------------- (3) end to end


def run_e2e_child(
    scene: Path,
    out: Path,
    model: str,
    args: argparse.Namespace,
    mode: str = "time",
    *,
    backend: str = "torch",
    probabilities: bool = False,
) -> dict[str, Any]:
    """Run ``classify_scene`` in a fresh Python process and return what it reports.

    Args:
        scene: The GeoTIFF.
        out: The output GeoTIFF.
        model: ``bundled`` or ``trivial``.
        args: The options (``workers``, ``batch_size``, ``device``).
        mode: ``time``, ``stages`` or ``cprofile`` (see :func:`e2e_child`).
        backend: ``ClassifyOptions.backend``: ``torch`` or ``onnx``.
        probabilities: Also write one probability band per class.

    Returns:
        The child's JSON report (seconds, patches, peak RSS, backend note, ...).
    """
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_e2e",
        f"--scene={scene}",
        f"--out={out}",
        f"--model={model}",
        f"--batch-size={args.batch_size}",
        f"--mode={mode}",
        f"--device={args.device}",
        f"--backend={backend}",
    ]
    if args.workers:
        command.append(f"--workers={args.workers}")
    if probabilities:
        command.append("--probabilities")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"end-to-end child failed:\n{result.stdout}\n{result.stderr}")
    lines = result.stdout.splitlines()
    marker = lines.index("@@json")
    for line in lines[:marker]:
        print(f"    | {line}")
    report: dict[str, Any] = json.loads(lines[marker + 1])
    return report


class _Stages:
    """Wall time spent in named stages, summed over threads (a thread-safe tally)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        """Record one call of ``name``."""
        with self.lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func``, timed under ``name``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed


class _TimedModel(torch.nn.Module):
    """A model whose forward passes are tallied."""

    def __init__(self, inner: torch.nn.Module, stages: _Stages) -> None:
        super().__init__()
        self.inner = inner
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner model's forward, timed."""
        started = time.perf_counter()
        try:
            return self.inner(x)  # type: ignore[no-any-return]
        finally:
            self.stages.add("model forward", time.perf_counter() - started)


def _instrument(loaded: LoadedModel, backend: str) -> tuple[LoadedModel, _Stages]:
    """Patch timers around the stages of ``classify_scene`` (they are looked up by name).

    The model's forward passes are timed by a wrapper network (``torch``) or by a timer
    on ``OnnxNetwork.forward`` (``onnx``: a wrapper would change the model's identity,
    so its export, and be replaced by the export anyway).
    """
    import rasterio.merge

    import rsscgeo._torchgeo as tg
    import rsscgeo.scene.inference as inference
    import rsscgeo.scene.reader as reader
    import rsscgeo.scene.tasks as tasks
    import rsscgeo.scene.writers as writers

    stages = _Stages()
    rasterio.merge.merge = stages.wrap("  rasterio.merge.merge", rasterio.merge.merge)
    tg.MosaicDataset._merge_files = stages.wrap(  # type: ignore[method-assign]
        " MosaicDataset._merge_files", tg.MosaicDataset._merge_files
    )
    reader.SceneReader.read = stages.wrap(  # type: ignore[method-assign]
        "SceneReader.read", reader.SceneReader.read
    )
    inference.cut_patches = stages.wrap(" cut_patches", inference.cut_patches)
    inference.Preprocess.__call__ = stages.wrap(  # type: ignore[method-assign]
        " Preprocess (scale+normalise+resize)", inference.Preprocess.__call__
    )
    tasks.classify_chunk = stages.wrap(  # type: ignore[attr-defined]
        "classify_chunk",
        tasks.classify_chunk,  # type: ignore[attr-defined]
    )
    writers.GeoTiffWriter.write = stages.wrap(  # type: ignore[method-assign]
        "GeoTiffWriter.write", writers.GeoTiffWriter.write
    )
    writers.GeoTiffWriter.finish = stages.wrap(  # type: ignore[method-assign]
        "GeoTiffWriter.finish (COG copy)", writers.GeoTiffWriter.finish
    )
    if backend == "onnx":
        OnnxNetwork.forward = stages.wrap("model forward", OnnxNetwork.forward)  # type: ignore[method-assign]
        return loaded, stages
    timed = LoadedModel(model=_TimedModel(loaded.model, stages).eval(), card=loaded.card)
    return timed, stages


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Read from ``VmHWM``, which starts afresh at ``exec``; ``getrusage``'s ``ru_maxrss``
    (self or children) keeps the forking parent's RSS across ``exec``, so a child forked
    from a big parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def e2e_child(argv: Sequence[str]) -> None:
    """The subprocess side of :func:`run_e2e_child`: one ``classify_scene`` call.

    Modes: ``time`` (plain run), ``stages`` (tally wall time per stage across the
    worker threads), ``cprofile`` (Dask's synchronous scheduler, so cProfile sees every
    call, in the main thread; one worker).
    """
    parser = argparse.ArgumentParser(prog="classify_throughput.py _e2e")
    parser.add_argument("--scene", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mode", choices=("time", "stages", "cprofile"), default="time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--probabilities", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import rsscgeo._torchgeo  # noqa: F401  (imported lazily by the reader: keep it out of the timing)
    import rsscgeo.scene.classify as classify

    loaded = get_model(args.model)
    stages: _Stages | None = None
    if args.mode == "stages":
        loaded, stages = _instrument(loaded, args.backend)
    workers = args.workers
    profiler: cProfile.Profile | None = None
    if args.mode == "cprofile":
        # cProfile sees only its own thread: run the chunk tasks one after another here,
        # without the Dask engine (whose overhead the stage timings show).
        workers = 1
        profiler = cProfile.Profile()
    baseline_mb = _peak_rss_mb()
    started = time.perf_counter()
    if profiler is not None:
        summary = _run_chunks_in_this_thread(
            args.scene, loaded, args.batch_size, args.backend, profiler
        )
    else:
        from rsscgeo.scene.engine import open_engine
        from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs

        options = ClassifyOptions(
            batch_size=args.batch_size,
            backend=args.backend,
            probabilities=args.probabilities,
        )
        outputs = ClassifyOutputs(geotiff=args.out, overwrite=True)
        with open_engine(workers=workers, device=args.device) as engine:
            summary = classify.classify_scene(
                [args.scene], loaded, options, outputs, engine, progress=False
            )
    seconds = time.perf_counter() - started
    peak_mb = _peak_rss_mb()
    if stages is not None:
        used = workers or os.cpu_count() or 1
        print(
            f"stage wall time summed over {used} worker threads "
            f"(loop {summary.seconds:.2f} s x {used} = {summary.seconds * used:.2f} thread-s):"
        )
        for name, total in sorted(stages.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<40} {total:>8.2f} s  {stages.calls[name]:>6d} calls")
        busy = stages.seconds.get("SceneReader.read", 0.0) + stages.seconds.get(
            "classify_chunk", 0.0
        )
        idle = summary.seconds * used - busy
        print(
            f"  {'idle worker time (Dask, imbalance)':<40} {idle:>8.2f} s  "
            f"({100 * idle / (summary.seconds * used):.0f} % of the thread-s)"
        )
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(22)
        print("cProfile (chunk tasks run one by one in one thread, no Dask), top by own time:")
        body = text.getvalue().split("ncalls", 1)[-1]
        print("   ncalls" + body.rstrip())
    print("@@json")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "loop_seconds": summary.seconds,
                "classified": summary.classified,
                "skipped": summary.skipped,
                "patches": summary.grid.rows * summary.grid.cols,
                "baseline_rss_mb": baseline_mb,
                "peak_rss_mb": peak_mb,
                "torch_threads": torch.get_num_threads(),
                "backend_note": next(
                    (n for n in summary.notes if n.startswith("backend:")), "backend: ?"
                ),
            }
        )
    )


def _run_chunks_in_this_thread(
    scene: Path,
    loaded: LoadedModel,
    batch_size: int,
    backend: Backend,
    profiler: cProfile.Profile,
) -> Any:
    """Every chunk task of ``scene`` in this thread under ``profiler``; a run summary.

    The model runs as the plan picks it (``backend``) and a worker prepares it.
    """
    import rsscgeo.scene.classify as classify
    from rsscgeo.scene.inference import prepare_model
    from rsscgeo.scene.options import ClassifyOptions
    from rsscgeo.scene.plan import plan_scene

    options = ClassifyOptions(batch_size=batch_size, backend=backend)
    plan = plan_scene([scene], loaded, options)
    runner = prepare_model(plan.model, torch.device("cpu"))
    summary = classify.ClassifySummary(plan.grid, [], notes=list(plan.notes))
    started = time.perf_counter()
    profiler.enable()
    for chunk in plan.chunks:
        result = plan.work(chunk, runner)
        summary.classified += int(result.classified.sum())
        summary.skipped += int((~result.classified).sum())
    profiler.disable()
    summary.seconds = time.perf_counter() - started
    return summary


# --------------------------------------------------------------------------- (4) TorchGeo


def torchgeo_loop(
    scene: Path, loaded: LoadedModel, batch_size: int, num_workers: int, max_seconds: float
) -> tuple[int, int, float]:
    """The canonical TorchGeo inference loop over the scene.

    Returns:
        (patches done, patches in the sampler, seconds).
    """
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler, Units

    from rsscgeo.predict import card_transform

    class Scene(RasterDataset):
        filename_glob = scene.name

    card = loaded.card
    dataset = Scene(paths=[str(scene)])
    sampler = GridGeoSampler(
        dataset, size=card.patch_size, stride=card.patch_size, units=Units.PIXELS
    )
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        collate_fn=stack_samples,
        num_workers=num_workers,
    )
    transform = card_transform(card)
    done = 0
    started = time.perf_counter()
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        for batch in loader:
            x = batch["image"][:, : len(card.bands)].to(device)
            x = transform(x / card.input_scale)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                probs = F.softmax(loaded.model(x).float(), dim=1).cpu()
            done += len(probs)
            if time.perf_counter() - started >= max_seconds:
                break
    seconds = time.perf_counter() - started
    del loader
    return done, len(sampler), seconds


# --------------------------------------------------------------------------- driver


def measure(args: argparse.Namespace, workdir: Path, results: Results) -> None:
    """Write the scene and run the four paths for each model (and each backend)."""
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    scene = workdir / f"scene_{args.size}.tif"
    seconds = write_scene(scene, args.size)
    size_mb = scene.stat().st_size / 2**20
    raw_mb = args.size**2 * 3 / 2**20
    print(
        f"scene {args.size}^2 RGB uint8, {CRS}, {PIXEL_SIZE:g} m: {size_mb:.0f} MiB on disk "
        f"({raw_mb / size_mb:.2f}x deflate), written in {seconds:.1f} s",
        flush=True,
    )
    pixels = float(args.size**2)
    card = read_card(BUNDLED_MODEL)
    patch = card.patch_size
    total = grid_patches(args.size, patch)
    print(
        f"{cores} cores; {workers} worker threads; patch {patch} px (stride {patch}), "
        f"eval size {card.input_size}; {total} patches; batch {args.batch_size}; "
        f"backends {','.join(args.backends)}",
        flush=True,
    )
    print(
        f"  {'model':<8} {'path':<12} {'backend':<7} {'patches':>15} {'seconds':>10} "
        f"{'rate':>17} {'scene rate':>13}"
    )
    per_patch = float(patch * patch)
    if "decode" in args.paths:
        runs = [decode_bound(scene, workers) for _ in range(args.decode_repeats)]
        best, blocks = min(runs)
        figure = Figure(
            "-", "decode", total, best, pixels, f"{blocks} blocks of {BLOCK}^2", backend="-"
        )
        for model in args.models:
            results.figures[(model, "decode", "-")] = figure
        results.add(figure)
        chunk = (2048 // patch) * patch
        seconds, windows = min(decode_bound(scene, workers, chunk) for _ in range(2))
        results.add(
            Figure(
                "-",
                "decode-chunk",
                total,
                seconds,
                pixels,
                f"{windows} windows of {chunk}^2",
                backend="-",
            )
        )
    for model in args.models:
        runners: dict[str, LoadedModel] = {}
        if "onnx" in args.backends and {"model", "e2e"} & set(args.paths):
            onnx, why = onnx_model(model)  # before the torch model moves to --device
            if onnx is None:
                results.no_onnx[model] = why
                print(f"  {model:<8} {'model, e2e':<12} {'onnx':<7} not measured: {why}")
            else:
                runners["onnx"] = onnx
                print(f"  {model:<8} {'(export)':<12} {'onnx':<7} {why}", flush=True)
        loaded = get_model(model)
        loaded = LoadedModel(loaded.model.to(args.device), loaded.card)
        if "torch" in args.backends:
            runners["torch"] = loaded
        backends = [b for b in args.backends if b in runners]
        if "model" in args.paths:
            for backend in backends:
                model_bound(args, results, model, backend, runners[backend], total, per_patch)
        if "e2e" in args.paths:
            outputs: dict[str, Path] = {}
            for backend in backends:
                outputs[backend] = workdir / f"labels_{model}_{backend}.tif"
                report = run_e2e_child(
                    scene,
                    outputs[backend],
                    model,
                    args,
                    backend=backend,
                    probabilities=args.probabilities,
                )
                note = (
                    f"loop {report['loop_seconds']:.2f} s; peak RSS "
                    f"{report['peak_rss_mb']:.0f} MiB (after imports+model "
                    f"{report['baseline_rss_mb']:.0f} MiB)"
                )
                ran = str(report["backend_note"])
                if backend == "onnx" and not ran.startswith("backend: ONNX Runtime"):
                    note += f"; RAN ON PYTORCH: {ran}"
                figure = Figure(
                    model, "e2e", report["patches"], report["seconds"], pixels, note, backend
                )
                results.add(figure)
                results.rss[f"{model} {backend} {args.size}^2"] = report
            if {"torch", "onnx"} <= outputs.keys():
                agreement = compare_outputs(outputs["torch"], outputs["onnx"])
                results.agreement[model] = agreement
                print(f"  {model:<8} {'e2e outputs':<12} {'both':<7} {_agreement(agreement)}")
        if "torchgeo" in args.paths:
            done, count, secs = torchgeo_loop(
                scene, loaded, args.batch_size, args.tg_workers, args.max_seconds
            )
            note = f"DataLoader num_workers={args.tg_workers}"
            if done < count:
                note += f"; stopped at {done}/{count} patches (--max-seconds)"
            results.add(Figure(model, "torchgeo", done, secs, pixels * done / count, note))
        del loaded, runners
    if args.profile:
        for mode in ("stages", "cprofile"):
            print(
                f"\nprofile of the end-to-end path ({args.profile_model} model, "
                f"{args.profile_backend}, {mode}):"
            )
            run_e2e_child(
                scene,
                workdir / "labels_profile.tif",
                args.profile_model,
                args,
                mode,
                backend=args.profile_backend,
            )
    if args.rss:
        rss_runs(args, workdir, scene, results)


def model_bound(
    args: argparse.Namespace,
    results: Results,
    model: str,
    backend: str,
    loaded: LoadedModel,
    total: int,
    per_patch: float,
) -> None:
    """The model-only bound of ``loaded`` in both thread layouts; the faster is the bound."""
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    threads = max(1, cores // workers)
    unit = "intra-op" if backend == "onnx" else "torch"
    n, secs = model_only(loaded, args.batch_size, 1, cores, args.max_seconds, total)
    intra = Figure(
        model,
        "model-intra",
        n,
        secs,
        n * per_patch,
        f"1 thread x {cores} {unit} threads",
        backend,
    )
    n, secs = model_only(loaded, args.batch_size, workers, threads, args.max_seconds, total)
    inter = Figure(
        model,
        "model-inter",
        n,
        secs,
        n * per_patch,
        f"{workers} threads x {threads} {unit} thread(s)",
        backend,
    )
    results.add(intra)
    results.add(inter)
    best = max(intra, inter, key=lambda f: f.patches_per_second)
    results.figures[(model, "model", backend)] = best


def compare_outputs(torch_tif: Path, onnx_tif: Path) -> dict[str, float]:
    """How far the onnx end-to-end GeoTIFF is from the torch one, patch by patch.

    Returns:
        ``patches`` (classified in both), ``skipped_mismatch`` (classified in one only),
        ``class_band_agreement`` (equal class band values, Uncertain included), and with
        probability bands ``top1_agreement`` (equal argmax) and
        ``max_probability_difference`` (largest absolute difference of any class).
    """
    with rasterio.open(torch_tif) as a, rasterio.open(onnx_tif) as b:
        first, second = a.read(), b.read()
    classes_a, classes_b = first[0], second[0]
    done_a, done_b = classes_a != CLASS_NODATA, classes_b != CLASS_NODATA
    both = done_a & done_b
    agreement: dict[str, float] = {
        "patches": float(both.sum()),
        "skipped_mismatch": float((done_a != done_b).sum()),
        "class_band_agreement": float((classes_a == classes_b)[both].mean()),
    }
    if len(first) > 1 and len(second) > 1:
        probs_a, probs_b = first[1:, both], second[1:, both]
        agreement["top1_agreement"] = float((probs_a.argmax(0) == probs_b.argmax(0)).mean())
        agreement["max_probability_difference"] = float(abs(probs_a - probs_b).max())
    return agreement


def _agreement(agreement: dict[str, float]) -> str:
    """One line on a ``compare_outputs`` result."""
    text = (
        f"torch vs onnx on {agreement['patches']:.0f} patches: class band "
        f"{agreement['class_band_agreement']:.4f} equal"
    )
    if "top1_agreement" in agreement:
        text += (
            f", top-1 {agreement['top1_agreement']:.4f} equal, max |p_onnx - p_torch| "
            f"{agreement['max_probability_difference']:.2g}"
        )
    if agreement["skipped_mismatch"]:
        text += f"; {agreement['skipped_mismatch']:.0f} patches skipped in one only"
    return text


def rss_runs(args: argparse.Namespace, workdir: Path, scene: Path, results: Results) -> None:
    """Peak RSS of the end-to-end path (trivial model) at each of ``--rss-sizes``."""
    ratio = scene.stat().st_size / args.size**2
    print(
        f"\npeak RSS of classify_scene ({args.rss_model} model, {args.rss_backend}), "
        "one subprocess per size:"
    )
    for size in args.rss_sizes:
        key = f"{args.rss_model} {args.rss_backend} {size}^2"
        if key in results.rss:
            print(f"  {size}^2: measured above")
            continue
        path = scene if size == args.size else workdir / f"scene_{size}.tif"
        if not path.exists():
            need = 1.3 * ratio * size**2 + 2**30
            free = shutil.disk_usage(workdir).free
            if free < need:
                print(f"  {size}^2: skipped, {free / 2**30:.1f} GiB free, need ~{need / 2**30:.1f}")
                continue
            seconds = write_scene(path, size)
            print(
                f"  {size}^2: wrote {path.stat().st_size / 2**30:.2f} GiB in {seconds:.0f} s",
                flush=True,
            )
        report = run_e2e_child(
            path,
            workdir / f"labels_rss_{size}.tif",
            args.rss_model,
            args,
            backend=args.rss_backend,
        )
        results.rss[key] = report
        print(
            f"  {size}^2: {report['patches']} patches in {report['seconds']:.1f} s; "
            f"peak RSS {report['peak_rss_mb']:.0f} MiB "
            f"(after imports+model {report['baseline_rss_mb']:.0f} MiB)",
            flush=True,
        )
        if path != scene:
            path.unlink()


def _verdict(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return f"{'meets' if ok else 'MISSES'} target {'>=' if higher else '<='} {target:g}"


def report(args: argparse.Namespace, results: Results) -> None:
    """Print the ratios against the issue's targets, per backend, and torch vs onnx."""
    print("\nratios (rates in patches/s; targets from the issue):")

    def ratio(
        model: str,
        num: tuple[str, str],
        den: tuple[str, str],
        target_key: str | None = None,
    ) -> None:
        a, b = results.get(model, *num), results.get(model, *den)
        if a is None or b is None:
            return
        value = a.patches_per_second / b.patches_per_second
        den_label = den[0] if den[1] == "-" else f"{den[0]}({den[1]})"
        label = f"{model} {num[0]}({num[1]}) / {den_label}"
        verdict = _verdict(value, TARGETS[target_key]) if target_key else "(no target)"
        print(
            f"  {label:<38} {a.patches_per_second:>9.1f} / {b.patches_per_second:<9.1f}"
            f" = {value:6.2f}x  {verdict}"
        )

    for model in args.models:
        for backend in args.backends:
            e2e = ("e2e", backend)
            if model == "trivial":
                ratio(model, e2e, ("decode", "-"), "trivial e2e / decode")
                ratio(model, e2e, ("torchgeo", "torch"), "trivial e2e / torchgeo")
                ratio(model, e2e, ("model", backend))
            else:
                ratio(model, e2e, ("model", backend), "bundled e2e / model-only")
                ratio(model, e2e, ("torchgeo", "torch"))
        ratio(model, ("e2e", "onnx"), ("e2e", "torch"))
        ratio(model, ("model", "onnx"), ("model", "torch"))
        if model in results.no_onnx:
            print(f"  {model} onnx: not measured ({results.no_onnx[model]})")
        if model in results.agreement:
            print(f"  {model} e2e outputs, {_agreement(results.agreement[model])}")
    peaks = {k: v["peak_rss_mb"] for k, v in results.rss.items()}
    if peaks:
        print("peak RSS (VmHWM) of the end-to-end subprocess (imports, model and run):")
        for key, mb in peaks.items():
            print(f"  {key:<20} {mb:8.0f} MiB")
    big = peaks.get(f"{args.rss_model} {args.rss_backend} 32768^2")
    small = peaks.get(f"{args.rss_model} {args.rss_backend} 8192^2")
    if big is not None:
        gb = big * 2**20 / 1e9
        verdict = _verdict(gb, TARGETS["peak RSS 32768^2 (GB)"], higher=False)
        print(f"  peak RSS 32768^2 {gb:.2f} GB: {verdict}")
        if small is not None:
            value = big / small
            print(
                f"  peak RSS 32768^2 / 8192^2 = {value:.2f}x: "
                f"{_verdict(value, TARGETS['peak RSS 32768^2 / 8192^2'], False)}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=8192, help="scene side in pixels")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: bundled, trivial"
    )
    parser.add_argument(
        "--paths",
        default="decode,model,e2e,torchgeo",
        help="comma-separated subset of decode, model, e2e, torchgeo",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: torch, onnx; the model-only and end-to-end paths run once "
        "per backend (onnx always runs on the CPU; the TorchGeo loop is PyTorch's)",
    )
    parser.add_argument(
        "--probabilities",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end-to-end runs also write probability bands, so the torch and onnx "
        "outputs can be compared class by class (one pixel per patch: cheap)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="cap per model-only and TorchGeo-loop measurement (the rate over the part done "
        "is reported); the decode and end-to-end paths always cover the whole scene",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the models run in every path (cpu, cuda); classify_scene gets it too",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="classify_scene workers (default: its own)"
    )
    parser.add_argument(
        "--tg-workers", type=int, default=cores, help="TorchGeo DataLoader num_workers"
    )
    parser.add_argument("--decode-repeats", type=int, default=2, help="best of N decode runs")
    parser.add_argument(
        "--profile", action="store_true", help="also profile the end-to-end path (2 more runs)"
    )
    parser.add_argument("--profile-model", choices=MODELS, default="trivial")
    parser.add_argument("--profile-backend", choices=BACKENDS, default="torch")
    parser.add_argument(
        "--rss",
        action="store_true",
        help="peak RSS of the end-to-end path at --rss-sizes (writes those scenes)",
    )
    parser.add_argument("--rss-sizes", default="8192,32768")
    parser.add_argument("--rss-model", choices=MODELS, default="trivial")
    parser.add_argument("--rss-backend", choices=BACKENDS, default="torch")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary folder goes"
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.paths = [p for p in args.paths.split(",") if p]
    args.backends = [b for b in args.backends.split(",") if b]
    args.rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    if not set(args.models) <= set(MODELS):
        parser.error(f"--models must be among {MODELS}")
    if not set(args.paths) <= {"decode", "model", "e2e", "torchgeo"}:
        parser.error("--paths must be among decode, model, e2e, torchgeo")
    if not args.backends or not set(args.backends) <= set(BACKENDS):
        parser.error(f"--backends must be among {BACKENDS}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Write the scene, measure every path and print the comparison."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_e2e"]:
        e2e_child(argv[1:])
        return
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        import onnxruntime

        ort = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = "no onnxruntime"
    print(
        f"torch {torch.__version__}, {ort}, rasterio {rasterio.__version__} "
        f"(GDAL {rasterio.__gdal_version__}), python {sys.version.split()[0]}"
    )
    started = time.perf_counter()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="rsscgeo-classify-bench-", dir=args.workdir) as tmp:
        if not os.environ.get("RSSCGEO_CACHE_DIR"):
            # Fresh exports in the temporary folder; the children inherit the variable.
            os.environ["RSSCGEO_CACHE_DIR"] = str(Path(tmp) / "cache")
        print(f"ONNX exports cached in {os.environ['RSSCGEO_CACHE_DIR']}/onnx")
        measure(args, Path(tmp), results)
    report(args, results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
