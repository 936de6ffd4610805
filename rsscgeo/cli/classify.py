"""``rsscgeo classify``: classify large GeoTIFF scenes into map layers."""

from __future__ import annotations

from pathlib import Path

import click


def _bands(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            "give 1-based band numbers separated by commas, e.g. 1,2,3"
        ) from None


@click.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "outputs",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="labels.gpkg (polygons) and/or labels.tif (raster); repeat for both.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Model file [default: bundled].",
)
@click.option("--patch-size", type=click.IntRange(min=8), help="Patch side, px [default: card].")
@click.option(
    "--stride", type=click.IntRange(min=1), help="Step between patches, px [default: patch size]."
)
@click.option("--bands", help="Scene bands in the model's order, e.g. 1,2,3.")
@click.option(
    "--gsd",
    type=click.FloatRange(min=0, min_open=True),
    help="Read at this resolution (CRS units/px).",
)
@click.option(
    "--min-valid",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Skip patches with less valid data than this fraction.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Parallel Dask tasks [default: all cores]."
)
@click.option(
    "--device", default="auto", show_default=True, help="auto (GPU when present), cpu or cuda[:i]."
)
@click.option("--probabilities", is_flag=True, help="GeoTIFF: add one probability band per class.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from its journal of finished chunks (beside the output).",
)
def classify(
    scenes: tuple[Path, ...],
    outputs: tuple[Path, ...],
    model: Path | None,
    patch_size: int | None,
    stride: int | None,
    bands: str | None,
    gsd: float | None,
    min_valid: float,
    batch_size: int,
    workers: int | None,
    device: str,
    probabilities: bool,
    overwrite: bool,
    resume: bool,
) -> None:
    """Classify SCENES (several files form one mosaic) patch by patch."""
    from rsscgeo.errors import SceneError
    from rsscgeo.modelfile import BUNDLED_MODEL, load_model
    from rsscgeo.scene.classify import classify_scene

    by_suffix = {p.suffix.lower(): p for p in outputs}
    unknown = set(by_suffix) - {".gpkg", ".tif", ".tiff"}
    if unknown:
        raise SceneError(f"--out must end in .gpkg or .tif, not {sorted(unknown)[0]}.")
    loaded = load_model(model or BUNDLED_MODEL)
    summary = classify_scene(
        list(scenes),
        loaded,
        gpkg=by_suffix.get(".gpkg"),
        geotiff=by_suffix.get(".tif") or by_suffix.get(".tiff"),
        patch_size=patch_size,
        stride=stride,
        bands=_bands(bands),
        gsd=gsd,
        min_valid=min_valid,
        batch_size=batch_size,
        workers=workers,
        device=device,
        probabilities=probabilities,
        overwrite=overwrite,
        resume=resume,
        model_path=model or BUNDLED_MODEL,
        say=lambda line: click.echo(line, err=True),
    )
    total = summary.classified + summary.skipped
    rate = total / summary.seconds if summary.seconds else 0.0
    grid = f"{summary.grid.rows}x{summary.grid.cols}"
    click.echo(
        f"{summary.classified} patches classified, {summary.skipped} skipped (below --min-valid) "
        f"on a {grid} grid in {summary.seconds:.1f} s ({rate:.1f} patches/s)"
    )
    if summary.classified == 0:
        click.echo(
            f"warning: no patch reached --min-valid {min_valid:g} (is the scene all nodata, or "
            "smaller than one patch? lower --min-valid or --patch-size)",
            err=True,
        )
    top = ", ".join(f"{name} {n}" for name, n in summary.per_class.most_common(8))
    if top:
        click.echo(f"most frequent classes: {top}")
    for path in summary.outputs:
        click.echo(f"wrote {path}")
