"""``rsscgeo train``: run a training config."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML config, e.g. configs/finetune.yaml.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value by dotted key, e.g. --set optim.epochs=3 (repeatable).",
)
@click.option(
    "--out-dir", type=click.Path(path_type=Path, file_okay=False), help="Override out_dir."
)
@click.option(
    "--restart",
    is_flag=True,
    help="Ignore checkpoints and cached features in the run folder (default: resume).",
)
def train(
    config_path: Path, overrides: tuple[str, ...], out_dir: Path | None, restart: bool
) -> None:
    """Train a scene classifier as CONFIG describes (scratch, finetune, linear or dapt).

    A re-run of the same config resumes from the last checkpoint.
    """
    from rsscgeo.training.config import load_config
    from rsscgeo.training.evaluate import headline
    from rsscgeo.training.run import train as run_training

    extra = list(overrides) + ([f"out_dir={out_dir}"] if out_dir else [])
    config = load_config(config_path, extra)
    for result in run_training(config, resume=not restart):
        click.echo(f"{result.model_path}: {headline(result.metrics)} (held-out split)")
