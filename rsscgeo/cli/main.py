"""The ``rsscgeo`` command group and its error handling."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from rsscgeo import __version__
from rsscgeo.errors import RsscgeoError

# command name → "module:attribute"; modules load only when their command runs.
COMMANDS = {
    "classify": "rsscgeo.cli.classify:classify",
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
        """Run the command; library errors become ``Error: ...`` and exit status 1."""
        try:
            return super().invoke(ctx)
        except RsscgeoError as err:
            click.echo(f"Error: {one_line(err)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    Errors raised in DataLoader worker processes come back re-wrapped with the worker's
    traceback in the message; their own message is the traceback's last line.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rsscgeo")
def cli() -> None:
    """Remote sensing scene classification: train models, evaluate, classify scenes."""
