"""Classify under failure: signals, workers lost while the model is sent, a full disk,
another model's journal, and bad input found before any cluster starts.

Every test that needs processes (a `rsscgeo classify` run, a Dask cluster) starts its
own and stops them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from clusters import (
    CHUNKS,
    SCENE,
    SMALL,
    SMALL_CHUNKS,
    Cluster,
    assert_same_outputs,
    classify_locally,
    outputs,
    rsscgeo_classify,
    wait_for,
)
from helpers import (
    FLAT_MODEL,
    SlowMeanColour,
    SlowToUnpickle,
    assert_one_line_error,
    write_raster,
)

from rsscgeo import ClassifyOutputs, classify_scene, load_model, open_engine
from rsscgeo.errors import JournalMismatchError
from rsscgeo.modelfile import LoadedModel

# What a run leaves beside its outputs while it runs or after it stopped.
TEMPORARY = (".part", ".work.tif", ".lock", "-journal", "-wal")


def leftovers(folder: Path) -> list[str]:
    """Temporary files and locks in ``folder`` (the journal folder is not one)."""
    return sorted(p.name for p in folder.iterdir() if any(t in p.name for t in TEMPORARY))


def journaled(journal: Path) -> int:
    return len(list(journal.glob("chunk-*.npz")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted CLI run of the bundled model on the demo scene (63 chunks)."""
    folder = tmp_path_factory.mktemp("reference")
    out = outputs(folder, "reference")
    log = folder / "log"
    args = (SCENE, *SMALL_CHUNKS, "--workers", "1", "--out", out[0], "--out", out[1])
    run = rsscgeo_classify(*args, log=log)
    assert run.wait(timeout=600) == 0, log.read_text()
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_signal_stops_the_run_cleanly_and_resume_completes_it(
    tmp_path: Path, reference: tuple[Path, Path], signum: int
) -> None:
    out = outputs(tmp_path, "run")
    journal = tmp_path / ".run.gpkg.journal"
    log = tmp_path.parent / f"{tmp_path.name}.log"
    args = (SCENE, *SMALL_CHUNKS, "--workers", "1", "--out", out[0], "--out", out[1])
    process = rsscgeo_classify(*args, log=log)
    wait_for(lambda: journaled(journal) >= 3 or process.poll() is not None, timeout=300)
    assert process.poll() is None, "the run ended before it could be interrupted"
    sent = time.monotonic()
    process.send_signal(signum)
    process.wait(timeout=30)
    stopped_after = time.monotonic() - sent

    assert process.returncode == 128 + signum, log.read_text()
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
    text = log.read_text()
    assert "Traceback" not in text
    done = journaled(journal)
    assert done >= 3
    last = text.strip().splitlines()[-1]
    assert last == f"interrupted after {done} of {CHUNKS} chunks; rerun with --resume to continue"
    assert not out[0].exists() and not out[1].exists()
    assert leftovers(tmp_path) == []  # temporary outputs and locks removed, journal kept

    resumed = rsscgeo_classify(*args, "--resume", log=log)
    assert resumed.wait(timeout=600) == 0, log.read_text()
    assert_same_outputs(reference, out)
    assert not journal.exists() and leftovers(tmp_path) == []


# Kill moments of a worker: while it unpickles the model (the plugin is being
# registered), right after (before any chunk), and after 10 chunks.
MOMENTS = ["unpickling", "unpickled", "chunks"]


