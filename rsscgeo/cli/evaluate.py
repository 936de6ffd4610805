"""``rsscgeo evaluate``: score a model file on a labelled dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rsscgeo.cli.options import json_option, model_argument, workers_option


@click.command()
@model_argument
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--split",
    "split_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Evaluate only the 'test' rows of this split CSV (written by `rsscgeo train`).",
)
@json_option
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@workers_option
def evaluate(
    model: Path,
    dataset: Path,
    split_file: Path | None,
    json_path: Path | None,
    batch_size: int,
    workers: int,
) -> None:
    """Evaluate MODEL on DATASET (class folders, a CSV manifest or BigEarthNet patches).

    Single-label: overall accuracy, per-class accuracy, confusion matrix.
    Multi-label: micro-F1 and macro-F1 at the card's thresholds, and mAP.
    """
    from rsscgeo.data.catalog import open_catalog
    from rsscgeo.data.images import check_images
    from rsscgeo.data.splits import read_split
    from rsscgeo.modelfile import load_model
    from rsscgeo.outputs import check_output_folder
    from rsscgeo.training.evaluate import evaluate_model, headline

    if json_path is not None:  # before the evaluation, which may take long
        check_output_folder(json_path.parent, "--json", create=False)
    loaded = load_model(model)
    card = loaded.card
    # Labels are matched to the model's classes by name; a subset of classes is fine.
    catalog = open_catalog(dataset, card.class_names)
    if split_file is not None:
        catalog = read_split(split_file, catalog, "test")
    check_images([item.path for item in catalog.items])
    metrics = evaluate_model(loaded, catalog, batch_size=batch_size, num_workers=workers)
    metrics["model"] = str(model)
    metrics["dataset"] = str(dataset)
    if json_path is not None:
        json_path.write_text(json.dumps(metrics, indent=2))
    click.echo(f"{model.name}: {headline(metrics)}")
    if json_path is not None:
        click.echo(f"metrics written to {json_path}")
