"""``rsscgeo train``: run a training config."""

from __future__ import annotations

from pathlib import Path

import click

from rsscgeo.stopping import STOP


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
    from rsscgeo.modelfile import read_card
    from rsscgeo.outputs import check_output_folder
    from rsscgeo.training.config import load_config
    from rsscgeo.training.evaluate import headline
    from rsscgeo.training.run import train as run_training

    extra = list(overrides) + ([f"out_dir={out_dir}"] if out_dir else [])
    config = load_config(config_path, extra)
    # Checks that would otherwise fail only after the images are read and split.
    check_output_folder(config.out_dir, "out_dir")
    init = config.model.init
    if init.kind == "rsscgeo" and init.path is not None:
        read_card(init.path)  # the header only: refuses pickles and cardless files
    created = _missing_folders(config.out_dir)
    try:
        with STOP.deferred():  # a stop ends training at a step, with its checkpoint
            results = run_training(config, resume=not restart)
    except BaseException:
        _remove_if_empty(created)
        raise
    for result in results:
        click.echo(f"{result.model_path}: {headline(result.metrics)} (held-out split)")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the run folders a failed run created but wrote nothing into.

    A run that got as far as writing (a split, checkpoints) keeps its folder, so a
    re-run can resume.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): keep it and its parents
            return