@pytest.fixture
def slow_plugin_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two workers that each take 3 s to unpickle the model, with markers of when."""
    folder = tmp_path / "cluster"
    markers = tmp_path / "markers"
    folder.mkdir()
    markers.mkdir()
    env = {"RSSCGEO_TEST_MARKERS": str(markers), "RSSCGEO_TEST_UNPICKLE_SECONDS": "3"}
    started = Cluster(folder, workers=2, env=env)
    yield started
    started.stop()


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_workers_lost_at_any_moment_cost_nothing(
    tmp_path: Path, slow_plugin_cluster: Cluster, moment: str
) -> None:
    card = load_model(FLAT_MODEL).card  # the fake networks answer its 30 classes
    loaded = LoadedModel(SlowToUnpickle(seconds=0.05).eval(), card)
    reference = outputs(tmp_path, "reference")
    classify_locally(LoadedModel(SlowMeanColour(seconds=0).eval(), card), reference)

    disturbed = outputs(tmp_path, "disturbed")
    journal = tmp_path / ".disturbed.gpkg.journal"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with open_engine(slow_plugin_cluster.address) as engine:
                classify_scene(
                    [SCENE], loaded, SMALL, ClassifyOutputs(*disturbed), engine, progress=False
                )
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    victim = slow_plugin_cluster.workers[0]
    marker = (
        tmp_path
        / "markers"
        / f"{'unpickled' if moment == 'unpickled' else 'unpickling'}-{victim.pid}"
    )
    if moment == "chunks":
        wait_for(lambda: journaled(journal) >= 10 or not thread.is_alive(), timeout=300)
    else:
        wait_for(lambda: marker.exists() or not thread.is_alive(), timeout=300)
    assert thread.is_alive(), failure
    os.kill(victim.pid, signal.SIGKILL)
    # A worker that joins after the loss gets the model from the scheduler.
    slow_plugin_cluster.workers.append(slow_plugin_cluster.start_worker("late"))
    thread.join(timeout=300)
    assert not thread.is_alive() and not failure, failure
    assert victim.wait() == -signal.SIGKILL
    assert_same_outputs(reference, disturbed)
    # It may join after the job ended: the scheduler still gives it the model.
    late_log = slow_plugin_cluster.folder / "late.log"
    wait_for(lambda: "Starting Worker plugin rsscgeo-model" in late_log.read_text(), 120)


# Mount calls are bounded: in some sandboxes they block instead of failing.
MOUNT_SECONDS = 60


def _mount_tmpfs(folder: Path, size: str) -> None:
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    subprocess.run(command, check=True, timeout=MOUNT_SECONDS)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KiB tmpfs: too small for the outputs of the demo run (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        _mount_tmpfs(folder, "160k")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False, timeout=MOUNT_SECONDS)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_resumable(
    small_disk: Path, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    out = outputs(small_disk, "run")
    log = tmp_path / "log"
    args = (SCENE, *SMALL_CHUNKS, "--workers", "1", "--out", out[0], "--out", out[1])
    assert rsscgeo_classify(*args, log=log).wait(timeout=600) == 1
    text = log.read_text().strip()
    assert "Traceback" not in text
    last = text.splitlines()[-1]
    assert last.startswith("Error: no space left on the device of"), text
    assert last.endswith("free some space and rerun with --resume."), text
    assert not out[0].exists() and not out[1].exists()
    assert leftovers(small_disk) == []
    journal = small_disk / ".run.gpkg.journal"
    assert journal.is_dir()

    remount = ["mount", "-o", "remount,size=64m", str(small_disk)]
    subprocess.run(remount, check=True, timeout=MOUNT_SECONDS)
    assert rsscgeo_classify(*args, "--resume", log=log).wait(timeout=600) == 0, log.read_text()
    assert_same_outputs(reference, out)


@pytest.mark.slow
def test_resuming_with_another_model_is_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rsscgeo.scene.tasks as tasks

    card = load_model(FLAT_MODEL).card  # the fake networks answer its 30 classes
    first = LoadedModel(SlowMeanColour(seconds=0).eval(), card)
    second = LoadedModel(SlowMeanColour(seconds=0).eval(), card)
    with torch.no_grad():
        second.model.head.bias += 1  # type: ignore[operator]
    assert first.identity != second.identity
    out = outputs(tmp_path, "run")
    original, calls = tasks.ChunkWork.__call__, []

    def dies_after_two(self, chunk, loaded):  # type: ignore[no-untyped-def]
        calls.append(chunk)
        if len(calls) > 2:
            raise RuntimeError("power loss")
        return original(self, chunk, loaded)

    monkeypatch.setattr(tasks.ChunkWork, "__call__", dies_after_two)
    with open_engine(workers=1) as engine, pytest.raises(RuntimeError, match="power loss"):
        classify_scene([SCENE], first, SMALL, ClassifyOutputs(*out), engine, progress=False)
    monkeypatch.undo()

    resume = ClassifyOutputs(*out, resume=True)
    with open_engine(workers=1) as engine:
        with pytest.raises(JournalMismatchError) as caught:
            classify_scene([SCENE], second, SMALL, resume, engine, progress=False)
        message = str(caught.value)
        assert first.identity[:12] in message and second.identity[:12] in message
        assert "overwrite=True" in message and "--overwrite" in caught.value.cli_message()
        # The same model resumes; --overwrite with --resume starts over for another.
        classify_scene([SCENE], first, SMALL, resume, engine, progress=False)
        again = ClassifyOutputs(*out, overwrite=True, resume=True)
        classify_scene([SCENE], second, SMALL, again, engine, progress=False)


def test_bad_input_fails_before_any_cluster_is_reached(tmp_path: Path, run_cli) -> None:
    """A scene without a CRS is refused before the (unreachable) scheduler is tried."""
    import numpy as np
    from rasterio.transform import from_origin

    no_crs = write_raster(
        tmp_path / "nocrs.tif", np.zeros((3, 64, 64), np.uint8), None, from_origin(0, 64, 1, 1)
    )
    unreachable = ("--scheduler", "tcp://127.0.0.1:9")
    result = run_cli("classify", no_crs, "--out", tmp_path / "o.gpkg", *unreachable)
    assert_one_line_error(result, "no CRS")
    # The output checks come first too.
    result = run_cli("classify", SCENE, "--out", tmp_path / "o.gpkg", "--out", tmp_path / "x.shp")
    assert_one_line_error(result, ".gpkg", ".tif")


def test_folders_where_files_belong_are_one_line(tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "labels.gpkg"
    folder.mkdir()
    assert_one_line_error(run_cli("classify", SCENE, "--out", folder), "is a folder")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    result = run_cli("classify", scenes, "--out", tmp_path / "o.gpkg")
    assert_one_line_error(result, "is a folder, not a raster file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.gpkg", "scenes"]
