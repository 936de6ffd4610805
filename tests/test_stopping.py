"""Cooperative stopping: signals are recorded, never raised, and honoured at safe points.

The end-to-end promises (exit status, last line, nothing written, resume identical)
are in ``test_failures.py``; ``benchmarks/signal_soak.py`` sends many signals at random
moments under load.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
import weakref
from pathlib import Path

import pytest
from clusters import SCENE, SMALL, outputs, rsscgeo_classify
from helpers import FLAT_MODEL, SlowMeanColour

from rsscgeo import ClassifyOutputs, classify_scene, load_model, open_engine
from rsscgeo.cli.main import stop_signals
from rsscgeo.errors import RunInterrupted
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.staging import Staging
from rsscgeo.stopping import STOP


def test_a_stop_signal_is_recorded_not_raised() -> None:
    with stop_signals(), STOP.deferred():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.05)  # the handler has run: nothing was raised here
        assert STOP.signum == signal.SIGTERM
        with pytest.raises(RunInterrupted) as caught:
            STOP.check("stopped here")
    assert caught.value.signum == signal.SIGTERM
    assert str(caught.value).startswith("stopped here")
    assert STOP.signum is None  # the command's request ends with it


@pytest.mark.parametrize("where", ["gc callback", "__del__", "weakref callback"])
def test_a_signal_handled_inside_a_finaliser_is_kept(where: str) -> None:
    """Python drops exceptions raised in finalisers; a recorded request cannot be dropped.

    Raising from the handler lost a SIGTERM this way inside Dask's gc callback.
    """
    sent: list[bool] = []

    def send_once(*_: object) -> None:
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGTERM)

    def in_gc_callback(phase: str, info: dict[str, int]) -> None:
        send_once()

    class Finalised:
        def __del__(self) -> None:
            send_once()

    class Plain:
        pass

    with stop_signals(), STOP.deferred():
        if where == "gc callback":
            gc.callbacks.append(in_gc_callback)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(in_gc_callback)
        elif where == "__del__":
            Finalised()  # dropped at once: __del__ runs here
        else:
            referent = Plain()
            reference = weakref.ref(referent, send_once)
            del referent  # the weakref callback runs here
            assert reference() is None
        assert sent and STOP.signum == signal.SIGTERM


def test_a_request_wakes_a_waiting_loop_at_once() -> None:
    threading.Timer(0.2, STOP.request, (signal.SIGHUP,)).start()
    started = time.monotonic()
    assert not STOP.wait(lambda: False, timeout=30)
    assert time.monotonic() - started < 5
    assert STOP.signum == signal.SIGHUP


@pytest.mark.slow
def test_a_stop_request_stops_classify_between_chunks(tmp_path: Path) -> None:
    """The engine waits for results in bounded steps, so a request made while every
    worker is busy stops the run within a chunk, with the journal kept."""
    card = load_model(FLAT_MODEL).card  # the fake networks answer its 30 classes
    slow = LoadedModel(SlowMeanColour(seconds=0.3).eval(), card)
    out = outputs(tmp_path, "run")
    journal = tmp_path / ".run.gpkg.journal"
    timer = threading.Timer(3.0, STOP.request, (signal.SIGTERM,))
    with open_engine(workers=1) as engine:
        timer.start()
        sent = time.monotonic() + 3.0
        with pytest.raises(RunInterrupted) as caught:
            classify_scene([SCENE], slow, SMALL, ClassifyOutputs(*out), engine, progress=False)
        stopped_after = time.monotonic() - sent
    assert caught.value.signum == signal.SIGTERM
    assert "rerun with --resume" in caught.value.cli_message()
    assert stopped_after < 5, f"took {stopped_after:.1f} s"
    assert not out[0].exists() and not out[1].exists()
    assert any(journal.glob("chunk-*.npz"))


@pytest.mark.slow
def test_a_stop_after_the_outputs_are_published_ends_the_command_with_them_whole(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = Staging.publish

    def publish_then_signal(self: Staging) -> list[Path]:
        published = publish(self)
        signal.raise_signal(signal.SIGINT)  # past the last safe point
        return published

    monkeypatch.setattr(Staging, "publish", publish_then_signal)
    out = outputs(tmp_path, "run")
    result = run_cli("classify", SCENE, "--gsd", "5", "--out", out[0], "--out", out[1])
    assert result.exit_code == 128 + signal.SIGINT, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == "stopped by SIGINT after the command finished; its outputs are complete"
    assert out[0].is_file() and out[1].is_file()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_during_start_up_stops_before_anything_is_written(
    tmp_path: Path, signum: int
) -> None:
    """Sent while the command still imports (a few seconds here), the signal is kept
    and honoured at the first safe point."""
    out = outputs(tmp_path, "run")
    log = tmp_path / "log"
    process = rsscgeo_classify(SCENE, "--gsd", "5", "--out", out[0], "--out", out[1], log=log)
    time.sleep(0.5)
    process.send_signal(signum)
    assert process.wait(timeout=60) == 128 + signum, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("interrupted before any output was begun")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]
