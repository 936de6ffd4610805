"""Classify speed and map sanity on mosaics of real AID tiles (issue 11, item 4).

Lays ``N`` real AID tiles (``../shared/data/aid150``: 150x150 RGB JPEG, 30 classes) on a
``ceil(sqrt(N))`` columns grid, one tile per 150 px patch of the bundled model, and
writes them as one GeoTIFF with the profile of ``classify_throughput.py``'s synthetic
scenes (RGB uint8, tiled 256x256, deflate, EPSG:32633 at 2 m/px: the bundled model's
GSD, so it reads the mosaic at native resolution and its patches are the tiles). The
order is a seeded permutation of all 7,078 images, taken cyclically when ``N`` is
larger. For each mosaic it measures, side by side:

1. **model-only** bound per backend (``classify_throughput.model_bound``: random
   normalised batches, best of the two thread layouts), one for all mosaics: measured
   before them and, with ``--repeats`` > 1, again after them (the faster is kept);
2. **e2e**: ``classify_scene`` in a fresh process (``classify_throughput.run_e2e_child``;
   imports done before the clock starts, planning and the Dask cluster inside it), and
   that child's wall time from spawn to exit (``e2e-proc``);
3. **whole process**: the ``rsscgeo classify MOSAIC --out labels.tif --probabilities
   --backend B`` command in a subprocess, timed from spawn to exit (interpreter start,
   imports, model load, planning, the ONNX session from the warm export cache, run,
   COG output);
4. **TorchGeo loop** (``classify_throughput.torchgeo_loop``: ``RasterDataset`` +
   ``GridGeoSampler`` + ``DataLoader``, the same PyTorch model), capped by
   ``--max-seconds``.

Because each patch is one labelled tile, every output map is checked against the
tiles' classes: top-1 (argmax of the probability bands) and class band (Uncertain
counts as wrong) agreement with the tile's class, overall and by the bundled model's
split (``split.csv``: only ``test`` tiles were never seen in training; ``val`` tiles
fitted the calibration). With ``--repeats N`` the e2e and whole-process runs are made
N times per backend, in alternating order, and the fastest is kept (all are printed).
It also times ``make demo``'s command on the bundled NAIP scene per backend (``--paths
demo``), with a fresh ``RSSCGEO_CACHE_DIR``: the first ONNX run exports and checks the
model (cold cache), the later ones reuse it (warm).

Example::

    .venv/bin/python benchmarks/aid_mosaic.py --patches 1600,10000 --max-seconds 30 --demo-repeats 3
    .venv/bin/python benchmarks/aid_mosaic.py --patches 16,1600 --repeats 2 --max-seconds 30
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classify_throughput import (
    BLOCK,
    ORIGIN,
    PIXEL_SIZE,
    Figure,
    Results,
    _agreement,
    compare_outputs,
    get_model,
    model_bound,
    onnx_model,
    run_e2e_child,
    scene_profile,
    torchgeo_loop,
)

from rsscgeo.hierarchy import CLASS_NODATA, UNCERTAIN_VALUE
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, read_card

ROOT = Path(__file__).resolve().parents[1]
AID = ROOT.parent / "shared" / "data" / "aid150"
SPLIT = BUNDLED_MODEL.parent / "split.csv"
DEMO_SCENE = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"
TILE = 150  # AID tile side, px
STRIP = 4 * BLOCK  # mosaic rows written at a time
PATHS = ("model", "e2e", "cli", "torchgeo", "demo")
BACKENDS = ("torch", "onnx")
TARGETS = {  # issue 11: whole-process e2e on the 1,600-patch mosaic
    "model": 0.85,  # ONNX model-only rate
    "torch": 1.6,  # today's torch path
    "torchgeo": 2.5,  # the TorchGeo loop
}
LOOP = re.compile(r"on a \d+x\d+ grid in ([0-9.]+) s")


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One AID image: its file, class index in the model card and split of the model."""

    path: Path
    label: int
    split: str  # train, val, test (split.csv), or "-" if not listed


