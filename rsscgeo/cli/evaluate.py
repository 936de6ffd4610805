"""``rsscgeo evaluate``: score a model file on a labelled dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rsscgeo.cli.options import (
    backend_option,
    batch_size_option,
    json_option,
    model_argument,
    workers_option,
)

if TYPE_CHECKING:  # the CLI imports the library lazily, so --help stays fast
    from rsscgeo.data.catalog import Catalog
    from rsscgeo.modelfile import LoadedModel
    from rsscgeo.training.selective import Coverage, CurvePoint


def _default_tta() -> bool:
    from rsscgeo.training.evaluate import DEFAULT_TTA

    return DEFAULT_TTA


@click.command()
@model_argument
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--class-map",
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML mapping DATASET's class folders to accepted model classes (e.g. "
    "configs/class_maps/ucm10_to_aid.yaml); folders it does not name are left out.",
)
@click.option(
    "--split",
    "split_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Evaluate only the 'test' rows of this split CSV (written by `rsscgeo train`).",
)
@click.option(
    "--tta/--no-tta",
    default=_default_tta,  # read when needed, so --help imports no torch
    help="Test-time augmentation: average the probabilities of the 8 rotations/flips "
    "of each image (8x slower; on by default, --no-tta for a single pass). The summary "
    "says which was used.",
)
@click.option(
    "--uncertain-below",
    type=click.FloatRange(0, 1),
    help="Report coverage and accuracy of the images with calibrated top-1 probability "
    "at least this [default: the card's uncertain_below].",
)
@json_option
@click.option(
    "--curve",
    "curve_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the risk-coverage curve (accuracy of the most confident images) as a PNG.",
)
@batch_size_option
@backend_option
@workers_option
def evaluate(
    model: Path,
    dataset: Path,
    class_map: Path | None,
    split_file: Path | None,
    tta: bool,
    uncertain_below: float | None,
    json_path: Path | None,
    curve_path: Path | None,
    batch_size: int,
    backend: str,
    workers: int,
) -> None:
    """Evaluate MODEL on DATASET (class folders, a CSV manifest or BigEarthNet patches).

    Single-label: overall accuracy, per-class accuracy, confusion matrix, and the
    coverage/accuracy at the Uncertain threshold when the card is calibrated.
    Multi-label: micro-F1 and macro-F1 at the card's thresholds, and mAP.

    With --class-map, DATASET keeps its own folder names (e.g. UC Merced's for a model
    trained on AID): each image is resized whole to the model's patch size and counts
    as correct when the top-1 class is one the map accepts for its folder.
    """
    from rsscgeo.data.layouts import open_catalog
    from rsscgeo.data.splits import read_split
    from rsscgeo.modelfile import load_model
    from rsscgeo.outputs import check_output_folder

    for path, option in ((json_path, "--json"), (curve_path, "--curve")):
        if path is not None:  # before the evaluation, which may take long
            check_output_folder(path.parent, option, create=False)
    loaded = _on_backend(load_model(model), backend)
    if curve_path is not None and loaded.card.task != "multiclass":
        raise click.UsageError("--curve needs a single-label model.")
    # Without a class map, labels are matched to the model's classes by name (a subset
    # of them is fine); with one, the dataset keeps its own class names.
    catalog = open_catalog(dataset, None if class_map else loaded.card.class_names)
    if split_file is not None:
        catalog = read_split(split_file, catalog, "test")
    options = {"tta": tta, "uncertain_below": uncertain_below}
    options |= {"batch_size": batch_size, "num_workers": workers}
    if class_map is None:
        metrics, curve, uncertain = _in_domain(loaded, catalog, model, options)
    else:
        metrics, curve, uncertain = _mapped(loaded, catalog, class_map, model, options)
    metrics |= {"model": str(model), "dataset": str(dataset)}
    if json_path is not None:
        json_path.write_text(json.dumps(metrics, indent=2))
        click.echo(f"metrics written to {json_path}")
    if curve_path is not None and curve is not None:
        from rsscgeo.training.selective import plot_risk_coverage

        title = f"{model.parent.name}/{model.name} on {dataset.name}" + (" (TTA x8)" if tta else "")
        marker = uncertain if uncertain is not None and uncertain.threshold > 0 else None
        plot_risk_coverage(curve_path, {dataset.name: curve}, title, marker)
        click.echo(f"risk-coverage curve written to {curve_path}")


def _on_backend(loaded: LoadedModel, backend: str) -> LoadedModel:
    """The model on the chosen backend; says why when it is not the one asked for."""
    import torch

    from rsscgeo.backends import choose_backend

    gpu = torch.cuda.is_available()
    choice = choose_backend(loaded, backend, gpu=gpu)  # type: ignore[arg-type]
    if choice.fallback:
        click.echo(choice.note, err=True)
    return choice.loaded


def _in_domain(
    loaded: LoadedModel, catalog: Catalog, model: Path, options: dict[str, Any]
) -> tuple[dict[str, Any], list[CurvePoint] | None, Coverage | None]:
    """Evaluate on the model's own classes; print the headline (and coverage)."""
    from rsscgeo.data.images import check_images
    from rsscgeo.training.evaluate import evaluate_model, headline
    from rsscgeo.training.selective import Coverage, CurvePoint

    check_images([item.path for item in catalog.items])
    metrics = evaluate_model(loaded, catalog, **options)
    click.echo(f"{model.name}: {headline(metrics)}{' (TTA x8)' if metrics['tta'] else ''}")
    uncertain = Coverage(**metrics["uncertain"]) if "uncertain" in metrics else None
    if uncertain is not None:
        click.echo(uncertain.describe())
    if "backoff" in metrics:
        from rsscgeo.training.selective import BackoffCoverage

        fields = {k: v for k, v in metrics["backoff"].items() if k not in ("coverage", "accuracy")}
        click.echo(BackoffCoverage(**fields).describe())
    points = metrics.get("risk_coverage")
    return metrics, [CurvePoint(**p) for p in points] if points else None, uncertain


def _mapped(
    loaded: LoadedModel,
    catalog: Catalog,
    class_map: Path,
    model: Path,
    options: dict[str, Any],
) -> tuple[dict[str, Any], list[CurvePoint], Coverage]:
    """Evaluate through a class map; print the summary table."""
    from rsscgeo.data.classmap import load_class_map, map_catalog
    from rsscgeo.data.images import check_images
    from rsscgeo.training.crossdomain import evaluate_with_class_map

    mapped = map_catalog(catalog, load_class_map(class_map), loaded.card.class_names, str(model))
    check_images([item.path for item in mapped.catalog.items])
    result = evaluate_with_class_map(loaded, mapped, **options)
    for number, line in enumerate(result.summary()):
        click.echo(f"{model.name}: {line}" if number == 0 else line)
    if not loaded.card.calibration and options["uncertain_below"] is None:
        click.echo("(the card has no calibration: pass --uncertain-below P for a threshold)")
    return result.as_dict() | {"class_map": str(class_map)}, list(result.curve), result.uncertain
