"""What a classify map shows: the card's classes and, below a threshold, Uncertain.

A patch whose calibrated top-1 probability is below ``uncertain_below`` is mapped as
Uncertain. The decision is made when results are written, on the small per-patch
arrays, so journaled probabilities never depend on the threshold. Multi-label models
have no Uncertain class: each label has its own threshold in the card.

Codes: in the GeoPackage an Uncertain patch has ``class_id`` -1 (skipped patches are
not written); in the GeoTIFF's class band it is 254, and skipped patches are 255.
Uncertain is drawn in grey: the shade furthest from every class colour of the card
(cards often have a grey class already, e.g. the bundled model's Airport).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rsscgeo.errors import SceneError
from rsscgeo.modelfile import ModelCard
from rsscgeo.scene.inference import ChunkResult

UNCERTAIN = "Uncertain"
# The shades of grey Uncertain may take, darkest first.
UNCERTAIN_GREYS = tuple(f"#{v:02x}{v:02x}{v:02x}" for v in range(0x70, 0xE1, 0x08))
UNCERTAIN_ID = -1  # GeoPackage class_id
UNCERTAIN_VALUE = 254  # GeoTIFF class band
CLASS_NODATA = 255  # GeoTIFF class band: skipped patches


@dataclass(frozen=True)
class LegendEntry:
    """One category of the map: its GeoTIFF pixel value, name and ``#rrggbb`` colour."""

    value: int
    name: str
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as 0-255 red, green and blue."""
        return _rgb(self.color)


@dataclass(frozen=True)
class Legend:
    """The categories of a map: the card's classes, then Uncertain when it is enabled.

    Attributes:
        card: The model card (the class names and colours).
        uncertain_below: Calibrated top-1 probability below which a patch is
            Uncertain; 0 disables Uncertain.
        source: Where the threshold came from (or why there is none), in words for
            the run's report: "from the model card", "from --uncertain-below", ...
    """

    card: ModelCard
    uncertain_below: float
    source: str

    @classmethod
    def for_card(cls, card: ModelCard, uncertain_below: float | None = None) -> Legend:
        """The legend for ``card``; ``uncertain_below`` overrides the card's threshold.

        Raises:
            SceneError: If the threshold is outside 0..1, is set for a multi-label
                model, or the card has a class named Uncertain while it is enabled.
        """
        if uncertain_below is not None and not 0 <= uncertain_below <= 1:
            raise SceneError(
                f"uncertain_below {uncertain_below:g} is not a probability",
                "give 0..1 (0 disables Uncertain).",
                cli_fix="give --uncertain-below 0..1 (0 disables Uncertain).",
            )
        if card.task == "multilabel":
            if uncertain_below:
                raise SceneError(
                    "multi-label models have no Uncertain class (each label has its own "
                    "threshold in the card)",
                    "leave uncertain_below unset.",
                    cli_fix="drop --uncertain-below.",
                )
            return cls(card, 0.0, "multi-label models have no Uncertain class")
        if uncertain_below is not None:
            flag = "from --uncertain-below" if uncertain_below else "--uncertain-below 0"
            legend = cls(card, uncertain_below, flag)
        elif card.calibration is None:
            legend = cls(card, 0.0, "the model card has no calibration")
        else:
            threshold = card.uncertain_below
            card_says = "from the model card" if threshold else "the model card's threshold is 0"
            legend = cls(card, threshold, card_says)
        clash = [n for n in card.class_names if n.casefold() == UNCERTAIN.casefold()]
        if legend.enabled and clash:
            raise SceneError(
                f"the model has a class named {clash[0]!r}, which classify uses for patches "
                f"below the Uncertain threshold ({legend.source})",
                "set uncertain_below=0 or rename the class in the model.",
                cli_fix="pass --uncertain-below 0 or rename the class in the model.",
            )
        return legend

    @property
    def enabled(self) -> bool:
        """Whether any patch can be Uncertain."""
        return self.uncertain_below > 0

    @property
    def entries(self) -> list[LegendEntry]:
        """The card's classes in order (value = class id), then Uncertain if enabled."""
        entries = [LegendEntry(i, c.name, c.color) for i, c in enumerate(self.card.classes)]
        if self.enabled:
            entries.append(LegendEntry(UNCERTAIN_VALUE, UNCERTAIN, self.uncertain_color))
        return entries

    @property
    def uncertain_color(self) -> str:
        """The grey of ``UNCERTAIN_GREYS`` furthest (in RGB) from all the card's colours."""
        colors = np.array([_rgb(c.color) for c in self.card.classes], dtype=float)
        greys = np.array([_rgb(g) for g in UNCERTAIN_GREYS], dtype=float)
        distance = np.linalg.norm(greys[:, None] - colors[None], axis=-1).min(axis=1)
        return UNCERTAIN_GREYS[int(distance.argmax())]

    def uncertain(self, scores: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
        """Where the top-1 probabilities ``scores`` are below the threshold (NaN: never)."""
        return np.asarray(scores < self.uncertain_below)

    def raster_values(self, result: ChunkResult) -> npt.NDArray[np.intp]:
        """The GeoTIFF class band of a chunk: class ids, Uncertain and nodata values."""
        values = np.where(result.classified, result.class_ids, CLASS_NODATA)
        return np.where(self.uncertain(result.scores), UNCERTAIN_VALUE, values)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
