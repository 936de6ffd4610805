"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

model_argument = click.argument(
    "model", type=click.Path(path_type=Path, dir_okay=False), metavar="MODEL"
)
json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the metrics to this JSON file.",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Data-loading worker processes.",
)
tta_option = click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average the probabilities of the 8 rotations/flips of "
    "each image (8x the model compute).",
)
