"""The ``rsscgeo`` command group and its error handling."""

from __future__ import annotations

import _thread
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
from rsscgeo.errors import RsscgeoError, RunInterrupted, Terminated, signal_number

# Signals that stop a command the way Ctrl-C does: cleanly, keeping what can be kept.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A stop that Python dropped (raised inside a finaliser) is delivered again after this long.
RETRY_SECONDS = 0.05

# command name → "module:attribute"; modules load only when their command runs.
COMMANDS = {
    "classify": "rsscgeo.cli.classify:classify",
    "change": "rsscgeo.cli.change:change",
    "train": "rsscgeo.cli.train:train",
    "experiment": "rsscgeo.cli.experiment:experiment",
    "evaluate": "rsscgeo.cli.evaluate:evaluate",
    "models": "rsscgeo.cli.models:models",
    "tiles": "rsscgeo.cli.tiles:tiles",
    "datasets": "rsscgeo.cli.datasets:datasets",
}


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

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; library errors become ``Error: ...`` and exit status 1.

        SIGINT, SIGTERM and SIGHUP stop the command as Ctrl-C does: it cleans up, says
        so in one line and exits with 128 + the signal's number (130, 143, 129).
        """
        try:
            with stop_signals_interrupt():
                return super().invoke(ctx)
        except RunInterrupted as err:
            click.echo(one_line(err), err=True)
            sys.exit(128 + err.signum)
        except RsscgeoError as err:
            click.echo(f"Error: {one_line(err)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as err:
            signum = signal_number(err)
            click.echo(f"interrupted ({signal.Signals(signum).name}).", err=True)
            sys.exit(128 + signum)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Turn the stop signals into ``KeyboardInterrupt`` in the main thread.

    The first one unwinds the command, so temporary files are removed and journals
    kept; a second one while that happens exits at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if received:
            os._exit(128 + signum)
        received.append(signum)
        raise Terminated(signum) if signum != signal.SIGINT else KeyboardInterrupt

    python_hook = sys.unraisablehook

    def dropped(unraisable: Any) -> None:
        # Raised where Python can only print it (a gc callback, __del__, a weakref
        # callback; Dask's gc callback lost a SIGTERM this way): deliver it again.
        if received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(RETRY_SECONDS, _thread.interrupt_main, (received.pop(),)).start()
            return
        python_hook(unraisable)

    sys.unraisablehook = dropped
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = python_hook


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
def cli() -> None:
    """Remote sensing scene classification: train models, evaluate, classify scenes."""