def aid_tiles(data: Path, class_names: Sequence[str], split_csv: Path) -> list[Tile]:
    """Every ``<Class>/*.jpg`` under ``data``, sorted, labelled by the card's class order."""
    splits: dict[str, str] = {}
    if split_csv.exists():
        with split_csv.open(newline="") as f:
            splits = {row["path"]: row["split"] for row in csv.DictReader(f)}
    index = {name: i for i, name in enumerate(class_names)}
    tiles = []
    for path in sorted(data.glob("*/*.jpg")):
        if path.parent.name not in index:
            raise SystemExit(f"{path.parent.name} is not a class of the model")
        key = f"{path.parent.name}/{path.name}"
        tiles.append(Tile(path, index[path.parent.name], splits.get(key, "-")))
    if not tiles:
        raise SystemExit(f"no <Class>/*.jpg under {data}")
    return tiles


def _pixels(tile: Tile) -> npt.NDArray[np.uint8]:
    with Image.open(tile.path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.shape != (TILE, TILE, 3):
        raise SystemExit(f"{tile.path} is {array.shape[1]}x{array.shape[0]}, not {TILE}x{TILE}")
    return array


@dataclass
class Mosaic:
    """A written mosaic and what lies where: ``labels`` is -1 where no tile was placed."""

    path: Path
    count: int
    unique: int
    labels: npt.NDArray[np.int64]  # rows x cols
    splits: npt.NDArray[np.str_]  # rows x cols
    seconds: float

    @property
    def rows(self) -> int:
        """Tile rows."""
        return int(self.labels.shape[0])

    @property
    def cols(self) -> int:
        """Tile columns."""
        return int(self.labels.shape[1])


def write_mosaic(path: Path, tiles: Sequence[Tile], count: int, seed: int) -> Mosaic:
    """Write ``count`` tiles, seeded order, taken cyclically, on a ``ceil(sqrt(count))`` grid.

    Cells past ``count`` in the last row stay black. Written in block-aligned strips of
    ``STRIP`` rows, decoding the tile rows a strip needs on all cores.
    """
    started = time.perf_counter()
    order = list(range(len(tiles)))
    random.Random(seed).shuffle(order)
    placed = [tiles[order[i % len(order)]] for i in range(count)]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    labels = np.full((rows, cols), -1, dtype=np.int64)
    splits = np.full((rows, cols), "", dtype="<U5")
    for i, tile in enumerate(placed):
        labels[i // cols, i % cols] = tile.label
        splits[i // cols, i % cols] = tile.split
    width, height = cols * TILE, rows * TILE
    cache: dict[int, npt.NDArray[np.uint8]] = {}
    with (
        ThreadPoolExecutor(os.cpu_count() or 1) as pool,
        rasterio.open(path, "w", **scene_profile(width, height)) as dst,
    ):

        def tile_row(r: int) -> npt.NDArray[np.uint8]:
            if r not in cache:
                row = np.zeros((TILE, width, 3), dtype=np.uint8)
                here = placed[r * cols : (r + 1) * cols]
                for c, pixels in enumerate(pool.map(_pixels, here)):
                    row[:, c * TILE : (c + 1) * TILE] = pixels
                cache[r] = row
            return cache[r]

        for row0 in range(0, height, STRIP):
            n = min(STRIP, height - row0)
            first, last = row0 // TILE, (row0 + n - 1) // TILE
            for r in [r for r in cache if r < first]:
                del cache[r]
            strip = np.concatenate([tile_row(r) for r in range(first, last + 1)])
            offset = row0 - first * TILE
            pixels = strip[offset : offset + n].transpose(2, 0, 1)
            dst.write(pixels, window=Window(0, row0, width, n))
    unique = len({t.path for t in placed})
    return Mosaic(path, count, unique, labels, splits, time.perf_counter() - started)


def check_alignment(mosaic: Mosaic, loaded: LoadedModel) -> str:
    """Plan a torch run on the mosaic and check that its patch grid is the tile grid."""
    from rsscgeo.scene.options import ClassifyOptions
    from rsscgeo.scene.plan import plan_scene

    plan = plan_scene([mosaic.path], loaded, ClassifyOptions(backend="torch"))
    grid = plan.grid
    tiles = Affine(PIXEL_SIZE * TILE, 0, ORIGIN[0], 0, -PIXEL_SIZE * TILE, ORIGIN[1])
    ok = (
        grid.patch == grid.stride == TILE
        and (grid.rows, grid.cols) == (mosaic.rows, mosaic.cols)
        and grid.output_transform.almost_equals(tiles)
    )
    if not ok:
        raise SystemExit(
            f"patch grid {grid.rows}x{grid.cols} of {grid.patch} px every {grid.stride} px "
            f"({grid.output_transform!r}) is not the {mosaic.rows}x{mosaic.cols} tile grid"
        )
    return f"patch grid = tile grid ({grid.rows}x{grid.cols}); {plan.notes[0]}"


# --------------------------------------------------------------------------- map check


def map_check(out_tif: Path, mosaic: Mosaic) -> dict[str, float]:
    """How often the output map's class is the class of the tile under each patch.

    Returns:
        ``top1`` (argmax of the probability bands = tile class), ``class_band`` (class
        band = tile class; Uncertain is wrong), ``uncertain`` and ``skipped`` fractions,
        ``committed`` (class band accuracy where not Uncertain), ``top1 <split>`` for
        each split of the bundled model, and ``patches`` (tiles checked).
    """
    with rasterio.open(out_tif) as src:
        bands = src.read()
        transform = src.transform
    tiles = Affine(PIXEL_SIZE * TILE, 0, ORIGIN[0], 0, -PIXEL_SIZE * TILE, ORIGIN[1])
    if bands.shape[1:] != mosaic.labels.shape or not transform.almost_equals(tiles):
        raise SystemExit(f"{out_tif}: one pixel per tile expected, got {bands.shape} {transform}")
    if len(bands) < 2:
        raise SystemExit(f"{out_tif} has no probability bands")
    has = mosaic.labels >= 0
    labels = mosaic.labels[has]
    classes = bands[0][has].astype(np.int64)
    top1 = bands[1:, has].argmax(0)
    committed = (classes != UNCERTAIN_VALUE) & (classes != CLASS_NODATA)
    check = {
        "patches": float(has.sum()),
        "top1": float((top1 == labels).mean()),
        "class_band": float((classes == labels).mean()),
        "uncertain": float((classes == UNCERTAIN_VALUE).mean()),
        "skipped": float((classes == CLASS_NODATA).mean()),
        "committed": float((classes == labels)[committed].mean()) if committed.any() else 0.0,
    }
    splits = mosaic.splits[has]
    for split in ("train", "val", "test"):
        where = splits == split
        if where.any():
            check[f"top1 {split}"] = float((top1[where] == labels[where]).mean())
            check[f"n {split}"] = float(where.sum())
    return check


def _check_line(check: dict[str, float]) -> str:
    parts = [
        f"top-1 = tile class {check['top1']:.4f}",
        f"class band = tile class {check['class_band']:.4f} "
        f"(Uncertain {check['uncertain']:.3f}, committed {check['committed']:.4f})",
    ]
    splits = [
        f"{s} {check[f'top1 {s}']:.4f} (n={check[f'n {s}']:.0f})"
        for s in ("train", "val", "test")
        if f"top1 {s}" in check
    ]
    return "; ".join(parts) + "; top-1 by split: " + ", ".join(splits)


# --------------------------------------------------------------------------- CLI runs


def rsscgeo_command() -> list[str]:
    """The ``rsscgeo`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "rsscgeo"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from rsscgeo.cli.main import cli; cli()"]


def timed_cli(arguments: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``rsscgeo ARGUMENTS``; (wall seconds from spawn to exit, its own loop seconds)."""
    started = time.perf_counter()
    result = subprocess.run(
        [*rsscgeo_command(), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"rsscgeo {' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    match = LOOP.search(result.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def demo_runs(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``make demo``'s command per backend, fresh cache: cold first, then ``--demo-repeats``."""
    cache = workdir / "demo-cache"  # empty: the first ONNX run exports the model
    env = {**os.environ, "RSSCGEO_CACHE_DIR": str(cache)}
    out = workdir / "demo"
    out.mkdir()
    arguments = [
        "classify",
        str(DEMO_SCENE),
        f"--out={out / 'naip_2020_labels.gpkg'}",
        f"--out={out / 'naip_2020_labels.tif'}",
        f"--preview={out / 'naip_2020_map.png'}",
        "--overwrite",
    ]
    runs: dict[str, Any] = {b: {"cold": None, "warm": [], "loop": []} for b in args.backends}
    print(f"\nmake demo's command on {DEMO_SCENE.name} (RSSCGEO_CACHE_DIR={cache}, empty):")
    for repeat in range(1 + args.demo_repeats):
        for backend in args.backends:
            wall, loop = timed_cli([*arguments, f"--backend={backend}"], env)
            kind = "cold" if repeat == 0 else "warm"
            if repeat == 0:
                runs[backend]["cold"] = wall
            else:
                runs[backend]["warm"].append(wall)
            runs[backend]["loop"].append(loop)
            print(f"  {backend:<6} {kind} cache: {wall:6.2f} s whole process ({loop:.2f} s loop)")
    for backend in args.backends:
        warm = runs[backend]["warm"]
        if warm:
            runs[backend]["warm_median"] = median(warm)
            runs[backend]["warm_best"] = min(warm)
    return runs


# --------------------------------------------------------------------------- driver


def keep_best(results: Results, figure: Figure) -> None:
    """Print ``figure``; keep it unless the same path was faster before (best of repeats)."""
    before = results.get(figure.model, figure.path, figure.backend)
    results.add(figure)
    if before is not None and before.patches_per_second > figure.patches_per_second:
        results.figures[(figure.model, figure.path, figure.backend)] = before


def run_backend(
    args: argparse.Namespace,
    workdir: Path,
    mosaic: Mosaic,
    backend: str,
    results: Results,
    checks: dict[str, dict[str, float]],
    check: bool,
) -> Path | None:
    """One e2e child and one ``rsscgeo classify`` run on ``mosaic``; the first output."""
    label = f"{mosaic.count}p"
    patches = mosaic.rows * mosaic.cols
    pixels = float(patches * TILE * TILE)
    outputs: list[Path] = []
    if "e2e" in args.paths:
        out = workdir / f"labels_{mosaic.count}_{backend}_e2e.tif"
        started = time.perf_counter()
        report = run_e2e_child(
            mosaic.path, out, "bundled", args, backend=backend, probabilities=True
        )
        wall = time.perf_counter() - started
        note = (
            f"loop {report['loop_seconds']:.2f} s; peak RSS {report['peak_rss_mb']:.0f} MiB; "
            f"{report['backend_note'][:40]}"
        )
        keep_best(results, Figure(label, "e2e", patches, report["seconds"], pixels, note, backend))
        keep_best(
            results, Figure(label, "e2e-proc", patches, wall, pixels, "spawn to exit", backend)
        )
        outputs.append(out)
        if check:
            checks[f"{label} {backend} e2e"] = map_check(out, mosaic)
            print(f"    map check: {_check_line(checks[f'{label} {backend} e2e'])}", flush=True)
    if "cli" in args.paths:
        out = workdir / f"labels_{mosaic.count}_{backend}_cli.tif"
        cli_args = [
            "classify",
            str(mosaic.path),
            f"--out={out}",
            "--probabilities",
            f"--backend={backend}",
            f"--device={args.device}",
            f"--batch-size={args.batch_size}",
            "--overwrite",
        ]
        if args.workers:
            cli_args.append(f"--workers={args.workers}")
        wall, loop = timed_cli(cli_args)
        note = f"rsscgeo classify, spawn to exit; loop {loop:.2f} s"
        keep_best(results, Figure(label, "whole-proc", patches, wall, pixels, note, backend))
        outputs.append(out)
        if check:
            checks[f"{label} {backend} cli"] = map_check(out, mosaic)
            print(f"    map check: {_check_line(checks[f'{label} {backend} cli'])}", flush=True)
    return outputs[0] if outputs else None


def measure_mosaic(
    args: argparse.Namespace,
    workdir: Path,
    tiles: Sequence[Tile],
    count: int,
    runners: dict[str, LoadedModel],
    results: Results,
    checks: dict[str, dict[str, float]],
) -> None:
    """Write one mosaic and run e2e, whole-process and TorchGeo paths on it."""
    label = f"{count}p"
    print(f"\nload average {os.getloadavg()[0]:.2f}", flush=True)
    mosaic = write_mosaic(workdir / f"mosaic_{count}.tif", tiles, count, args.seed)
    size_mb = mosaic.path.stat().st_size / 2**20
    reuse = f"; {count - mosaic.unique} reused cyclically" if count > mosaic.unique else ""
    print(
        f"\nmosaic of {count} AID tiles ({mosaic.unique} distinct{reuse}): {mosaic.cols}x"
        f"{mosaic.rows} tiles, {mosaic.cols * TILE}x{mosaic.rows * TILE} px, {size_mb:.0f} "
        f"MiB, written in {mosaic.seconds:.1f} s; {check_alignment(mosaic, runners['torch'])}",
        flush=True,
    )
    outputs: dict[str, Path] = {}
    backends = [b for b in args.backends if b in runners]
    for repeat in range(args.repeats):
        # Alternate the order (torch, onnx, onnx, torch, ...) so drift favours neither.
        for backend in backends if repeat % 2 == 0 else backends[::-1]:
            out = run_backend(args, workdir, mosaic, backend, results, checks, repeat == 0)
            if out is not None:
                outputs.setdefault(backend, out)
    if {"torch", "onnx"} <= outputs.keys():
        print(f"    {_agreement(compare_outputs(outputs['torch'], outputs['onnx']))}")
    if "torchgeo" in args.paths:
        pixels = float(mosaic.rows * mosaic.cols * TILE * TILE)
        done, total, secs = torchgeo_loop(
            mosaic.path, runners["torch"], args.batch_size, args.tg_workers, args.max_seconds
        )
        note = f"DataLoader num_workers={args.tg_workers}"
        if done < total:
            note += f"; stopped at {done}/{total} patches (--max-seconds)"
        results.add(Figure(label, "torchgeo", done, secs, pixels * done / total, note))
    mosaic.path.unlink()


def model_bounds(
    args: argparse.Namespace, results: Results, runners: dict[str, LoadedModel]
) -> None:
    """The model-only bound per backend, up to the largest mosaic's patches; best so far kept."""
    for backend in args.backends:
        if backend not in runners:
            continue
        before = results.get("bound", "model", backend)
        total = max(args.patches)
        model_bound(args, results, "bound", backend, runners[backend], total, float(TILE * TILE))
        after = results.figures[("bound", "model", backend)]
        if before is not None and before.patches_per_second > after.patches_per_second:
            results.figures[("bound", "model", backend)] = before


def report(args: argparse.Namespace, results: Results) -> None:
    """One line per mosaic and path, then the issue's ratios on each mosaic."""
    print("\npatches/s (model-only: one bound for all mosaics, the best of its measurements):")
    print(f"  {'mosaic':>6} {'path':<11} " + " ".join(f"{b:>8}" for b in args.backends))
    for count in args.patches:
        for path in ("e2e", "e2e-proc", "whole-proc", "torchgeo"):
            row = [results.get(f"{count}p", path, b) for b in args.backends]
            if any(row):
                cells = [f"{f.patches_per_second:8.1f}" if f else f"{'-':>8}" for f in row]
                print(f"  {count:>6} {path:<11} {' '.join(cells)}")
    bound = {b: results.get("bound", "model", b) for b in args.backends}
    print(
        "  model-only " + " ".join(f"{b} {f.patches_per_second:.1f}" for b, f in bound.items() if f)
    )
    print("\nratios of the onnx rate (targets: issue 11, on the 1,600-patch mosaic):")
    for count in args.patches:
        label = f"{count}p"
        tg = results.get(label, "torchgeo", "torch")
        for path in ("whole-proc", "e2e-proc", "e2e"):
            onnx = results.get(label, path, "onnx")
            if onnx is None:
                continue
            against = {
                "model": bound.get("onnx"),
                "torch": results.get(label, path, "torch"),
                "torchgeo": tg,
            }
            for key, other in against.items():
                if other is None:
                    continue
                value = onnx.patches_per_second / other.patches_per_second
                target = TARGETS[key]
                verdict = "meets" if value >= target else "MISSES"
                name = f"{path}(onnx) / {key}"
                print(
                    f"  {count:>6} {name:<28} {onnx.patches_per_second:7.1f} / "
                    f"{other.patches_per_second:<7.1f} = {value:5.2f}x  ({verdict} >= {target:g}"
                    f"{'' if count == 1600 else ', target set for 1,600'})"
                )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patches", default="1600,10000", help="tiles per mosaic, comma-separated")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--data", type=Path, default=AID, help="aid150 folder")
    parser.add_argument("--seed", type=int, default=0, help="tile order")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="cap per model-only and TorchGeo-loop measurement (e2e runs cover the mosaic)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="classify workers")
    parser.add_argument("--tg-workers", type=int, default=cores, help="DataLoader num_workers")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="e2e and whole-process runs per backend and mosaic, alternating the backend "
        "order; the fastest is kept (all are printed)",
    )
    parser.add_argument("--demo-repeats", type=int, default=2, help="warm-cache demo runs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.patches = [int(n) for n in args.patches.split(",") if n]
    args.paths = [p for p in args.paths.split(",") if p]
    args.backends = [b for b in args.backends.split(",") if b]
    if not set(args.paths) <= set(PATHS) or not set(args.backends) <= set(BACKENDS):
        parser.error(f"--paths among {PATHS}, --backends among {BACKENDS}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Write each mosaic, measure every path and print the comparison."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, rasterio "
        f"{rasterio.__version__}; {os.cpu_count()} cores; batch {args.batch_size}; load "
        f"average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    card = read_card(BUNDLED_MODEL)
    if (card.patch_size, card.gsd) != (TILE, PIXEL_SIZE):
        raise SystemExit(f"bundled model: patch {card.patch_size}, gsd {card.gsd}: not tiles")
    tiles = aid_tiles(args.data, card.class_names, SPLIT)
    results = Results()
    checks: dict[str, dict[str, float]] = {}
    demo: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rsscgeo-aid-mosaic-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if not os.environ.get("RSSCGEO_CACHE_DIR"):
            os.environ["RSSCGEO_CACHE_DIR"] = str(workdir / "cache")
        runners: dict[str, LoadedModel] = {}
        if "onnx" in args.backends:
            onnx, why = onnx_model("bundled")
            print(f"onnx: {why}", flush=True)
            if onnx is not None:
                runners["onnx"] = onnx
        runners["torch"] = get_model("bundled")
        print(f"  {'mosaic':<8} {'path':<12} {'backend':<7} {'patches':>15} {'seconds':>10}")
        if "model" in args.paths:
            model_bounds(args, results, runners)
        for count in args.patches:
            measure_mosaic(args, workdir, tiles, count, runners, results, checks)
        if "model" in args.paths and args.repeats > 1:
            print("\nmodel-only again (the faster of the two measurements is the bound):")
            model_bounds(args, results, runners)
        if "demo" in args.paths:
            demo = demo_runs(args, workdir)
    report(args, results)
    figures = {
        " ".join(key): {"patches": f.patches, "seconds": f.seconds, "rate": f.patches_per_second}
        for key, f in results.figures.items()
    }
    print("@@json " + json.dumps({"figures": figures, "checks": checks, "demo": demo}))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {load} (1/5/15 min)")


if __name__ == "__main__":
    main()
