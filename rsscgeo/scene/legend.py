"""What a classify map shows: the card's classes, their families, and Uncertain.

A patch is named by its most probable class (a *leaf*) when that class's calibrated
probability reaches ``uncertain_below``. Otherwise, on a card with a class hierarchy
and with back-off on, it is named by its most probable *family* (parent) when the
family's probability (the sum over its classes) reaches the same threshold, e.g. Water
for a patch split between Pond and Lake. Only when neither does is it Uncertain. The
decision is made when results are written, on the small per-patch arrays, so journaled
probabilities never depend on the threshold. Multi-label models have no Uncertain
class: each label has its own threshold in the card.

Codes: leaves keep their class ids; families follow them (number of classes + family
index); Uncertain is 254 in the GeoTIFF's class band (``class_id`` -1 in the
GeoPackage) and skipped patches are 255. Uncertain is drawn in grey: the shade
furthest from every class colour of the card (cards often have a grey class already,
e.g. an Airport).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rsscgeo.errors import SceneError
from rsscgeo.hierarchy import UNCERTAIN_VALUE, Labels, Level, label_patches
from rsscgeo.modelfile import ModelCard
from rsscgeo.scene.inference import ChunkResult

UNCERTAIN = "Uncertain"
# The shades of grey Uncertain may take, darkest first.
UNCERTAIN_GREYS = tuple(f"#{v:02x}{v:02x}{v:02x}" for v in range(0x70, 0xE1, 0x08))
UNCERTAIN_ID = -1  # GeoPackage class_id


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
        backoff: Name a patch by its family when its class is doubtful (cards with
            a class hierarchy only).
    """

    card: ModelCard
    uncertain_below: float
    source: str
    backoff: bool = True

    @classmethod
    def for_card(
        cls, card: ModelCard, uncertain_below: float | None = None, *, backoff: bool = True
    ) -> Legend:
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
            return cls(card, 0.0, "multi-label models have no Uncertain class", backoff=False)
        if uncertain_below is not None:
            flag = "from --uncertain-below" if uncertain_below else "--uncertain-below 0"
            legend = cls(card, uncertain_below, flag, backoff)
        elif card.calibration is None:
            legend = cls(card, 0.0, "the model card has no calibration", backoff)
        else:
            threshold = card.uncertain_below
            card_says = "from the model card" if threshold else "the model card's threshold is 0"
            legend = cls(card, threshold, card_says, backoff)
        names = [*card.class_names, *card.parent_names]
        clash = [n for n in names if n.casefold() == UNCERTAIN.casefold()]
        if legend.hierarchical and len(names) >= UNCERTAIN_VALUE:
            raise SceneError(
                f"the model has {len(names)} classes and families; the class map holds at "
                f"most {UNCERTAIN_VALUE - 1}",
                "set backoff=False.",
                cli_fix="pass --no-backoff.",
            )
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
    def hierarchical(self) -> bool:
        """Whether patches may be named by their family (a hierarchy, and back-off on)."""
        return self.backoff and bool(self.card.parents)

    @property
    def entries(self) -> list[LegendEntry]:
        """The card's classes in order (value = class id), then Uncertain if enabled.

        A hierarchical legend lists the families between them.
        """
        card = self.card
        entries = [LegendEntry(i, c.name, c.color) for i, c in enumerate(card.classes)]
        if self.hierarchical:
            first = card.num_classes
            entries += [LegendEntry(first + j, p.name, p.color) for j, p in enumerate(card.parents)]
        if self.enabled:
            entries.append(LegendEntry(UNCERTAIN_VALUE, UNCERTAIN, self.uncertain_color))
        return entries

    @property
    def mapped_names(self) -> list[str]:
        """The names of map values 0, 1, ...: the classes, then the families if named."""
        return [e.name for e in self.entries if e.value != UNCERTAIN_VALUE]

    @property
    def names(self) -> dict[int, str]:
        """Entry names by map value."""
        return {e.value: e.name for e in self.entries}

    def family(self, entry: LegendEntry) -> str | None:
        """The family an entry belongs to: a class's parent, a family itself, else None."""
        card = self.card
        if entry.value < card.num_classes:
            return card.classes[entry.value].parent
        if entry.value < card.num_classes + len(card.parents):
            return card.parents[entry.value - card.num_classes].name
        return None

    def level_of(self, entry: LegendEntry) -> Level:
        """Whether an entry names a class, a family or Uncertain."""
        if entry.value < self.card.num_classes:
            return Level.LEAF
        return Level.UNCERTAIN if entry.value == UNCERTAIN_VALUE else Level.PARENT

    def label(self, probabilities: npt.NDArray[np.floating]) -> Labels:
        """What the map says for patches with these class probabilities (..., classes).

        Skipped patches (NaN probabilities) get nodata.
        """
        return label_patches(
            probabilities, self.card, self.uncertain_below, backoff=self.hierarchical
        )

    @property
    def uncertain_color(self) -> str:
        """The grey of ``UNCERTAIN_GREYS`` furthest (in RGB) from all the card's colours."""
        colors = np.array([_rgb(c.color) for c in self.card.classes], dtype=float)
        greys = np.array([_rgb(g) for g in UNCERTAIN_GREYS], dtype=float)
        distance = np.linalg.norm(greys[:, None] - colors[None], axis=-1).min(axis=1)
        return UNCERTAIN_GREYS[int(distance.argmax())]

    def raster_values(self, result: ChunkResult) -> npt.NDArray[np.intp]:
        """The GeoTIFF class band of a chunk: class and family ids, Uncertain, nodata."""
        return self.label(result.probabilities).values


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
