"""``rsscgeo datasets``: the paper's datasets in their published layouts, and their splits."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def datasets() -> None:
    """Published scene-classification datasets: layouts and seeded splits."""


@datasets.command("list")
def list_layouts() -> None:
    """Print the published layouts with their class counts and folder layout.

    Not listed, as they need no name: without a layout, a path,labels CSV manifest,
    BigEarthNet patch folders and a class-folder tree are detected.
    """
    from rsscgeo.data.layouts import LAYOUTS

    for layout in LAYOUTS.values():
        unit = "labels" if layout.task == "multilabel" else "classes"
        click.echo(
            f"{layout.name:<19} {layout.dataset:<18} {layout.n_classes:>2} {unit:<7} "
            f"{layout.n_images:>7,} images  {layout.tree}"
        )


@datasets.command()
@click.argument("layout")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--train-fraction",
    "fractions",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    multiple=True,
    default=(0.8, 0.2),
    show_default=True,
    help="Share of each class used for training (repeatable; the paper uses 0.8 and 0.2).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option(
    "--out-dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the split CSVs.",
)
@click.option("--overwrite", is_flag=True, help="Replace split CSVs that already exist.")
def split(
    layout: str,
    root: Path,
    fractions: tuple[float, ...],
    seed: int,
    out_dir: Path,
    overwrite: bool,
) -> None:
    """Write seeded stratified train/test splits of the LAYOUT dataset at ROOT.

    One CSV per --train-fraction, named <layout>_train<percent>_seed<seed>.csv. A run
    reuses it with data.split_file, data.path ROOT and data.layout LAYOUT.
    """
    from rsscgeo.data.layouts import get_layout, open_catalog, split_filename
    from rsscgeo.data.splits import stratified_split, write_split
    from rsscgeo.errors import OutputExistsError
    from rsscgeo.outputs import check_output_folder

    get_layout(layout)  # an unknown name fails before any folder is read
    check_output_folder(out_dir, "--out-dir")
    targets = {f: out_dir / split_filename(layout, f, seed) for f in dict.fromkeys(fractions)}
    existing = [path for path in targets.values() if path.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass --overwrite to replace it.")
    catalog = open_catalog(root, layout=layout)
    out_dir.mkdir(parents=True, exist_ok=True)
    for fraction, path in targets.items():
        parts = stratified_split(catalog, fraction, seed)
        write_split(path, parts)
        click.echo(
            f"{path}: {len(parts.train.items)} train / {len(parts.test.items)} test images, "
            f"{len(catalog.classes)} {'labels' if catalog.task == 'multilabel' else 'classes'}"
        )
