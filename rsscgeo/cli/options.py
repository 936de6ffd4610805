"""Options shared by several commands, and the one builder of ``ClassifyOptions``.

As in rasterio's ``rio/options.py``, each option is declared once here. The classify
options are collected by :func:`classify_options` into one frozen
:class:`~rsscgeo.scene.options.ClassifyOptions`, built once per command, with the
defaults the value object declares (shown in ``--help``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

# Imported for its defaults only: the module is small and imports no torch.
from rsscgeo.scene.options import ClassifyOptions

if TYPE_CHECKING:
    from rsscgeo.scene.engine import Engine

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = ClassifyOptions()

model_argument = click.argument(
    "model", type=click.Path(path_type=Path, dir_okay=False), metavar="MODEL"
)
json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the metrics to this JSON file.",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Data-loading worker processes.",
)
tta_option = click.option(
    "--tta",
    is_flag=True,
    default=DEFAULTS.tta,
    help="Test-time augmentation: average the probabilities of the 8 rotations/flips of "
    "each image (8x the model compute).",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnx"]),
    default=DEFAULTS.backend,
    show_default=True,
    help="What runs the model: ONNX Runtime (onnx, about 2x faster on CPU), PyTorch "
    "(torch), or auto: ONNX Runtime on CPU, PyTorch on a GPU.",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULTS.batch_size,
    show_default=True,
    help="Images per forward pass.",
)


def band_numbers(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    """``1,2,3`` -> ``(1, 2, 3)``."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            "give 1-based band numbers separated by commas, e.g. 1,2,3"
        ) from None
    if min(bands) < 1:
        raise click.BadParameter("band numbers start at 1, e.g. 1,2,3")
    return bands


# Each ClassifyOptions field and its flag, in --help order.
_CLASSIFY_OPTIONS: list[tuple[str, Callable[[Any], Any]]] = [
    (
        "patch_size",
        click.option(
            "--patch-size",
            type=click.IntRange(min=8),
            help="Patch side, px of the reading grid [default: the model card's].",
        ),
    ),
    (
        "stride",
        click.option(
            "--stride",
            type=click.IntRange(min=1),
            help="Step between patches, px [default: patch size].",
        ),
    ),
    (
        "bands",
        click.option(
            "--bands",
            callback=band_numbers,
            help="Scene bands in the model's order, e.g. 1,2,3 [default: the first ones].",
        ),
    ),
    (
        "gsd",
        click.option(
            "--gsd",
            type=click.FloatRange(min=0, min_open=True),
            help="Read at this resolution, CRS units/px [default: the model's GSD, see README].",
        ),
    ),
    (
        "min_valid",
        click.option(
            "--min-valid",
            type=click.FloatRange(0, 1),
            default=DEFAULTS.min_valid,
            show_default=True,
            help="Skip patches with less valid data than this fraction.",
        ),
    ),
    ("batch_size", batch_size_option),
    (
        "chunk_size",
        click.option(
            "--chunk-size",
            type=click.IntRange(min=1),
            help="Pixels per side of each read/task, in whole strides [default: up to 2048].",
        ),
    ),
    (
        "probabilities",
        click.option(
            "--probabilities", is_flag=True, help="GeoTIFF: add one probability band per class."
        ),
    ),
    (
        "uncertain_below",
        click.option(
            "--uncertain-below",
            type=click.FloatRange(0, 1),
            metavar="P",
            help="Map patches whose calibrated top-1 probability is below P as Uncertain; 0 "
            "disables it [default: the model card's calibration, else 0]. With a class "
            "hierarchy, a patch below P is named by its family when the family reaches P.",
        ),
    ),
    (
        "backoff",
        click.option(
            "--backoff/--no-backoff",
            default=True,
            show_default=True,
            help="Name a doubtful patch by its class's family (e.g. Water) when the family "
            "reaches the threshold (models with a class hierarchy).",
        ),
    ),
    ("tta", tta_option),
    ("backend", backend_option),
    (
        "asset",
        click.option(
            "--asset",
            metavar="NAME",
            help="STAC items: the asset to classify [default: the first data asset whose "
            "eo:bands names cover the model's bands, else visual, else image].",
        ),
    ),
]


def classify_options_except(*left_out: str) -> Callable[[F], F]:
    """A decorator like :func:`classify_options` without the flags of ``left_out`` fields.

    Those fields keep ``ClassifyOptions``' defaults (e.g. ``change`` has no
    ``--probabilities``).
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def build(*args: Any, **kwargs: Any) -> Any:
            given = {
                name: kwargs.pop(name) for name, _ in _CLASSIFY_OPTIONS if name not in left_out
            }
            return command(*args, options=ClassifyOptions(**given), **kwargs)

        decorated: Any = build
        for name, option in reversed(_CLASSIFY_OPTIONS):
            if name not in left_out:
                decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


classify_options = classify_options_except()
"""Add the ``ClassifyOptions`` flags to a command and pass them as one ``options``."""


scene_model_option = click.option(
    "--model",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Model file [default: bundled].",
)
# Where chunk tasks run (``rsscgeo.scene.engine.open_engine``), in --help order.
_ENGINE_OPTIONS = [
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Local Dask worker threads (or processes) [default: all cores].",
    ),
    click.option(
        "--processes",
        is_flag=True,
        help="Local workers as processes (one model each), not threads.",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run on an existing Dask cluster, e.g. tcp://host:8786 [default: "
        "$DASK_SCHEDULER_ADDRESS, else a local cluster].",
    ),
    click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (GPU when present), cpu or cuda[:i].",
    ),
]


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """Where chunk tasks run, as the engine flags chose it."""

    scheduler: str | None
    workers: int | None
    processes: bool
    device: str

    def open(self) -> AbstractContextManager[Engine]:
        """Start or connect to the Dask cluster (``rsscgeo.scene.engine.open_engine``)."""
        from rsscgeo.scene.engine import open_engine

        return open_engine(
            self.scheduler, workers=self.workers, processes=self.processes, device=self.device
        )


def engine_options(command: F) -> F:
    """Add the engine flags to ``command`` and pass them as one ``EngineChoice``.

    The flags are ``--workers``, ``--processes``, ``--scheduler`` and ``--device``; the
    command receives them as its ``engine`` argument.
    """

    @functools.wraps(command)
    def build(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in ("scheduler", "workers", "processes", "device")}
        return command(*args, engine=EngineChoice(**given), **kwargs)

    decorated: Any = build
    for option in reversed(_ENGINE_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]
