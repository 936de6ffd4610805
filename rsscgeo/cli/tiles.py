"""``rsscgeo tiles``: cut labelled training tiles from a scene and polygons."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("scene", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("labels", type=click.Path(path_type=Path))
@click.option("--field", required=True, help="Attribute of LABELS holding the class name.")
@click.option(
    "--size", type=click.IntRange(min=8), default=256, show_default=True, help="Tile side, px."
)
@click.option(
    "--stride", type=click.IntRange(min=1), help="Step between tiles, px [default: size]."
)
@click.option(
    "--min-cover",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of a tile a class must cover to label it.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace tiles in an existing output folder.")
def tiles(
    scene: Path,
    labels: Path,
    field: str,
    size: int,
    stride: int | None,
    min_cover: float,
    out_dir: Path,
    overwrite: bool,
) -> None:
    """Cut georeferenced tiles from SCENE labelled by the polygons in LABELS.

    Writes GeoTIFF tiles and manifest.csv (path,labels) into --out, ready for
    `rsscgeo train` with data.path pointing at the manifest.
    """
    from rsscgeo.data.tiles import cut_tiles
    from rsscgeo.outputs import check_output_folder

    check_output_folder(out_dir, "--out")
    summary = cut_tiles(
        scene,
        labels,
        field,
        out_dir,
        size=size,
        stride=stride,
        min_cover=min_cover,
        overwrite=overwrite,
    )
    counts = ", ".join(f"{name} {n}" for name, n in summary.per_class.items())
    click.echo(f"{summary.tiles} tiles written to {summary.out_dir} ({counts})")
    click.echo(f"manifest: {summary.manifest}")
