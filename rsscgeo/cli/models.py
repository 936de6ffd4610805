"""``rsscgeo models``: look inside model files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rsscgeo.cli.options import model_argument


@click.group()
def models() -> None:
    """Inspect model files."""


@models.command()
@model_argument
def inspect(model: Path) -> None:
    """Print the model card of MODEL as JSON (without loading the weights)."""
    from rsscgeo.modelfile import read_card

    card = read_card(model)
    click.echo(json.dumps(card.model_dump(mode="json"), indent=2))
