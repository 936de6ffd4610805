"""Soak test of stop signals: many signals at random moments of `classify` and `change` runs.

Not a test (it takes about 20-40 minutes): it proves that stopping is not luck. Each
trial starts a real `rsscgeo classify` or `rsscgeo change` process on the bundled NAIP
scene(s), waits for one phase of the run (start-up, plan, model distribution, mid-run,
final writes), sends SIGINT, SIGTERM or SIGHUP at a random moment inside it, and checks
what the project promises:

* the process exits within 10 s with 128 + N, and prints no traceback;
* its last line is `interrupted ...` and nothing is at any output path, no temporary
  file or lock is left, a classify journal holds the chunks it names, and a resumed
  (classify) or repeated (change) run gives outputs identical to an uninterrupted one;
* or, for a signal that came after the outputs were moved into place, its last line
  says `stopped by SIG... after the command finished; its outputs are complete` and the
  outputs are identical to an uninterrupted run's.

Busy processes load every core meanwhile, as a full test suite does.

    .venv/bin/python benchmarks/signal_soak.py --trials 50 --json out/signal_soak.json

`--launcher` runs another build, e.g. the code before cooperative stopping, checked out
with `git worktree add /tmp/before COMMIT` (-P: not the current folder's package):

    .venv/bin/python benchmarks/signal_soak.py --launcher "env PYTHONPATH=/tmp/before \
        .venv/bin/python -P -c 'from rsscgeo.cli.main import cli; cli()'"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
SCENE_2020 = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"
SCENE_2009 = (
    ROOT.parent
    / "shared"
    / "data"
    / "scenes"
    / "opengeos"
    / ("naip_m_4709963_se_14_1_20090818.tif")
)
# 63 chunks at the scene's native 5 m, as the signal tests use: a run of several seconds.
OPTIONS = ("--gsd", "5", "--stride", "50", "--chunk-size", "100")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_LIMIT_SECONDS = 10.0

# Each phase begins when the run prints its marker (None: when the process starts).
PHASES = {
    "start-up": None,
    "plan": "reading at",
    "model distribution": "running on a",
    "mid-run": "classifying:",
    "final writes": "100%",
}
PHASE_END = "wrote "
TEMPORARY = (".part", ".work.tif", ".lock", "-journal", "-wal")


@dataclass
class Trial:
    """One signal sent to one run, and what came of it."""

    number: int
    command: str
    signal: str
    phase: str
    delay: float
    seen: str = ""  # the last marker printed before the signal
    exit_status: int | None = None
    stop_seconds: float = 0.0
    last_line: str = ""
    outcome: str = ""
    problems: list[str] = field(default_factory=list)
    output_tail: str = ""  # what the run printed last, kept when it failed

    @property
    def ok(self) -> bool:
        """Whether the run stopped as promised."""
        return not self.problems


class Run:
    """A command run with its merged output read line by line, markers timestamped."""

    def __init__(self, launcher: list[str], args: list[str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*launcher, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.marks: dict[str, float] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # Raw reads, split at \r as well as \n: progress bars end their updates with \r.
        assert self.process.stdout is not None
        pending = ""
        while chunk := os.read(self.process.stdout.fileno(), 4096):
            *complete, pending = (
                (pending + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
            )
            for line in complete:
                with self._changed:
                    self.lines.append(line)
                    for marker in [*filter(None, PHASES.values()), PHASE_END]:
                        if marker in line and (marker != "classifying:" or "| 0/" not in line):
                            self.marks.setdefault(marker, time.monotonic())
                    self._changed.notify_all()
        with self._changed:
            if pending:
                self.lines.append(pending)

    def wait_for(self, marker: str | None, timeout: float = 300) -> float | None:
        """When ``marker`` appeared (None: the start); None if the run ended first."""
        if marker is None:
            return self.started
        deadline = time.monotonic() + timeout
        with self._changed:
            while marker not in self.marks:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    return None
                self._changed.wait(0.01)
            return self.marks[marker]

    def last_marker(self) -> str:
        """The phase marker printed last so far."""
        with self._changed:
            seen = sorted(self.marks.items(), key=lambda item: item[1])
        return seen[-1][0] if seen else "(none)"

    def output(self) -> str:
        """Everything the run printed, once it has ended."""
        self.process.wait()
        time.sleep(0.1)  # the reader thread drains the pipe
        return "\n".join(self.lines)


def command_args(command: str, out: Path, *, resume: bool = False) -> list[str]:
    outputs = ["--out", str(out / "run.gpkg"), "--out", str(out / "run.tif")]
    if command == "classify":
        return ["classify", str(SCENE_2020), *OPTIONS, *outputs, *(["--resume"] if resume else [])]
    return ["change", str(SCENE_2009), str(SCENE_2020), *OPTIONS, *outputs]


def product_files(command: str, out: Path) -> list[Path]:
    """Every file a finished run leaves at its output paths."""
    table = "run.areas.csv" if command == "classify" else "run.fromto.csv"
    names = ["run.gpkg", "run.tif", "run.qml", "run.tif.aux.xml", table]
    return [out / name for name in names]


def same_products(command: str, out: Path, reference: Path) -> list[str]:
    """What differs between a run's outputs and the reference run's (empty: nothing)."""
    problems = []
    for path in product_files(command, out):
        if not path.exists():
            problems.append(f"{path.name} missing")
    if problems:
        return problems
    ours = gpd.read_file(out / "run.gpkg", layer="run")
    theirs = gpd.read_file(reference / "run.gpkg", layer="run")
    if not ours.drop(columns="geometry").equals(theirs.drop(columns="geometry")):
        problems.append("GeoPackage attributes differ")
    if not ours.geometry.geom_equals(theirs.geometry).all():
        problems.append("GeoPackage geometries differ")
    with rasterio.open(out / "run.tif") as a, rasterio.open(reference / "run.tif") as b:
        if not np.array_equal(a.read(), b.read()):
            problems.append("GeoTIFF pixels differ")
    table = product_files(command, out)[-1].name
    if (out / table).read_text() != (reference / table).read_text():
        problems.append(f"{table} differs")
    return problems


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if any(t in p.name for t in TEMPORARY))


def check(trial: Trial, run: Run, out: Path, reference: Path, launcher: list[str]) -> None:
    """Fill ``trial``'s outcome and problems from the stopped run and its outputs."""
    text = run.output()
    signum = signal.Signals[trial.signal]
    trial.exit_status = run.process.returncode
    trial.last_line = text.strip().splitlines()[-1] if text.strip() else ""
    if trial.exit_status != 128 + signum:
        trial.problems.append(f"exit status {trial.exit_status}, not {128 + signum}")
    if trial.stop_seconds > STOP_LIMIT_SECONDS:
        trial.problems.append(f"stopped after {trial.stop_seconds:.1f} s")
    if "Traceback" in text:
        trial.problems.append("a traceback was printed")
    journal = out / ".run.gpkg.journal"
    if trial.last_line.startswith("stopped by") and "outputs are complete" in trial.last_line:
        trial.outcome = "finished before the stop"
        trial.problems += same_products(trial.command, out, reference)
    elif trial.last_line.startswith("interrupted"):
        trial.outcome = "interrupted"
        written = [p.name for p in product_files(trial.command, out) if p.exists()]
        if written:
            trial.problems.append(f"written although interrupted: {written}")
        if leftovers(out):
            trial.problems.append(f"left behind: {leftovers(out)}")
        if trial.command == "classify" and " of " in trial.last_line:
            named = int(trial.last_line.split("after ")[1].split(" of ")[0])
            if len(list(journal.glob("chunk-*.npz"))) != named:
                trial.problems.append(f"journal does not hold the {named} chunks named")
        resumed = Run(launcher, command_args(trial.command, out, resume=journal.exists()))
        if resumed.process.wait() != 0:
            trial.problems.append("the resumed run failed: " + resumed.output()[-300:])
        else:
            trial.problems += same_products(trial.command, out, reference)
    else:
        trial.outcome = "other"
        trial.problems.append(f"unexpected last line: {trial.last_line!r}")
    if trial.problems:
        trial.output_tail = text[-3000:]


