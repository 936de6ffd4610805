"""Classify on real Dask clusters: remote and local runs agree, runs killed, races.

Workers lost at several moments are in test_failures.py.

Every test starts its own processes on 127.0.0.1 and stops them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clusters import (
    SCENE,
    SMALL_CHUNKS,
    Cluster,
    assert_same_outputs,
    outputs,
    read_outputs,
    rsscgeo_classify,
    wait_for,
)
from helpers import assert_one_line_error


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    folder = tmp_path / "cluster"
    folder.mkdir()
    started = Cluster(folder, workers=2)
    yield started
    started.stop()


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_address_can_come_from_the_environment(
    tmp_path: Path, run_cli, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    gpkg = tmp_path / "env.gpkg"
    result = run_cli("classify", SCENE, "--out", gpkg)
    assert result.exit_code == 0, result.output
    assert f"Dask cluster at {cluster.address}" in result.output


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line(tmp_path: Path, run_cli) -> None:
    gpkg = tmp_path / "x.gpkg"
    result = run_cli("classify", SCENE, "--out", gpkg, "--scheduler", "tcp://127.0.0.1:9")
    assert_one_line_error(result, "tcp://127.0.0.1:9", "dask scheduler")
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
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
        ["reference.areas.csv", "reference.gpkg", "reference.qml", "reference.tif",
         "reference.tif.aux.xml", "run.areas.csv", "run.gpkg", "run.qml", "run.tif",
         "run.tif.aux.xml"]
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


@pytest.mark.slow
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
