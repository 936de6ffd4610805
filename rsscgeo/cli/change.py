"""``rsscgeo change``: map where the classes of two scenes of one place differ.

Both scenes are planned (checked) before a Dask cluster is started or reached, so bad
input fails in one line before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rsscgeo.cli.options import (
    EngineChoice,
    classify_options_except,
    engine_options,
    scene_model_option,
)
from rsscgeo.stopping import STOP

if TYPE_CHECKING:  # the CLI imports the engine lazily, so --help stays fast
    from rsscgeo.scene.change import ChangeSummary
    from rsscgeo.scene.options import ClassifyOptions

# Changes listed in the report, largest first.
REPORTED_CHANGES = 8


@click.command()
@click.argument("before", metavar="BEFORE")
@click.argument("after", metavar="AFTER")
@click.option(
    "--out",
    "outputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="change.gpkg (polygons) and/or change.tif (raster); repeat for both.",
)
@scene_model_option
@classify_options_except("probabilities")
@engine_options
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def change(
    before: str,
    after: str,
    outputs: tuple[Path, ...],
    model: Path | None,
    options: ClassifyOptions,
    engine: EngineChoice,
    overwrite: bool,
) -> None:
    """Classify BEFORE and AFTER on one patch grid and map what changed.

    BEFORE and AFTER are anything classify reads (a raster file, a URL, a GDAL /vsi...
    path, a STAC item). AFTER is read and warped onto BEFORE's patch grid, so every
    patch covers the same ground at both dates. A patch classified in both is changed
    when its classes differ and neither is Uncertain.

    The GeoPackage has one polygon per patch classified in both (from_class, to_class,
    from_score, to_score, changed) with a QGIS style that fills the changed ones; the
    GeoTIFF has one pixel per patch (bands from_class, to_class, changed). Every run
    also writes <first output stem>.fromto.csv: hectares from each class (rows) to
    each class (columns), over the classes present. There is no --resume: an
    interrupted run writes nothing and starts over.
    """
    from rsscgeo.modelfile import BUNDLED_MODEL, load_model
    from rsscgeo.scene.change import plan_change, run_change
    from rsscgeo.scene.options import ClassifyOutputs

    chosen = ClassifyOutputs.from_paths(outputs, overwrite=overwrite)
    loaded = load_model(model or BUNDLED_MODEL)
    plan = plan_change([before], [after], loaded, options, chosen, say=_say)
    with STOP.deferred(), engine.open() as running:
        _report(run_change(plan, running, say=_say), options.min_valid)


def _say(line: str) -> None:
    click.echo(line, err=True)


def _report(summary: ChangeSummary, min_valid: float) -> None:
    total = summary.compared + summary.skipped
    rate = 2 * total / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"{summary.compared} patches classified in both scenes ({summary.compared_ha:.1f} ha), "
        f"{summary.skipped} not (below --min-valid or outside a scene) on a "
        f"{summary.grid.rows}x{summary.grid.cols} grid in {summary.seconds:.1f} s "
        f"({rate:.1f} patches/s)"
    )
    if summary.compared == 0:
        click.echo(
            f"warning: no patch reached --min-valid {min_valid:g} in both scenes (do they "
            "overlap? lower --min-valid or --patch-size)",
            err=True,
        )
    share = 100 * summary.changed / summary.compared if summary.compared else 0.0
    click.echo(f"changed: {summary.changed} patches ({share:.1f}%, {summary.changed_ha:.1f} ha)")
    if summary.uncertain_below > 0:
        click.echo(
            f"Uncertain (never counted as a change): top-1 probability below "
            f"{summary.uncertain_below:g} {summary.uncertain_source}"
        )
    else:
        click.echo(f"Uncertain: off ({summary.uncertain_source})")
    largest = ", ".join(
        f"{before} -> {after} {hectares:.1f} ha"
        for before, after, hectares in summary.transitions()[:REPORTED_CHANGES]
    )
    if largest:
        click.echo(f"largest changes: {largest}")
    for path in summary.outputs:
        click.echo(f"wrote {path}")
