"""Worker scaling of ``classify_scene``: 1 vs N local Dask worker processes, end to end.

Writes one synthetic RGB uint8 scene (the same generator as ``classify_throughput.py``:
tiled 256x256, deflate, 2 m pixels, so the bundled model reads it at native
resolution), then classifies it with the bundled model on an embedded local cluster of
worker processes, for each worker count in ``--workers``, ``--repeats`` times each in
alternating order. Each worker process uses ``--torch-threads`` intra-op threads
(default 1, so one worker uses one core and the comparison measures scaling across
processes; ``0`` lets the engine divide the cores among the workers, which is what
``rsscgeo classify --processes`` does).

Reported per run: the cluster start (processes spawned, model sent to each worker) and
the classification itself (``classify_scene``, GeoTIFF output, progress bar off), both
wall-clock; the speed-up uses the classification time of the best run per count.

Example::

    .venv/bin/python benchmarks/worker_scaling.py --size 2048 --workers 1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classify_throughput import grid_patches, write_scene

from rsscgeo.modelfile import BUNDLED_MODEL, load_model
from rsscgeo.scene.classify import classify_scene
from rsscgeo.scene.engine import open_engine
from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs


def run_once(
    scene: Path, out: Path, workers: int, torch_threads: int | None
) -> tuple[float, float]:
    """(cluster start seconds, classification seconds) for one run."""
    loaded = load_model(BUNDLED_MODEL)
    started = time.perf_counter()
    with open_engine(
        workers=workers, processes=True, device="cpu", torch_threads=torch_threads
    ) as engine:
        engine.install(loaded)  # spawn + model to every worker: part of the start-up
        ready = time.perf_counter()
        outputs = ClassifyOutputs(geotiff=out, overwrite=True)
        classify_scene([scene], loaded, ClassifyOptions(), outputs, engine, progress=False)
        done = time.perf_counter()
    return ready - started, done - ready


def main() -> None:
    """Parse options, write the scene, run the matrix and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="per worker process; 0: the engine's rule"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    threads = args.torch_threads or None
    patches = grid_patches(args.size, 150)
    print(f"{os.cpu_count()} cores; scene {args.size}^2 RGB uint8; {patches} patches of 150 px")
    print(f"torch threads per worker: {threads or 'cores / workers'}")
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        scene = Path(folder) / "scene.tif"
        write_scene(scene, args.size)
        order = [c for r in range(args.repeats) for c in (counts if r % 2 == 0 else counts[::-1])]
        for count in order:
            start, seconds = run_once(scene, Path(folder) / "out.tif", count, threads)
            best[count] = min(best.get(count, float("inf")), seconds)
            print(
                f"  {count} worker process(es): start {start:5.1f} s, classify {seconds:6.1f} s "
                f"= {patches / seconds:6.1f} patches/s"
            )
    base = best[counts[0]]
    for count in counts[1:]:
        print(
            f"speed-up {count} vs {counts[0]} workers: {base / best[count]:.2f}x "
            f"(best classify times {best[count]:.1f} s vs {base:.1f} s; target >= 1.7x for 2)"
        )


if __name__ == "__main__":
    main()
