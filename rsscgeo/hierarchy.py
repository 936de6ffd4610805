"""What a class hierarchy makes of class probabilities: a class, a family, or Uncertain.

The rule (see ``scene.legend``): a patch (or image) is named by its most probable class
when that class's calibrated probability reaches the threshold; otherwise, with
back-off on a card with families, by its most probable family when the family's summed
probability reaches it; otherwise it is Uncertain. Shared by the map writers, ``change``
and ``evaluate``.

Values follow the GeoTIFF class band: class ids, then the number of classes + family
index, Uncertain 254, nodata (skipped) 255.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rsscgeo.modelfile import ModelCard

UNCERTAIN_VALUE = 254  # GeoTIFF class band
CLASS_NODATA = 255  # GeoTIFF class band: skipped patches


class Level(enum.IntEnum):
    """At which level a patch is named."""

    LEAF = 0
    PARENT = 1
    UNCERTAIN = 2

    @property
    def label(self) -> str:
        """The name written in outputs: leaf, parent or uncertain."""
        return self.name.lower()


@dataclass(frozen=True)
class Labels:
    """What a map says for a set of patches (arrays of one shape).

    Attributes:
        values: Map values: class id, number of classes + family index, Uncertain
            (254), or nodata (255) where the patch was skipped.
        level: ``Level`` of each answer (meaningless where skipped).
        leaf: The most probable class (-1 where skipped).
        parent: The family named, or for a class answer its family, or for an
            Uncertain one the most probable family (-1 on flat cards and where skipped).
        score: The probability of what the map says (for Uncertain: of the top class).
    """

    values: npt.NDArray[np.intp]
    level: npt.NDArray[np.int8]
    leaf: npt.NDArray[np.intp]
    parent: npt.NDArray[np.intp]
    score: npt.NDArray[np.float32]


def label_patches(
    probabilities: npt.NDArray[np.floating],
    card: ModelCard,
    uncertain_below: float,
    *,
    backoff: bool = True,
) -> Labels:
    """What a map says for patches with these class probabilities (..., classes).

    Args:
        probabilities: Calibrated class probabilities; NaN rows are skipped patches.
        card: The model card (classes and families).
        uncertain_below: The threshold both levels are held to (0: never Uncertain).
        backoff: Name a doubtful patch by its family (cards with families only).
    """
    skipped = np.isnan(probabilities[..., 0])
    probs = np.nan_to_num(probabilities)
    leaf = probs.argmax(axis=-1)
    leaf_score = np.take_along_axis(probs, leaf[..., None], axis=-1)[..., 0]
    named_leaf = ~(leaf_score < uncertain_below)
    values = np.where(named_leaf, leaf, UNCERTAIN_VALUE)
    level = np.where(named_leaf, Level.LEAF, Level.UNCERTAIN).astype(np.int8)
    score = leaf_score.astype(np.float32)
    parent = np.full(leaf.shape, -1)
    if card.parents:
        ids = np.asarray(card.parent_ids)
        family_probs = family_probabilities(probs, card)
        best = family_probs.argmax(axis=-1)
        family_score = np.take_along_axis(family_probs, best[..., None], axis=-1)[..., 0]
        parent = np.where(named_leaf, ids[leaf], best)
        if backoff:
            named_parent = ~named_leaf & ~(family_score < uncertain_below)
            values = np.where(named_parent, card.num_classes + best, values)
            level = np.where(named_parent, np.int8(Level.PARENT), level)
            score = np.where(named_parent, family_score, score).astype(np.float32)
    values = np.where(skipped, CLASS_NODATA, values)
    leaf = np.where(skipped, -1, leaf)
    parent = np.where(skipped, -1, parent)
    score = np.where(skipped, np.float32(np.nan), score)
    return Labels(values, level, leaf, parent, score)


def family_probabilities(
    probabilities: npt.NDArray[np.floating], card: ModelCard
) -> npt.NDArray[np.floating]:
    """Each family's probability: the sum over its classes (..., families)."""
    membership = np.zeros((card.num_classes, len(card.parents)), probabilities.dtype)
    membership[np.arange(card.num_classes), card.parent_ids] = 1
    result: npt.NDArray[np.floating] = probabilities @ membership
    return result
