"""Planning a classify job: check the scene against the model and decide how to read it.

Everything here runs once, before any chunk is read, so bad input fails fast with a
one-line error and the run starts with every decision made and reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsscgeo.errors import SceneError
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import Scaling
from rsscgeo.scene.reader import SceneInfo, SceneReader, inspect_scenes

# Scenes finer or coarser than the model's GSD by more than this factor are resampled to
# it, so that a patch covers the ground the model was trained on (issue 9 measured it:
# the bundled 5 m NAIP scene read at the model's 2 m maps ponds and meadows; read
# natively, 750 m patches were mostly Uncertain).
GSD_TOLERANCE = 1.5
# ...but a scene more than this many times coarser is read natively: upsampled further,
# a patch would hold too few real pixels to classify.
MAX_UPSAMPLING = 4.0


@dataclass(frozen=True)
class ScenePlan:
    """How a scene will be read and fed to the model, and what was decided on the way."""

    reader: SceneReader
    grid: PatchGrid
    scaling: Scaling
    band_indexes: tuple[int, ...]
    raw_dtype: torch.dtype  # what the reader returns: uint8 for 8-bit scenes, else float32
    notes: list[str] = field(default_factory=list)


def plan_scene(
    scenes: list[Path],
    loaded: LoadedModel,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    bands: list[int] | None = None,
    gsd: float | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> ScenePlan:
    """Check ``scenes`` against the model card and plan the reading.

    Raises:
        SceneError: If the scene cannot be used with this model.
    """
    card = loaded.card
    info = inspect_scenes(scenes)
    band_indexes = _band_indexes(info, bands, len(card.bands))
    notes = [f"{p} is in another CRS and is reprojected to {info.crs}" for p in info.reprojected]
    resolution, gsd_note = _reading_resolution(info, card.gsd, gsd)
    notes.append(gsd_note)
    reader = SceneReader(info.paths, tuple(band_indexes), resolution)
    patch = patch_size or card.patch_size
    grid = reader.grid(patch, stride or patch)
    scaling, scale_note = _scaling(reader, grid, info, card.input_scale, len(band_indexes))
    notes.append(scale_note)
    for note in notes:
        say(note)
    raw_dtype = torch.uint8 if info.dtype == "uint8" else torch.float32
    return ScenePlan(reader, grid, scaling, tuple(band_indexes), raw_dtype, notes)


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda[:i]``.

    Raises:
        SceneError: If a GPU is asked for and none is usable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SceneError(f"--device {name!r} is not a device; use auto, cpu or cuda[:i].") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SceneError(f"--device {name}: no CUDA GPU is available here; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise SceneError(f"--device {name!r} is not supported; use auto, cpu or cuda[:i].")
    return device


def _band_indexes(info: SceneInfo, bands: list[int] | None, needed: int) -> list[int]:
    chosen = bands or list(range(1, needed + 1))
    if len(chosen) != needed:
        raise SceneError(
            f"the model needs {needed} bands, --bands gives {len(chosen)}; pass {needed} "
            "band numbers, e.g. --bands 1,2,3."
        )
    if info.band_count < needed and bands is None:
        raise SceneError(
            f"{info.paths[0]} has {info.band_count} band(s), the model needs {needed}; "
            "pass --bands to choose them or use a scene with the model's bands."
        )
    bad = [b for b in chosen if not 1 <= b <= info.band_count]
    if bad:
        raise SceneError(
            f"--bands {bad[0]} does not exist in {info.paths[0]} (bands 1-{info.band_count})."
        )
    return chosen


def _reading_resolution(
    info: SceneInfo, card_gsd: float | None, gsd: float | None
) -> tuple[tuple[float, float], str]:
    resolution = info.resolution
    native = max(resolution)
    if gsd is not None:
        return (gsd, gsd), f"reading at --gsd {gsd:g} (scene: {native:g} per pixel)"
    if card_gsd is None or info.crs.is_geographic:
        return resolution, f"reading at the scene's native resolution ({native:g} per pixel)"
    if native * GSD_TOLERANCE < card_gsd:
        return (card_gsd, card_gsd), (
            f"scene is {native:g} m/px, finer than the model's {card_gsd:g} m/px: "
            f"reading decimated to {card_gsd:g} m/px so patches cover the trained ground area"
        )
    if native > card_gsd * MAX_UPSAMPLING:
        return resolution, (
            f"warning: scene is {native:g} m/px, over {MAX_UPSAMPLING:g}x coarser than the "
            f"{card_gsd:g} m/px the model was trained on; classifying at native resolution, "
            "expect lower accuracy (--gsd sets the reading resolution)"
        )
    if native > card_gsd * GSD_TOLERANCE:
        return (card_gsd, card_gsd), (
            f"scene is {native:g} m/px, coarser than the model's {card_gsd:g} m/px: reading "
            f"upsampled to {card_gsd:g} m/px so patches cover the trained ground area"
        )
    return resolution, f"reading at the scene's native resolution ({native:g} m/px)"


def _scaling(
    reader: SceneReader, grid: PatchGrid, info: SceneInfo, input_scale: float, bands: int
) -> tuple[Scaling, str]:
    if info.dtype == "uint8":
        return Scaling.divide_by(
            input_scale, bands
        ), f"8-bit scene: values divided by {input_scale:g}"
    factor = _decimation(grid)
    coarse_res = (reader.resolution[0] * factor, reader.resolution[1] * factor)
    overview = SceneReader(reader.paths, reader.band_indexes, coarse_res)
    coarse = overview.grid(1, 1)
    values, valid = overview.read(coarse, Chunk(0, 0, 0, coarse.rows, coarse.cols))
    scaling = Scaling.percentile_stretch(values, valid)
    ranges = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in zip(scaling.low, scaling.high, strict=True))
    return (
        scaling,
        f"{info.dtype} scene: bands stretched from their 2-98th percentiles ({ranges}) to 0-1",
    )


def _decimation(grid: PatchGrid) -> float:
    return max(1.0, math.ceil(max(grid.width, grid.height) / 1024))
