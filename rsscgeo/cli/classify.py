"""``rsscgeo classify``: classify large GeoTIFF scenes into map layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rsscgeo.cli.options import tta_option

if TYPE_CHECKING:  # the CLI imports the engine lazily, so --help stays fast
    from rsscgeo.scene.classify import ClassifySummary


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
    type=click.Path(path_type=Path, dir_okay=False),
    help="labels.gpkg (polygons) and/or labels.tif (raster); repeat for both. The SCENES "
    "form one mosaic.",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Classify each scene separately into DIR/<scene name>.gpkg / .tif (see --format).",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["gpkg", "tif"]),
    help="With --out-dir: output formats; repeat for both [default: gpkg].",
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
    "--chunk-size",
    type=click.IntRange(min=1),
    help="Pixels per side of each read/task, in whole patches [default: 2048].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Local Dask worker threads (or processes) [default: all cores].",
)
@click.option(
    "--processes", is_flag=True, help="Local workers as processes (one model each), not threads."
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run on an existing Dask cluster, e.g. tcp://host:8786 [default: "
    "$DASK_SCHEDULER_ADDRESS, else a local cluster].",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto (GPU when present), cpu or cuda[:i]."
)
@click.option("--probabilities", is_flag=True, help="GeoTIFF: add one probability band per class.")
@click.option(
    "--uncertain-below",
    type=click.FloatRange(0, 1),
    metavar="P",
    help="Map patches whose calibrated top-1 probability is below P as Uncertain; 0 "
    "disables it [default: the model card's calibration, else 0].",
)
@tta_option
@click.option(
    "--preview",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also draw the (first) scene beside its class map into this PNG; needs a .tif --out.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from its journal of finished chunks (beside the output).",
)
def classify(
    scenes: tuple[Path, ...],
    outputs: tuple[Path, ...],
    out_dir: Path | None,
    formats: tuple[str, ...],
    model: Path | None,
    patch_size: int | None,
    stride: int | None,
    bands: str | None,
    gsd: float | None,
    min_valid: float,
    batch_size: int,
    chunk_size: int | None,
    workers: int | None,
    processes: bool,
    scheduler: str | None,
    device: str,
    probabilities: bool,
    uncertain_below: float | None,
    tta: bool,
    preview: Path | None,
    overwrite: bool,
    resume: bool,
) -> None:
    """Classify SCENES patch by patch into map layers.

    With --out the SCENES form one mosaic; with --out-dir each is classified on its own.
    """
    from rsscgeo.modelfile import BUNDLED_MODEL, load_model
    from rsscgeo.scene.classify import classify_scene
    from rsscgeo.scene.engine import open_engine

    jobs = _jobs(list(scenes), outputs, out_dir, formats)
    if preview is not None:
        _check_preview(preview, jobs)
    loaded = load_model(model or BUNDLED_MODEL)
    with open_engine(scheduler, workers=workers, processes=processes, device=device) as engine:
        for job_scenes, gpkg, geotiff in jobs:
            if len(jobs) > 1:
                click.echo(f"{job_scenes[0]}:", err=True)
            summary = classify_scene(
                job_scenes,
                loaded,
                gpkg=gpkg,
                geotiff=geotiff,
                patch_size=patch_size,
                stride=stride,
                bands=_bands(bands),
                gsd=gsd,
                min_valid=min_valid,
                batch_size=batch_size,
                chunk_pixels=chunk_size,
                engine=engine,
                probabilities=probabilities,
                tta=tta,
                uncertain_below=uncertain_below,
                overwrite=overwrite,
                resume=resume,
                model_path=model or BUNDLED_MODEL,
                say=lambda line: click.echo(line, err=True),
            )
            _report(summary, min_valid)
            if preview is not None and geotiff is not None:
                from rsscgeo.scene.preview import draw_map

                draw_map(job_scenes[0], geotiff, loaded.card, preview, title=job_scenes[0].name)
                click.echo(f"wrote {preview}")


def _check_preview(preview: Path, jobs: list[tuple[list[Path], Path | None, Path | None]]) -> None:
    """Refuse a preview that cannot be drawn, before any work."""
    from rsscgeo.errors import SceneError
    from rsscgeo.outputs import check_output_folder

    if len(jobs) != 1 or jobs[0][2] is None:
        raise SceneError(
            "--preview draws the class map of one GeoTIFF output: add --out NAME.tif "
            "(with --out, not --out-dir)."
        )
    if preview.suffix.lower() != ".png":
        raise SceneError(f"--preview writes a PNG; name it *.png, not {preview.name}.")
    check_output_folder(preview.parent, "--preview", create=False)


def _jobs(
    scenes: list[Path], outputs: tuple[Path, ...], out_dir: Path | None, formats: tuple[str, ...]
) -> list[tuple[list[Path], Path | None, Path | None]]:
    """(scenes, gpkg, geotiff) per run: one mosaic for --out, one per scene for --out-dir."""
    from rsscgeo.errors import SceneError

    if bool(outputs) == (out_dir is not None):
        raise SceneError(
            "give either --out (the scenes form one mosaic) or --out-dir (one output set per "
            "scene)."
        )
    if formats and out_dir is None:
        raise SceneError("--format goes with --out-dir; with --out the suffix picks the format.")
    if out_dir is None:
        by_suffix = {p.suffix.lower(): p for p in outputs}
        unknown = set(by_suffix) - {".gpkg", ".tif", ".tiff"}
        if unknown:
            raise SceneError(f"--out must end in .gpkg or .tif, not {sorted(unknown)[0]}.")
        geotiff = by_suffix.get(".tif") or by_suffix.get(".tiff")
        return [(scenes, by_suffix.get(".gpkg"), geotiff)]
    if not out_dir.is_dir():
        raise SceneError(f"output folder {out_dir} does not exist; create it first.")
    stems = [p.stem for p in scenes]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise SceneError(
            f"two scenes are named {twice[0]}; --out-dir names outputs after the scene, so "
            "rename one or run them separately."
        )
    wanted = set(formats or ("gpkg",))
    return [
        (
            [scene],
            out_dir / f"{scene.stem}.gpkg" if "gpkg" in wanted else None,
            out_dir / f"{scene.stem}.tif" if "tif" in wanted else None,
        )
        for scene in scenes
    ]


def _report(summary: ClassifySummary, min_valid: float) -> None:
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
    if summary.uncertain_below > 0:
        share = 100 * summary.uncertain / summary.classified if summary.classified else 0.0
        click.echo(
            f"Uncertain: {summary.uncertain} patches ({share:.1f}% of classified), top-1 "
            f"probability below {summary.uncertain_below:g} {summary.uncertain_source}"
        )
    else:
        click.echo(f"Uncertain: off ({summary.uncertain_source})")
    top = ", ".join(f"{name} {n}" for name, n in summary.per_class.most_common(8))
    if top:
        click.echo(f"most frequent classes: {top}")
    for path in summary.outputs:
        click.echo(f"wrote {path}")
