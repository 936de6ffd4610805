"""``rsscgeo adapt``: fine-tune a model on patches labelled on the user's own scenes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rsscgeo.cli.options import classify_options_except, model_argument

if TYPE_CHECKING:
    from rsscgeo.scene.options import ClassifyOptions

# Only the reading flags matter to adapt: the rest of classify's are about outputs.
_NOT_READING = (
    "batch_size",
    "chunk_size",
    "probabilities",
    "uncertain_below",
    "backoff",
    "tta",
    "backend",
)


@click.command()
@model_argument
@click.argument("scenes", nargs=-1, required=True, metavar="SCENES...")
@click.option(
    "--labels",
    "labels_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Vector file of labels: classify --suggest's GeoPackage, or any points/polygons.",
)
@click.option("--layer", help="Layer of --labels [default: to_label, or its only layer].")
@click.option("--field", default="label", show_default=True, help="Field holding the labels.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The adapted model (.safetensors).",
)
@click.option(
    "--only-labelled-classes",
    is_flag=True,
    help="The adapted model predicts only the classes the labels name.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds views, sampling and folds."
)
@classify_options_except(*_NOT_READING)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def adapt(
    model: Path,
    scenes: tuple[str, ...],
    labels_path: Path,
    layer: str | None,
    field: str,
    out: Path,
    only_labelled_classes: bool,
    seed: int,
    options: ClassifyOptions,
    overwrite: bool,
) -> None:
    """Fine-tune MODEL on patches labelled on SCENES (the last stages and the classifier).

    Patches are read exactly as classify reads them (the same reading flags). Labels
    may name the model's classes or families, or new classes (added to the model).
    Unless --only-labelled-classes, the base model's answers on unlabelled patches of
    the same scenes, and on the training tiles its file carries, keep the classes the
    labels do not cover. Temperature and the
    Uncertain threshold are fitted by cross-validation on the labels.
    """
    import dataclasses

    from rsscgeo.adapt.fit import FitSettings
    from rsscgeo.adapt.labels import read_label_rows
    from rsscgeo.adapt.run import AdaptOptions, adapt_model
    from rsscgeo.errors import OptionError, OutputExistsError
    from rsscgeo.modelfile import load_model
    from rsscgeo.outputs import check_output_folder

    if out.suffix != ".safetensors":
        raise OptionError(f"--out {out} must end in .safetensors (the model file format).")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists", cli_fix="pass --overwrite to replace it.")
    check_output_folder(out.parent, "--out", create=False)
    labels = read_label_rows(labels_path, layer, field)
    loaded = load_model(model)
    started = time.perf_counter()
    settings = AdaptOptions(
        only_labelled_classes=only_labelled_classes,
        fit=dataclasses.replace(FitSettings(), seed=seed),
    )
    summary = adapt_model(
        loaded,
        model.name,
        list(scenes),
        labels,
        out,
        settings,
        options,
        say=lambda line: click.echo(line, err=True),
    )
    card = summary.card
    assert card.calibration is not None and card.adaptation is not None
    metrics = card.calibration.metrics
    labelled = ", ".join(f"{name} {n}" for name, n in summary.labelled.items())
    click.echo(f"labelled patches: {labelled}")
    if card.adaptation.new_classes:
        click.echo(f"new classes: {', '.join(card.adaptation.new_classes)}")
    click.echo(
        f"cross-validated on the labels: accuracy {metrics['val_accuracy']:.3f}; Uncertain "
        f"below {card.calibration.uncertain_below:g} keeps {metrics['val_coverage']:.0%} at "
        f"{metrics['val_committed_accuracy']:.3f}"
    )
    click.echo(f"adapted in {time.perf_counter() - started:.0f} s; wrote {summary.path}")
