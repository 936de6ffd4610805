"""What a classify run is asked to do: how to read and classify, and what to write.

Two frozen value objects travel through the scene package instead of keyword lists:
:class:`ClassifyOptions` (reading, cutting and classifying) and
:class:`ClassifyOutputs` (where results go and what may be replaced). Their defaults
are the only ones: the CLI shows and uses them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rsscgeo.errors import OptionError

OUTPUT_SUFFIXES = {".gpkg": "gpkg", ".tif": "geotiff", ".tiff": "geotiff"}


@dataclass(frozen=True)
class ClassifyOptions:
    """How a scene is read, cut into patches and classified.

    Attributes:
        patch_size: Patch side in pixels of the reading grid (``None``: the card's).
        stride: Step between patches in pixels (``None``: the patch size).
        bands: The scene's 1-based band numbers in the model's band order
            (``None``: the first bands).
        gsd: Reading resolution in CRS units per pixel (``None``: the scale rule of
            :mod:`rsscgeo.scene.plan`).
        min_valid: Patches with less valid data than this fraction are skipped.
        batch_size: Patches per forward pass.
        chunk_size: Pixels per side of one task's read, rounded down to whole strides
            (``None``: at most 2048, see :func:`rsscgeo.scene.tasks.chunk_side`).
        tta: Average the probabilities of the 8 rotations/flips of each patch.
        uncertain_below: Map patches whose calibrated top-1 probability is below this
            as Uncertain (``None``: the card's threshold; 0 disables it). On a card
            with a class hierarchy, the family's probability is held to it too.
        backoff: On a card with a class hierarchy, name a patch by its family when
            its class is below ``uncertain_below`` but the family is not.
        probabilities: Also write one probability band per class into a GeoTIFF.
        backend: ``torch``, ``onnx`` (ONNX Runtime) or ``auto`` (ONNX Runtime on CPU,
            PyTorch on a GPU); see :mod:`rsscgeo.backends`.
        asset: For STAC items: the asset to read (``None``: chosen by its band names,
            see :mod:`rsscgeo.stac`).
    """

    patch_size: int | None = None
    stride: int | None = None
    bands: tuple[int, ...] | None = None
    gsd: float | None = None
    min_valid: float = 0.5
    batch_size: int = 64
    chunk_size: int | None = None
    tta: bool = False
    uncertain_below: float | None = None
    backoff: bool = True
    probabilities: bool = False
    backend: Literal["auto", "torch", "onnx"] = "auto"
    asset: str | None = None

    def __post_init__(self) -> None:
        """Refuse values no run can use.

        Raises:
            OptionError: Naming the option and its valid range.
        """
        _at_least("patch_size", self.patch_size, 1)
        _at_least("stride", self.stride, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("chunk_size", self.chunk_size, 1)
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            raise OptionError(f"bands={self.bands} must be 1-based band numbers, e.g. (1, 2, 3).")
        if self.gsd is not None and not (math.isfinite(self.gsd) and self.gsd > 0):
            raise OptionError(f"gsd={self.gsd} must be a positive resolution (CRS units/px).")
        if self.backend not in ("auto", "torch", "onnx"):
            raise OptionError(f"backend={self.backend!r} must be auto, torch or onnx.")
        for name in ("min_valid", "uncertain_below"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise OptionError(f"{name}={value} must lie within 0..1.")


@dataclass(frozen=True)
class ClassifyOutputs:
    """Where a run writes, and whether it may replace or continue earlier outputs.

    Attributes:
        gpkg: Polygons, one per classified patch, styled for QGIS.
        geotiff: One pixel per patch with a colour table (a Cloud-Optimised GeoTIFF).
        overwrite: Replace existing outputs, and start over when a journal of an
            interrupted run belongs to another model or other options.
        resume: Continue an interrupted run from its journal (beside the first output).
        suggest: Add a layer ``to_label`` of this many patches worth labelling to the
            GeoPackage (0: none; see ``rsscgeo.scene.suggest``).
        seed: Breaks ties between equally uncertain patches when suggesting.
    """

    gpkg: Path | None = None
    geotiff: Path | None = None
    overwrite: bool = False
    resume: bool = False
    suggest: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse a suggestion count no run can use.

        Raises:
            OptionError: If ``suggest`` is negative or asked for without a GeoPackage.
        """
        if self.suggest < 0:
            raise OptionError(f"suggest={self.suggest} must be 0 (none) or a patch count.")
        if self.suggest and self.gpkg is None:
            raise OptionError(
                "suggest writes the layer to_label into a GeoPackage, and no .gpkg output "
                "was given",
                "add gpkg=Path('map.gpkg').",
                cli_fix="add --out map.gpkg.",
            )

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[Path],
        *,
        overwrite: bool = False,
        resume: bool = False,
        suggest: int = 0,
        seed: int = 0,
    ) -> ClassifyOutputs:
        """Outputs chosen by suffix: ``.gpkg``, and ``.tif``/``.tiff``.

        Raises:
            OptionError: If a suffix is neither, or a format is given twice.
        """
        chosen: dict[str, Path] = {}
        for path in paths:
            kind = OUTPUT_SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise OptionError(
                    f"output {path} must end in .gpkg or .tif (polygons or a raster)."
                )
            if kind in chosen:
                raise OptionError(f"two {kind} outputs ({chosen[kind]}, {path}); give one.")
            chosen[kind] = path
        return cls(chosen.get("gpkg"), chosen.get("geotiff"), overwrite, resume, suggest, seed)

    @property
    def paths(self) -> list[Path]:
        """The requested outputs; the first one also names the journal."""
        return [p for p in (self.gpkg, self.geotiff) if p is not None]


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise OptionError(f"{name}={value} must be at least {low}.")