def phase_lengths(reference: Run) -> dict[str, float]:
    """How long each phase lasted in the reference run (the delay range per phase)."""
    begins = [
        reference.started if marker is None else reference.marks[marker]
        for marker in PHASES.values()
    ]
    ends = [*begins[1:], reference.marks[PHASE_END]]
    return {
        phase: max(0.05, end - begin)
        for phase, begin, end in zip(PHASES, begins, ends, strict=True)
    }


def busy() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes")
    parser.add_argument(
        "--launcher",
        default=str(Path(sys.executable).parent / "rsscgeo"),
        help="how to run rsscgeo (shell words)",
    )
    parser.add_argument("--json", type=Path, help="write every trial here")
    args = parser.parse_args()
    launcher = shlex.split(args.launcher)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rsscgeo-soak-"))
    loaders = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    for loader in loaders:
        loader.start()
    trials: list[Trial] = []
    try:
        references, lengths = {}, {}
        for command in ("classify", "change"):
            references[command] = work / f"reference-{command}"
            references[command].mkdir()
            reference = Run(launcher, command_args(command, references[command]))
            if reference.process.wait() != 0:
                print(reference.output(), file=sys.stderr)
                return 2
            lengths[command] = phase_lengths(reference)
            print(f"reference {command}: " + ", ".join(
                f"{phase} {seconds:.1f} s" for phase, seconds in lengths[command].items()
            ))  # fmt: skip
        for number in range(args.trials):
            command = ("classify", "change")[number % 2]
            phase = list(PHASES)[(number // 2) % len(PHASES)]
            trial = Trial(
                number,
                command,
                rng.choice(SIGNALS).name,
                phase,
                round(rng.uniform(0, lengths[command][phase]), 3),
            )
            out = work / f"trial-{number}"
            out.mkdir()
            run = Run(launcher, command_args(command, out))
            begun = run.wait_for(PHASES[phase])
            if begun is not None:
                time.sleep(max(0.0, begun + trial.delay - time.monotonic()))
            trial.seen = run.last_marker()
            if run.process.poll() is not None:
                trial.outcome = "ended before the signal"
                trial.problems.append("the run ended before the signal was sent")
            else:
                sent = time.monotonic()
                run.process.send_signal(signal.Signals[trial.signal])
                try:
                    run.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    run.process.kill()
                trial.stop_seconds = round(time.monotonic() - sent, 2)
                check(trial, run, out, references[command], launcher)
            trials.append(trial)
            status = "ok" if trial.ok else "FAILED: " + "; ".join(trial.problems)
            print(
                f"{number:3d} {command:8s} {trial.signal:7s} {phase:18s} +{trial.delay:5.2f} s "
                f"(seen: {trial.seen}) -> {trial.outcome}, {trial.stop_seconds:.2f} s: {status}",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        for loader in loaders:
            loader.terminate()
        shutil.rmtree(work, ignore_errors=True)
    good = sum(t.ok for t in trials)
    slowest = max((t.stop_seconds for t in trials), default=0.0)
    print(f"\n{good} of {len(trials)} stopped as promised (slowest stop {slowest:.2f} s)")
    for outcome in sorted({t.outcome for t in trials}):
        print(f"  {outcome}: {sum(t.outcome == outcome for t in trials)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(t) for t in trials], indent=1))
    return 0 if good == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
