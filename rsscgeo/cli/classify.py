"""``rsscgeo classify``: classify large GeoTIFF scenes into map layers.

Every job is planned (scene, bands, GSD, outputs checked) before a Dask cluster is
started or reached, so bad input fails in one line before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rsscgeo.cli.options import (
    EngineChoice,
    band_numbers,
    classify_options,
    engine_options,
    scene_model_option,
)
from rsscgeo.stopping import STOP

if TYPE_CHECKING:  # the CLI imports the engine lazily, so --help stays fast
    from rsscgeo.scene.classify import ClassifySummary
    from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
    from rsscgeo.scene.plan import ScenePlan
    from rsscgeo.sources import SceneSource

# A job: the scenes of one mosaic and where its results go.
Job = tuple[list["SceneSource"], "ClassifyOutputs"]


@click.command()
@click.argument("scenes", nargs=-1, required=True, metavar="SCENES...")
@click.option(
    "--out",
    "outputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="labels.gpkg (polygons) and/or labels.tif (raster); repeat for both. The SCENES "
    "form one mosaic.",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    help="Classify each scene separately into DIR/<scene name>.gpkg / .tif (see --format).",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["gpkg", "tif"]),
    help="With --out-dir: output formats; repeat for both [default: gpkg].",
)
@scene_model_option
@classify_options
@engine_options
@click.option(
    "--preview",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also draw the (first) scene beside its class map into this PNG; needs a .tif --out.",
)
@click.option(
    "--preview-bands",
    callback=band_numbers,
    default="1,2,3",
    show_default=True,
    metavar="R,G,B",
    help="Scene bands the preview shows as red, green, blue; e.g. 4,1,2 shows a scene "
    "with near infrared in band 4 in false colour (water dark, plants red).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a self-contained HTML report (map, areas, settings) of the run.",
)
@click.option(
    "--suggest",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Add a layer to_label of N patches worth labelling (uncertain, diverse) to the "
    ".gpkg output; label them in QGIS, then run rsscgeo adapt.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="With --suggest: breaks ties between equally uncertain patches.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace existing outputs (and start over if a journal belongs to another run).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from its journal of finished chunks (beside the output).",
)
def classify(
    scenes: tuple[str, ...],
    outputs: tuple[Path, ...],
    out_dir: Path | None,
    formats: tuple[str, ...],
    model: Path | None,
    options: ClassifyOptions,
    engine: EngineChoice,
    preview: Path | None,
    preview_bands: tuple[int, ...],
    report: Path | None,
    suggest: int,
    seed: int,
    overwrite: bool,
    resume: bool,
) -> None:
    """Classify SCENES patch by patch into map layers.

    A scene is a raster file, a URL (http(s)://, s3://, gs://, az://), a GDAL /vsi...
    path, or a STAC item (.json file or URL). With --out the SCENES form one mosaic;
    with --out-dir each is classified on its own. Every run also writes the area per
    class to <first output stem>.areas.csv. Ctrl-C or SIGTERM stops the run, keeping
    its journal: rerun with --resume. With --suggest N the GeoPackage also gets a layer
    to_label of N patches worth labelling for rsscgeo adapt.
    """
    from rsscgeo.modelfile import BUNDLED_MODEL, load_model
    from rsscgeo.scene.classify import run_plan
    from rsscgeo.scene.plan import plan_scene

    kept = {"overwrite": overwrite, "resume": resume, "suggest": suggest, "seed": seed}
    jobs = _jobs(list(scenes), outputs, out_dir, formats, kept)
    if preview is not None:
        _check_preview(preview, jobs)
    if report is not None:
        _check_report(report, jobs, overwrite=overwrite)
    loaded = load_model(model or BUNDLED_MODEL)
    plans: list[ScenePlan] = []
    for job_scenes, job_outputs in jobs:
        if len(jobs) > 1:
            click.echo(f"{job_scenes[0]}:", err=True)
        # Later jobs reuse the model as the first plan runs it (one ONNX session).
        model_to_run = plans[0].model if plans else loaded
        plans.append(plan_scene(job_scenes, model_to_run, options, job_outputs, say=_say))
    if preview is not None:
        from rsscgeo.scene.preview import check_display_bands

        check_display_bands(plans[0].reader.sources[0].gdal_path, preview_bands)
    summaries: list[ClassifySummary] = []
    # From here on outputs are begun: a stop waits for a safe point that keeps them whole.
    with STOP.deferred():
        with engine.open() as running:
            for plan in plans:
                if len(plans) > 1:
                    click.echo(f"{plan.reader.sources[0]}:", err=True)
                summaries.append(run_plan(plan, running, say=_say))
                _report(summaries[-1], options.min_valid)
        if preview is not None:
            from rsscgeo.scene.preview import draw_map

            [(job_scenes, job_outputs)] = jobs
            assert job_outputs.geotiff is not None
            scene = plans[0].reader.sources[0]
            draw_map(
                scene.gdal_path,
                job_outputs.geotiff,
                loaded.card,
                preview,
                bands=preview_bands,
                title=scene.filename,
            )
            click.echo(f"wrote {preview}")
        if report is not None:
            from rsscgeo.scene.report import write_report

            written = write_report(report, plans[0], summaries[0], overwrite=overwrite)
            click.echo(f"wrote {written}")


def _say(line: str) -> None:
    click.echo(line, err=True)


def _check_preview(preview: Path, jobs: list[Job]) -> None:
    """Refuse a preview that cannot be drawn, before any work."""
    from rsscgeo.errors import OptionError
    from rsscgeo.outputs import check_output_folder

    if len(jobs) != 1 or jobs[0][1].geotiff is None:
        raise OptionError(
            "--preview draws the class map of one GeoTIFF output: add --out NAME.tif "
            "(with --out, not --out-dir)."
        )
    if preview.suffix.lower() != ".png":
        raise OptionError(f"--preview writes a PNG; name it *.png, not {preview.name}.")
    check_output_folder(preview.parent, "--preview", create=False)


def _check_report(report: Path, jobs: list[Job], *, overwrite: bool) -> None:
    """Refuse a report that cannot be written, before any work."""
    from rsscgeo.errors import OptionError
    from rsscgeo.scene.report import check_report_path

    if len(jobs) != 1:
        raise OptionError(
            f"--report describes one run; --out-dir makes {len(jobs)} here: use --out, or "
            "--out-dir with one scene."
        )
    check_report_path(report, overwrite=overwrite)


def _jobs(
    names: list[str],
    outputs: tuple[Path, ...],
    out_dir: Path | None,
    formats: tuple[str, ...],
    settings: dict[str, Any],
) -> list[Job]:
    """One mosaic for --out, one job per scene for --out-dir.

    ``settings`` are ``ClassifyOutputs``' keywords besides the paths (same for every job).
    """
    from rsscgeo.errors import OptionError
    from rsscgeo.scene.options import ClassifyOutputs
    from rsscgeo.sources import scene_source

    scenes = [scene_source(name) for name in names]
    if bool(outputs) == (out_dir is not None):
        raise OptionError(
            "give either --out (the scenes form one mosaic) or --out-dir (one output set per "
            "scene)."
        )
    if formats and out_dir is None:
        raise OptionError("--format goes with --out-dir; with --out the suffix picks the format.")
    if out_dir is None:
        return [(scenes, ClassifyOutputs.from_paths(outputs, **settings))]
    if not out_dir.is_dir():
        state = "is a file, not a folder" if out_dir.exists() else "does not exist"
        raise OptionError(f"--out-dir {out_dir} {state}; create the folder first.")
    stems = [p.stem for p in scenes]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise OptionError(
            f"two scenes are named {twice[0]}; --out-dir names outputs after the scene, so "
            "rename one or run them separately."
        )
    suffixes = [f".{f}" for f in formats or ("gpkg",)]
    return [
        (
            [scene],
            ClassifyOutputs.from_paths(
                [out_dir / f"{scene.stem}{suffix}" for suffix in suffixes], **settings
            ),
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
    from rsscgeo.scene.areas import FAMILY

    hectares = {row.name: row.area_ha for row in summary.areas if row.level != FAMILY}
    if summary.uncertain_below > 0:
        share = 100 * summary.uncertain / summary.classified if summary.classified else 0.0
        area = hectares.get("Uncertain", 0.0)
        below = "class and family probability" if summary.backoff else "probability"
        click.echo(
            f"Uncertain: {summary.uncertain} patches ({share:.1f}% of classified, {area:.1f} ha), "
            f"top-1 {below} below {summary.uncertain_below:g} {summary.uncertain_source}"
        )
        if summary.by_family:
            share = 100 * summary.by_family / summary.classified
            click.echo(
                f"named by family (class doubtful, family not): {summary.by_family} patches "
                f"({share:.1f}% of classified)"
            )
    else:
        click.echo(f"Uncertain: off ({summary.uncertain_source})")
    top = ", ".join(
        f"{name} {n} ({hectares.get(name, 0.0):.1f} ha)"
        for name, n in summary.per_class.most_common(8)
    )
    if top:
        click.echo(f"most frequent classes: {top}")
    if summary.suggested:
        click.echo(
            f"suggested {summary.suggested} patches to label: layer to_label of the .gpkg "
            "(fill its label field in QGIS, then run rsscgeo adapt)"
        )
    for path in summary.outputs:
        click.echo(f"wrote {path}")
