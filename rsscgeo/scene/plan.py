"""Planning a classify job: check everything that can be checked, decide how to read.

Everything here runs once, before any cluster starts or any chunk is read, so bad
input fails fast with a one-line error and the run starts with every decision made
and reported. The plan is then all that executing needs (see ``classify.run_plan``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rsscgeo.backends import choose_backend
from rsscgeo.errors import OptionError, OutputError, OutputExistsError, SceneError
from rsscgeo.hierarchy import UNCERTAIN_VALUE
from rsscgeo.modelfile import LoadedModel
from rsscgeo.outputs import check_output_folder
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.inference import Scaling
from rsscgeo.scene.journal import journal_dir
from rsscgeo.scene.legend import Legend
from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
from rsscgeo.scene.reader import SceneInfo, SceneReader, inspect_scenes
from rsscgeo.scene.tasks import ChunkWork, chunk_side
from rsscgeo.sources import SceneLike
from rsscgeo.stac import resolve_stac

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
    """A checked classify job: what to read, how, with which model, and where to write.

    Attributes:
        model: The model the plan was made for.
        options: The options it was made with.
        outputs: Where results go (``None`` for lazy results, see ``patch_dataset``).
        reader: Reads chunks of the mosaic at the reading resolution.
        grid: The patch grid.
        legend: The map's categories (the card's classes, and Uncertain).
        work: The chunk task.
        chunk_side: Patches per side of a chunk (one task).
        backend: What runs the model: ``torch`` or ``onnx`` (see ``rsscgeo.backends``).
        notes: The decisions made, in words, for the run's report.
        metadata: What the outputs record about the inputs (e.g. STAC item ids and
            datetimes).
        resolution_note: The reading-resolution (GSD) decision, in words (also in
            ``notes``).
        backend_note: The backend decision, in words (also in ``notes``).
        network: The model as given, before the backend choice: a PyTorch network
            has the penultimate features ``suggest`` spreads its picks by.
    """

    model: LoadedModel
    options: ClassifyOptions
    outputs: ClassifyOutputs | None
    reader: SceneReader
    grid: PatchGrid
    scaling: Scaling
    legend: Legend
    work: ChunkWork
    chunk_side: int
    backend: str
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    resolution_note: str = ""
    backend_note: str = ""
    network: LoadedModel | None = None

    @property
    def chunks(self) -> list[Chunk]:
        """The chunks in writing order."""
        return list(self.grid.chunks(self.chunk_side))

    def reading(self) -> dict[str, Any]:
        """Every decision that changes the journaled results (for the resume check).

        The Uncertain threshold is applied on writing, so it is not here.
        """
        return {
            "patch": self.grid.patch,
            "stride": self.grid.stride,
            "bands": list(self.reader.band_indexes),
            "resolution": list(self.reader.resolution),
            "min_valid": self.options.min_valid,
            "scaling": [self.scaling.low, self.scaling.high],
            "chunk_side": self.chunk_side,
            "tta": self.options.tta,
            "backend": self.backend,
        }


def plan_scene(
    scenes: Sequence[SceneLike],
    loaded: LoadedModel,
    options: ClassifyOptions | None = None,
    outputs: ClassifyOutputs | None = None,
    *,
    align_to: PatchGrid | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> ScenePlan:
    """Check ``scenes``, ``options`` and ``outputs`` against the model and plan the run.

    Args:
        scenes: One or more rasters (files, URLs or GDAL paths) or STAC items that
            form one mosaic.
        loaded: The model (run by the backend ``options.backend`` picks; the plan's
            ``model`` is the one that runs).
        options: How to read and classify (default: ``ClassifyOptions()``).
        outputs: Where to write; ``None`` plans for lazy results only.
        align_to: Classify on this patch grid (another scene's, e.g. an earlier date
            of the same place): the scenes are warped onto its pixels, at its
            resolution; patch size and stride stay the options' (or the card's).
        say: Receives each decision, in words, as it is made.

    Raises:
        SceneError: If the scene cannot be used with this model.
        OptionError: If an option does not fit the scene or the model.
        OutputError: If an output cannot be written where it was asked for.
        OutputExistsError: If an output exists and ``outputs.overwrite`` is not set.
    """
    options = options or ClassifyOptions()
    card = loaded.card
    if outputs is not None:
        check_outputs(outputs, card.num_classes)
    legend = Legend.for_card(card, options.uncertain_below, backoff=options.backoff)
    inputs = resolve_stac(scenes, card.bands, options.asset)
    info = inspect_scenes(inputs.sources)
    band_indexes = _band_indexes(info, options.bands or inputs.bands, len(card.bands))
    notes = list(inputs.notes)
    notes += [f"{p} is in another CRS and is reprojected to {info.crs}" for p in info.reprojected]
    if align_to is None:
        resolution, gsd_note = _reading_resolution(info, card.gsd, options.gsd)
    else:
        resolution = (align_to.transform.a, -align_to.transform.e)
        gsd_note = f"reading onto the first scene's grid ({resolution[0]:g} CRS units per pixel)"
    notes.append(gsd_note)
    reader = SceneReader(info.sources, tuple(band_indexes), resolution, align_to)
    patch = options.patch_size or card.patch_size
    grid = reader.grid(patch, options.stride or patch)
    scaling, scale_note = _scaling(reader, grid, info, card.input_scale, len(band_indexes))
    notes.append(scale_note)
    # Last: the first use of a model exports it, which bad input should not wait for.
    given = loaded
    choice = choose_backend(loaded, options.backend, gpu=torch.cuda.is_available())
    loaded = choice.loaded
    notes.append(choice.note)
    if options.tta:
        notes.append("test-time augmentation: probabilities averaged over 8 rotations/flips")
    for note in notes:
        say(note)
    raw_dtype = torch.uint8 if info.dtype == "uint8" else torch.float32
    work = ChunkWork.build(reader, grid, scaling, raw_dtype, loaded, options)
    side = chunk_side(grid, options.chunk_size)
    return ScenePlan(
        loaded,
        options,
        outputs,
        reader,
        grid,
        scaling,
        legend,
        work,
        side,
        choice.backend,
        notes,
        inputs.metadata,
        gsd_note,
        choice.note,
        given,
    )


def check_outputs(outputs: ClassifyOutputs, num_classes: int) -> None:
    """Refuse outputs that cannot be written, before any work starts.

    Raises:
        OptionError: If no output is requested, or a GeoTIFF cannot hold the classes.
        OutputError: If an output path is a folder or its folder is not writable.
        OutputExistsError: If an output exists and may not be replaced.
    """
    paths = outputs.paths
    if not paths:
        raise OptionError(
            "no output requested",
            "give ClassifyOutputs(gpkg=...) and/or geotiff=...",
            cli_fix="pass --out labels.gpkg and/or --out labels.tif.",
        )
    if outputs.geotiff is not None and num_classes > UNCERTAIN_VALUE:
        raise OptionError(
            f"the model has {num_classes} classes; a GeoTIFF class band holds at most "
            f"{UNCERTAIN_VALUE}",
            "write a .gpkg instead.",
        )
    for path in paths:
        if path.is_dir():
            raise OutputError(
                f"output {path} is a folder", f"name a file, e.g. {path / 'labels.gpkg'}."
            )
        check_output_folder(path.parent, "output", create=False, cli_option="--out")
    refuse_existing(outputs)


def refuse_existing(outputs: ClassifyOutputs) -> None:
    """Refuse to replace an existing output unless asked to.

    ``overwrite`` allows it, and so does ``resume`` when the interrupted run's journal
    is there (the run may have moved some outputs into place before it stopped).

    Raises:
        OutputExistsError: Naming the first such output.
    """
    paths = outputs.paths
    resuming = outputs.resume and journal_dir(paths[0]).exists()
    for path in paths:
        if path.exists() and not (outputs.overwrite or resuming):
            raise OutputExistsError(
                f"{path} exists",
                "set overwrite=True to replace it.",
                cli_fix="pass --overwrite to replace it.",
            )


def _band_indexes(info: SceneInfo, bands: tuple[int, ...] | None, needed: int) -> tuple[int, ...]:
    chosen = bands or tuple(range(1, needed + 1))
    example = ",".join(str(b) for b in range(1, needed + 1))
    if len(chosen) != needed:
        raise OptionError(
            f"the model needs {needed} bands, {len(chosen)} band numbers were given",
            f"give {needed}, e.g. bands=({example}).",
            cli_fix=f"give {needed}, e.g. --bands {example}.",
        )
    if info.band_count < needed and bands is None:
        raise SceneError(
            f"{info.sources[0]} has {info.band_count} band(s), the model needs {needed}",
            "choose them with bands=... or use a scene with the model's bands.",
            cli_fix="choose them with --bands or use a scene with the model's bands.",
        )
    info.check_band_numbers(chosen, "--bands")
    return chosen


def _reading_resolution(
    info: SceneInfo, card_gsd: float | None, gsd: float | None
) -> tuple[tuple[float, float], str]:
    resolution = info.resolution
    native = max(resolution)
    if gsd is not None:
        return (gsd, gsd), f"reading at the chosen {gsd:g} per pixel (scene: {native:g})"
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
            "expect lower accuracy (the gsd option sets the reading resolution)"
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
    overview = SceneReader(reader.sources, reader.band_indexes, coarse_res)
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
