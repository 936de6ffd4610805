"""Processes for tests that run classify for real: Dask clusters, CLI runs, outputs.

Every test that uses these starts its own processes on 127.0.0.1 and stops them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from rsscgeo import ClassifyOptions, ClassifyOutputs, LoadedModel, classify_scene, open_engine

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCENE = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"  # 934 x 723 px, 5 m
# At the scene's native 5 m (read at the model's 2 m it would have 6x the patches),
# stride 50 and 100 px chunks: 13 x 17 patches in 7 x 9 = 63 chunks, so there is time
# to interrupt a run between chunks.
# PyTorch, whichever backend is the default: the test models sleep in forward().
SMALL_CHUNKS = ("--gsd", "5", "--stride", "50", "--chunk-size", "100", "--backend", "torch")
CHUNKS = 63

# Patch options of the Python runs below: 63 chunks of the demo scene at 5 m.
SMALL = ClassifyOptions(gsd=5.0, stride=50, chunk_size=100, backend="torch")


def classify_locally(loaded: LoadedModel, out: tuple[Path, Path]) -> None:
    """The reference run: one task thread with all cores' torch threads, like each worker."""
    with open_engine(workers=1) as engine:
        classify_scene([SCENE], loaded, SMALL, ClassifyOutputs(*out), engine, progress=False)


class Cluster:
    """A `dask scheduler` and `dask worker` processes, as a user would start them."""

    def __init__(self, folder: Path, workers: int, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
        self.file = folder / "scheduler.json"
        self.scheduler = self._start(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", self.file],
            "scheduler",
        )  # fmt: skip
        self.address = self._wait_for_address()
        self.workers = [self.start_worker(f"w{i}") for i in range(workers)]
        if workers:
            self.wait_for_workers(workers)

    def start_worker(self, name: str, python: list[str] | None = None) -> subprocess.Popen[bytes]:
        """One single-threaded worker process without a nanny (so kill -9 removes it)."""
        command = python or [str(BIN / "dask"), "worker"]
        return self._start(
            [*command, self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
             "--memory-limit", "0", "--name", name],
            name,
        )  # fmt: skip

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(count, timeout=60)

    def stop(self) -> None:
        # Workers first, while the scheduler can still see them off quickly.
        for group in (self.workers, [self.scheduler]):
            for process in group:
                if process.poll() is None:
                    process.terminate()
            for process in group:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _start(self, command: list[object], name: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (lives with the process)
        return subprocess.Popen([str(c) for c in command], stdout=log, stderr=log, env=self.env)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.file.exists():
                try:
                    return str(json.loads(self.file.read_text())["address"])
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.1)
        raise RuntimeError("the dask scheduler did not start")


def read_outputs(gpkg: Path, tif: Path) -> tuple[np.ndarray, gpd.GeoDataFrame]:
    with rasterio.open(tif) as src:
        pixels = src.read()
    return pixels, gpd.read_file(gpkg)


def assert_same_outputs(a: tuple[Path, Path], b: tuple[Path, Path]) -> None:
    pixels_a, frame_a = read_outputs(*a)
    pixels_b, frame_b = read_outputs(*b)
    np.testing.assert_array_equal(pixels_a, pixels_b)
    assert frame_a.drop(columns="geometry").equals(frame_b.drop(columns="geometry"))
    assert frame_a.geometry.geom_equals(frame_b.geometry).all()


def outputs(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.gpkg", folder / f"{name}.tif"


def rsscgeo_classify(*args: object, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [str(BIN / "rsscgeo"), "classify", *map(str, args)], stdout=sink, stderr=sink
        )


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
