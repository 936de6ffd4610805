"""Classify on real Dask clusters and under failure: workers killed, runs killed, races.

Every test starts its own processes on 127.0.0.1 and stops them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import assert_one_line_error
from helpers import SlowMeanColour

from rsscgeo import load_model
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"  # 934 x 723 px, 5 m
BIN = Path(sys.executable).parent
# At the scene's native 5 m (read at the model's 2 m it would have 6x the patches),
# stride 50 and 100 px chunks: 13 x 17 patches in 7 x 9 = 63 chunks, so there is time
# to interrupt a run between chunks.
SMALL_CHUNKS = ("--gsd", "5", "--stride", "50", "--chunk-size", "100")


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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    folder = tmp_path / "cluster"
    folder.mkdir()
    started = Cluster(folder, workers=2)
    yield started
    started.stop()


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


def test_scheduler_run_matches_the_local_run(tmp_path: Path, run_cli, cluster: Cluster) -> None:
    local, remote = outputs(tmp_path, "local"), outputs(tmp_path, "remote")
    args = ("classify", SCENE, *SMALL_CHUNKS)
    # One local task thread gets all cores' torch threads, as each single-threaded
    # worker does: CPU float results depend on the intra-op thread count.
    local_run = run_cli(*args, "--out", local[0], "--out", local[1], "--workers", "1")
    assert local_run.exit_code == 0, local_run.output
    result = run_cli(*args, "--out", remote[0], "--out", remote[1], "--scheduler", cluster.address)
    assert result.exit_code == 0, result.output
    assert f"Dask cluster at {cluster.address}: 2 workers" in result.output
    assert_same_outputs(local, remote)
    # The tasks really ran on the workers, each of which got the model once.
    for name in ("w0", "w1"):
        log = (cluster.folder / f"{name}.log").read_text()
        assert log.count("Starting Worker plugin rsscgeo-model") == 1, log


def test_the_address_can_come_from_the_environment(
    tmp_path: Path, run_cli, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    gpkg = tmp_path / "env.gpkg"
    result = run_cli("classify", SCENE, "--out", gpkg)
    assert result.exit_code == 0, result.output
    assert f"Dask cluster at {cluster.address}" in result.output


def test_a_killed_worker_costs_only_its_chunks(tmp_path: Path, cluster: Cluster) -> None:
    from rsscgeo.scene.classify import classify_scene
    from rsscgeo.scene.engine import open_engine

    card = load_model(BUNDLED_MODEL).card
    loaded = LoadedModel(SlowMeanColour(seconds=0.1).eval(), card)
    options = {"gsd": 5.0, "stride": 50, "chunk_pixels": 100, "progress": False}
    reference = outputs(tmp_path, "reference")
    classify_scene(
        [SCENE], loaded, gpkg=reference[0], geotiff=reference[1], workers=1, **options
    )  # one task thread with all cores' torch threads, like each worker

    disturbed = outputs(tmp_path, "disturbed")
    journal = tmp_path / ".disturbed.gpkg.journal"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with open_engine(cluster.address) as engine:
                classify_scene(
                    [SCENE], loaded, gpkg=disturbed[0], geotiff=disturbed[1], engine=engine,
                    **options,
                )  # fmt: skip
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while len(list(journal.glob("chunk-*.npz"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = cluster.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and not failure, failure
    assert victim.wait() == -signal.SIGKILL
    assert_same_outputs(reference, disturbed)


def test_unreachable_scheduler_is_one_line(tmp_path: Path, run_cli) -> None:
    gpkg = tmp_path / "x.gpkg"
    result = run_cli("classify", SCENE, "--out", gpkg, "--scheduler", "tcp://127.0.0.1:9")
    assert_one_line_error(result, "tcp://127.0.0.1:9", "dask scheduler")
    assert sorted(os.listdir(tmp_path)) == []


def test_workers_without_rsscgeo_give_one_line(tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = Cluster(folder, workers=0)
    # A worker whose Python cannot import rsscgeo (as on a cluster set up without it).
    hide = "import sys; sys.modules['rsscgeo'] = None; from distributed.cli.dask_worker import main; main()"  # noqa: E501
    cluster.workers.append(cluster.start_worker("bare", [sys.executable, "-c", hide]))
    try:
        cluster.wait_for_workers(1)
        gpkg = tmp_path / "x.gpkg"
        result = run_cli("classify", SCENE, "--out", gpkg, "--scheduler", cluster.address)
        assert_one_line_error(result, "rsscgeo", "install rsscgeo")
        assert not gpkg.exists()
    finally:
        cluster.stop()


def test_a_worker_that_cannot_see_the_scene_is_one_line(tmp_path: Path) -> None:
    from rsscgeo.errors import SceneError
    from rsscgeo.scene.reader import SceneReader

    reader = SceneReader((tmp_path / "elsewhere.tif",), (1, 2, 3), (5.0, 5.0))
    with pytest.raises(SceneError, match="same path") as caught:
        reader.dataset  # noqa: B018 (opening is the point)
    assert "\n" not in str(caught.value)


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


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume(tmp_path: Path) -> None:
    log = tmp_path.parent / f"{tmp_path.name}.log"
    args = (SCENE, *SMALL_CHUNKS, "--workers", "1")
    reference = outputs(tmp_path, "reference")
    done = rsscgeo_classify(*args, "--out", reference[0], "--out", reference[1], log=log)
    assert done.wait(timeout=300) == 0, log.read_text()

    run = outputs(tmp_path, "run")
    journal = tmp_path / ".run.gpkg.journal"

    def journaled() -> int:
        return len(list(journal.glob("chunk-*.npz")))

    # Killed while starting up (before any chunk), after 5 chunks, after 30 chunks,
    # then once more after all 63 chunks are journaled (while the outputs are written).
    points = [lambda: time.sleep(1.5) or True, lambda: journaled() >= 5, lambda: journaled() >= 30]
    points.append(lambda: journaled() >= 63)
    killed, kills = True, 0
    for index, point in enumerate(points):
        resume = ("--resume",) if index else ()
        process = rsscgeo_classify(*args, "--out", run[0], "--out", run[1], *resume, log=log)
        wait_for(lambda point=point, process=process: point() or process.poll() is not None)
        if process.poll() is not None:  # it finished before the kill point came
            assert process.returncode == 0, log.read_text()
            killed = False
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 3  # at least before any chunk, after 5 and after 30 chunks
    if killed:
        final = rsscgeo_classify(*args, "--out", run[0], "--out", run[1], "--resume", log=log)
        assert final.wait(timeout=300) == 0, log.read_text()
    assert_same_outputs(reference, run)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        ["reference.gpkg", "reference.qml", "reference.tif", "reference.tif.aux.xml",
         "run.gpkg", "run.qml", "run.tif", "run.tif.aux.xml"]
    )  # fmt: skip


@pytest.mark.slow
def test_two_runs_on_one_output_one_refuses(tmp_path: Path, run_cli) -> None:
    log = tmp_path.parent / f"{tmp_path.name}.log"
    args = (SCENE, *SMALL_CHUNKS, "--workers", "1")
    reference = outputs(tmp_path / "ref", "reference")
    reference[0].parent.mkdir()
    assert run_cli("classify", *args, "--out", reference[0], "--out", reference[1]).exit_code == 0

    first = outputs(tmp_path, "shared")
    process = rsscgeo_classify(*args, "--out", first[0], "--out", first[1], log=log)
    wait_for(lambda: (tmp_path / ".shared.gpkg.journal").exists())
    second = run_cli("classify", *args, "--out", first[0], "--out", first[1], "--overwrite")
    assert_one_line_error(second, "another rsscgeo run is writing", "wait for it")
    assert process.wait(timeout=300) == 0, log.read_text()
    assert_same_outputs(reference, first)
    assert not list(tmp_path.glob(".shared*"))  # no lock, journal or temporary file left


def test_out_dir_classifies_each_scene_on_worker_processes(tmp_path: Path, run_cli) -> None:
    other = tmp_path / "in" / "naip copy é.tif"  # a space and unicode in the name
    other.parent.mkdir()
    other.write_bytes(SCENE.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "classify", SCENE, other, "--out-dir", out, "--format", "gpkg", "--format", "tif",
        "--processes", "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 worker processes" in result.output
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".gpkg", ".tif")) == [
        "naip copy é.gpkg", "naip copy é.tif", "naip_2020_rgbn.gpkg", "naip_2020_rgbn.tif",
    ]  # fmt: skip
    assert_same_outputs(outputs(out, "naip_2020_rgbn"), outputs(out, "naip copy é"))
    local = outputs(tmp_path, "local")
    assert run_cli("classify", SCENE, "--out", local[0], "--out", local[1]).exit_code == 0
    pixels, _ = read_outputs(*local)
    np.testing.assert_array_equal(pixels, read_outputs(*outputs(out, "naip_2020_rgbn"))[0])


def test_out_dir_refuses_two_scenes_of_one_name(tmp_path: Path, run_cli) -> None:
    twin = tmp_path / "a" / SCENE.name
    twin.parent.mkdir()
    twin.write_bytes(SCENE.read_bytes())
    result = run_cli("classify", SCENE, twin, "--out-dir", tmp_path)
    assert_one_line_error(result, "two scenes are named", "rename one")
