"""Running the rsscgeo executable from a Processing algorithm.

QGIS's Python is not rsscgeo's environment (torch, TorchGeo, Dask...), so each
algorithm runs ``rsscgeo --progress json COMMAND ...`` as a child process:

* progress comes as one JSON object per line on stderr and goes to
  ``feedback.setProgress`` (other lines become the log);
* a cancel in QGIS sends SIGINT (Ctrl-C): rsscgeo stops at its next safe point,
  keeps its journal and leaves nothing at the output paths, so running the algorithm
  again resumes (the algorithms pass ``--resume``);
* a failure is rsscgeo's own one-line ``Error: ...`` message, raised as the
  algorithm's error.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from qgis.core import QgsProcessingException, QgsProcessingFeedback

# The provider setting that holds the executable's path (Options > Processing > Providers).
EXECUTABLE_SETTING = "RSSCGEO_EXECUTABLE"
# ...and the environment variable read when the setting is empty.
EXECUTABLE_VARIABLE = "RSSCGEO_EXECUTABLE"
# After a cancel, how long rsscgeo may take to stop cleanly before it is terminated.
STOP_SECONDS = 20.0
POLL_SECONDS = 0.1
PROGRESS_PREFIX = '{"progress"'


def find_executable(configured: str | None) -> str:
    """The rsscgeo executable: the provider setting, else the variable, else PATH.

    Raises:
        QgsProcessingException: Naming the setting, if none is found or runnable.
    """
    how = (
        "install rsscgeo (pip install rsscgeo) and set its path under Settings > Options > "
        f"Processing > Providers > rsscgeo > rsscgeo executable, or in the {EXECUTABLE_VARIABLE} "
        "environment variable"
    )
    for candidate, source in (
        (configured, "the provider setting 'rsscgeo executable'"),
        (os.environ.get(EXECUTABLE_VARIABLE), f"{EXECUTABLE_VARIABLE}"),
    ):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise QgsProcessingException(
                f"rsscgeo executable {candidate!r} (from {source}) is not an executable file; "
                f"{how}."
            )
    found = shutil.which("rsscgeo")
    if found is None:
        raise QgsProcessingException(f"the rsscgeo executable was not found on PATH; {how}.")
    return found


def run_rsscgeo(
    executable: str, arguments: Sequence[str], feedback: QgsProcessingFeedback | None
) -> str:
    """Run ``rsscgeo --progress json ARGUMENTS``; returns its standard output.

    Raises:
        QgsProcessingException: With rsscgeo's error line if it fails, or a note that
            the run was cancelled (and how to resume) if the user cancelled it.
    """
    feedback = feedback or QgsProcessingFeedback()
    command = [executable, "--progress", "json", *arguments]
    feedback.pushCommandInfo(" ".join(_quoted(a) for a in command))
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # our SIGINT reaches rsscgeo alone, not QGIS
    )
    errors: list[str] = []
    stdout: list[str] = []
    # The readers only collect; this thread (the algorithm's) talks to the feedback.
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    readers = [
        threading.Thread(target=_read_stderr, args=(child, events, errors), daemon=True),
        threading.Thread(target=_read_stdout, args=(child, events, stdout), daemon=True),
    ]
    for reader in readers:
        reader.start()
    cancelled = _wait(child, feedback, events)
    for reader in readers:
        reader.join(timeout=5)
    for stream in (child.stdout, child.stderr):
        if stream is not None:
            stream.close()
    _relay(events, feedback)
    if cancelled:
        raise QgsProcessingException(
            "cancelled: rsscgeo stopped cleanly and kept what it finished; run the algorithm "
            "again with the same outputs to resume."
        )
    if child.returncode != 0:
        message = next((e for e in reversed(errors) if e.startswith("Error: ")), None)
        message = (
            message.removeprefix("Error: ")
            if message
            else (errors[-1] if errors else f"rsscgeo exited with status {child.returncode}")
        )
        raise QgsProcessingException(message)
    return "".join(stdout)


def _relay(events: queue.Queue[tuple[str, Any]], feedback: QgsProcessingFeedback) -> None:
    """Pass what the readers collected to the feedback, in this thread."""
    while True:
        try:
            kind, value = events.get_nowait()
        except queue.Empty:
            return
        if kind == "progress":
            feedback.setProgress(100.0 * value)
        elif kind == "stage":
            feedback.setProgressText(value)
        else:
            feedback.pushInfo(value)


def _wait(
    child: subprocess.Popen[str],
    feedback: QgsProcessingFeedback,
    events: queue.Queue[tuple[str, Any]],
) -> bool:
    """Wait for the child; on a cancel, stop it with SIGINT. Returns whether cancelled."""
    while child.poll() is None:
        _relay(events, feedback)
        if feedback.isCanceled():
            child.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_SECONDS
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            if child.poll() is None:
                child.terminate()
                child.wait()
            return True
        time.sleep(POLL_SECONDS)
    return False


def _read_stderr(
    child: subprocess.Popen[str], events: queue.Queue[tuple[str, Any]], errors: list[str]
) -> None:
    assert child.stderr is not None
    stage = None
    for raw in child.stderr:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(PROGRESS_PREFIX):
            progress = _progress(line)
            if progress is not None:
                # A dialog logs every progress text it gets: send a stage once.
                if progress.get("stage") != stage:
                    stage = progress.get("stage")
                    events.put(("stage", str(stage or "")))
                events.put(("progress", progress["progress"]))
                continue
        errors.append(line)
        events.put(("info", line))


def _read_stdout(
    child: subprocess.Popen[str], events: queue.Queue[tuple[str, Any]], lines: list[str]
) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        lines.append(line)
        if line.strip():
            events.put(("info", line.rstrip()))


def _progress(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "progress" in value else None


def _quoted(argument: str) -> str:
    return f'"{argument}"' if " " in argument else argument
