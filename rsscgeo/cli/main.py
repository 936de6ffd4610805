"""The ``rsscgeo`` command group, its error handling and its stop signals.

SIGINT, SIGTERM and SIGHUP never raise into running code: the handler records a stop
request (``stopping.STOP``) and long-running code honours it at its next safe point
(between chunks, before outputs are moved into place, at a training step) by raising
``RunInterrupted``, which ends the command with one line and exit status 128 + N.
Until a command has begun work it must leave whole (``STOP.deferred``: a run's
outputs, a training fit), it has written nothing, so a signal ends it at once.
Commands without safe points (``COOPERATIVE`` lists those with them) are interrupted
where they are, as Ctrl-C does in any Python program; they write nothing half-done.
A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from rsscgeo import __version__
from rsscgeo.errors import RsscgeoError, RunInterrupted
from rsscgeo.progress import STYLES, Style, set_style
from rsscgeo.stopping import NOTHING_WRITTEN, STOP

# Signals that stop a command the way Ctrl-C does: cleanly, keeping what can be kept.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# command name → "module:attribute"; modules load only when their command runs.
COMMANDS = {
    "classify": "rsscgeo.cli.classify:classify",
    "adapt": "rsscgeo.cli.adapt:adapt",
    "change": "rsscgeo.cli.change:change",
    "train": "rsscgeo.cli.train:train",
    "experiment": "rsscgeo.cli.experiment:experiment",
    "evaluate": "rsscgeo.cli.evaluate:evaluate",
    "models": "rsscgeo.cli.models:models",
    "tiles": "rsscgeo.cli.tiles:tiles",
    "datasets": "rsscgeo.cli.datasets:datasets",
    "qgis": "rsscgeo.cli.qgis:qgis",
}
# Commands whose long-running code checks the stop request at safe points.
COOPERATIVE = frozenset({"classify", "change", "train", "experiment", "adapt"})


class LazyGroup(click.Group):
    """A group that imports each command on demand and turns our errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """All command names, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return one command."""
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Import the command and set its signal handling."""
        name, command, rest = super().resolve_command(ctx, args)
        if name not in COOPERATIVE:
            interrupt_on_stop_signals()
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; library errors become ``Error: ...`` and exit status 1.

        A stop signal ends the command with one line and exit status 128 + the
        signal's number (130, 143, 129).
        """
        try:
            with stop_signals():
                result = super().invoke(ctx)
                signum = STOP.signum
        except RunInterrupted as err:
            click.echo(one_line(err), err=True)
            sys.exit(128 + err.signum)
        except RsscgeoError as err:
            click.echo(f"Error: {one_line(err)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as err:
            signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
            click.echo(f"interrupted ({signal.Signals(signum).name}).", err=True)
            sys.exit(128 + signum)
        if signum is not None:  # it came after the last safe point: the work is whole
            name = signal.Signals(signum).name
            click.echo(
                f"stopped by {name} after the command finished; its outputs are complete",
                err=True,
            )
            sys.exit(128 + signum)
        return result


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP raised in a command without safe points, as Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def record_stop_signals() -> None:
    """Record stop signals as a stop request from now on (main thread only).

    Installed before the commands' heavy imports, so a signal during start-up is
    honoured at the first safe point instead of interrupting an import.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def record(signum: int, frame: FrameType | None) -> None:
        if STOP.signum is not None:
            os._exit(128 + signum)  # a second signal: stop now
        STOP.request(signum)
        if not STOP.deferring:  # still importing or planning: nothing to keep whole
            _exit_now(f"{NOTHING_WRITTEN}; rerun to start over", signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, record)


def interrupt_on_stop_signals() -> None:
    """Raise ``KeyboardInterrupt`` where the code is when a stop signal comes.

    For commands without safe points, as Python does for Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if STOP.signum is not None:
            os._exit(128 + signum)
        STOP.request(signum)
        raise Interrupted(signum) if signum != signal.SIGINT else KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)


def _exit_now(line: str, signum: int) -> None:
    """Say ``line`` and exit with 128 + ``signum`` at once (from a signal handler)."""
    for stream in (sys.stdout, sys.stderr):
        # Interrupted inside a write, a stream cannot flush: its text is lost, no more.
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            stream.flush()
    os.write(2, f"{line}\n".encode())
    os._exit(128 + signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """Record stop signals while a command runs, then restore the previous handlers.

    A request recorded before (during start-up) is kept for the command to honour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    record_stop_signals()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STOP.clear()


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, in the command line's terms.

    Errors raised in DataLoader worker processes come back re-wrapped with the worker's
    traceback in the message; their own message is the traceback's last line.
    """
    text = (err.cli_message() if isinstance(err, RsscgeoError) else str(err)).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rsscgeo")
@click.option(
    "--progress",
    "progress_style",
    type=click.Choice(STYLES),
    default="bar",
    show_default=True,
    help="How classify, change and adapt show progress: bar, json (one JSON object per "
    "line on stderr, for programs such as the QGIS plugin) or none.",
)
def cli(progress_style: Style) -> None:
    """Remote sensing scene classification: train models, evaluate, classify scenes."""
    set_style(progress_style)


def main() -> None:
    """The ``rsscgeo`` executable: stop signals are recorded before anything else loads."""
    record_stop_signals()
    cli()
