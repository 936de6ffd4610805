"""The adapted model's classes: the base model's, plus the new names in the labels.

A label names a class of the base model, one of its families (any class of that
family: trained with the partial-label loss), or a new class. A new class joins the
family its labelled patches most often fall in according to the base model, and gets
the shade of that family's hue furthest from the colours already used; on a flat card
it gets the next palette colour. With ``only_labelled`` the model keeps just the
classes the labels name (a family's label keeps all of its classes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.colors as mcolors
import numpy as np
import torch

from rsscgeo.colors import family_shades, spare_color
from rsscgeo.errors import LabelsError
from rsscgeo.modelfile import ClassInfo, ModelCard, ParentInfo

# Shades tried per family when a new class needs a colour of that family's hue.
SHADES_TRIED = 12


@dataclass(frozen=True)
class AdaptedClasses:
    """The classes an adapted model predicts, and how each label maps onto them.

    Attributes:
        classes: The adapted card's classes, in output order.
        parents: The adapted card's families (the base card's, or none on a flat card).
        base_index: For each class, its output index in the base model (-1: new).
        new: The names of the classes the base model did not have.
    """

    classes: list[ClassInfo]
    parents: list[ParentInfo]
    base_index: list[int]
    new: list[str]

    @property
    def names(self) -> list[str]:
        """Class names in output order."""
        return [c.name for c in self.classes]

    @property
    def of_base(self) -> dict[int, int]:
        """For each base-model output index the adapted model keeps, its adapted index."""
        return {base: i for i, base in enumerate(self.base_index) if base >= 0}

    def allowed(self, name: str) -> torch.Tensor:
        """The classes a label may be (one class, or every class of a family)."""
        mask = torch.zeros(len(self.classes), dtype=torch.bool)
        for i, info in enumerate(self.classes):
            if name in (info.name, info.parent):
                mask[i] = True
        return mask

    def targets(self, names: Sequence[str]) -> torch.Tensor:
        """N x classes masks of the classes each label may be."""
        if not names:
            return torch.zeros((0, len(self.classes)), dtype=torch.bool)
        return torch.stack([self.allowed(n) for n in names])


def adapted_classes(
    card: ModelCard,
    label_names: Sequence[str],
    base_top1: Sequence[int],
    *,
    only_labelled: bool = False,
) -> AdaptedClasses:
    """The adapted model's classes for labels ``label_names``.

    Args:
        card: The base model's card.
        label_names: One name per labelled patch.
        base_top1: The base model's most probable class for each labelled patch (places
            a new class in a family).
        only_labelled: Keep only the classes the labels name.

    Raises:
        LabelsError: If fewer than two classes would remain.
    """
    known = set(card.class_names) | set(card.parent_names)
    new = sorted({n for n in label_names if n not in known})
    classes = [c.model_copy() for c in card.classes]
    base_index = list(range(card.num_classes))
    if only_labelled:
        named = set(label_names)
        keep = [i for i, c in enumerate(classes) if c.name in named or c.parent in named]
        classes = [classes[i] for i in keep]
        base_index = keep
    used = [c.color for c in card.classes]
    for name in new:
        parent = _family_of(card, name, label_names, base_top1)
        color = _new_color(card, parent, used)
        used.append(color)
        classes.append(ClassInfo(name=name, color=color, parent=parent))
        base_index.append(-1)
    families = {c.parent for c in classes}
    parents = [p.model_copy() for p in card.parents if p.name in families]
    if len(classes) < 2:
        raise LabelsError(
            f"the labels name only {', '.join(c.name for c in classes) or 'no class'}; a model "
            "needs at least 2 classes (label patches of another class, or drop "
            "only_labelled_classes)",
            cli_fix="label patches of another class too, or drop --only-labelled-classes.",
        )
    return AdaptedClasses(classes, parents, base_index, new)


def _family_of(
    card: ModelCard, name: str, label_names: Sequence[str], base_top1: Sequence[int]
) -> str | None:
    """The family the base model most often puts ``name``'s patches in (flat card: None)."""
    if not card.parents:
        return None
    votes: Counter[str | None] = Counter(
        card.classes[top].parent for n, top in zip(label_names, base_top1, strict=True) if n == name
    )
    return votes.most_common(1)[0][0]


def _new_color(card: ModelCard, parent: str | None, used: list[str]) -> str:
    """A colour for a new class: a spare shade of its family's hue, else a palette colour."""
    if parent is None:
        return spare_color(used)
    hue = next(p.color for p in card.parents if p.name == parent)
    shades = family_shades(hue, SHADES_TRIED)
    taken = np.array([mcolors.to_rgb(c) for c in used])
    distance = [np.linalg.norm(taken - np.array(mcolors.to_rgb(s)), axis=1).min() for s in shades]
    return shades[int(np.argmax(distance))]
