"""``rsscgeo models``: look inside model files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rsscgeo.cli.options import model_argument


@click.group()
def models() -> None:
    """Inspect and export model files."""


@models.command()
@model_argument
def inspect(model: Path) -> None:
    """Print the model card of MODEL as JSON (without loading the weights)."""
    from rsscgeo.modelfile import read_card

    card = read_card(model)
    click.echo(json.dumps(card.model_dump(mode="json"), indent=2))


@models.command()
@model_argument
@click.option(
    "--onnx",
    "onnx_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a standalone ONNX model here (input 'image' N x C x H x W normalised, "
    "output 'logits'); the model card is in its metadata under 'rsscgeo.card'.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export(model: Path, onnx_path: Path, overwrite: bool) -> None:
    """Export MODEL for other ONNX tools (e.g. ONNX Runtime, QGIS plugins, OpenVINO)."""
    from rsscgeo.backends import export_onnx
    from rsscgeo.errors import OutputExistsError
    from rsscgeo.modelfile import load_model
    from rsscgeo.outputs import check_output_folder

    check_output_folder(onnx_path.parent, "--onnx", create=False)
    if onnx_path.exists() and not overwrite:
        raise OutputExistsError(f"{onnx_path} exists; pass --overwrite to replace it.")
    data = export_onnx(load_model(model), with_card=True)
    tmp = onnx_path.with_name(f".{onnx_path.name}.part")
    tmp.write_bytes(data)
    tmp.replace(onnx_path)
    click.echo(f"wrote {onnx_path} ({len(data) / 2**20:.1f} MiB)")
