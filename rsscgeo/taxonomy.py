"""A taxonomy: the classes a model predicts, grouped into families (parents).

Read from a YAML file with the family colours and each class's family, in the model's
output order (see ``configs/taxonomy/land_use_33.yaml``)::

    parents:
      Water: "#2171b5"
    leaves:
      Pond: Water
      River: Water

Each class's colour is a shade of its family's hue (``colors.family_shades``), so maps
read as families. Class maps of training sources name classes or whole families.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.colors as mcolors

from rsscgeo.colors import family_shades
from rsscgeo.errors import ConfigError
from rsscgeo.modelfile import ClassInfo, ParentInfo
from rsscgeo.yamlfile import read_yaml

_FORMAT = "write 'parents: {Family: \"#rrggbb\"}' and 'leaves: {Class: Family}'"


@dataclass(frozen=True)
class Taxonomy:
    """Classes (leaves, in output order), their families, and the families' colours.

    Attributes:
        leaves: Class names in the model's output order.
        parent_of: The family of each class, by position.
        parents: Family names in the file's order.
        parent_colors: ``#rrggbb`` of each family.
        source: Where it was read, for messages.
    """

    leaves: tuple[str, ...]
    parent_of: tuple[str, ...]
    parents: tuple[str, ...]
    parent_colors: tuple[str, ...]
    source: str = "taxonomy"

    def members(self, parent: str) -> tuple[int, ...]:
        """The class indexes of one family."""
        return tuple(i for i, p in enumerate(self.parent_of) if p == parent)

    def classes(self) -> list[ClassInfo]:
        """The classes for a model card, each coloured by a shade of its family."""
        colors: dict[int, str] = {}
        for parent, family_color in zip(self.parents, self.parent_colors, strict=True):
            members = self.members(parent)
            colors.update(zip(members, family_shades(family_color, len(members)), strict=True))
        return [
            ClassInfo(name=name, color=colors[i], parent=self.parent_of[i])
            for i, name in enumerate(self.leaves)
        ]

    def parent_infos(self) -> list[ParentInfo]:
        """The families for a model card."""
        return [
            ParentInfo(name=n, color=c)
            for n, c in zip(self.parents, self.parent_colors, strict=True)
        ]

    def resolve(self, name: str) -> tuple[int, ...]:
        """The class indexes ``name`` stands for: one class, or every class of a family.

        Raises:
            KeyError: If ``name`` is neither a class nor a family.
        """
        if name in self.leaves:
            return (self.leaves.index(name),)
        if name in self.parents:
            return self.members(name)
        raise KeyError(name)


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and check a taxonomy YAML file.

    Raises:
        ConfigError: If the file is missing or malformed, a class names an unknown
            family, a family has no class, or a name is used twice.
    """
    path = Path(path)
    raw = read_yaml(path, "taxonomy", f"{_FORMAT} (see configs/taxonomy/)")
    if not isinstance(raw, dict) or set(raw) != {"parents", "leaves"}:
        raise ConfigError(
            f"{path}: a taxonomy has exactly two keys, parents and leaves; {_FORMAT}."
        )
    parents, leaves = raw["parents"], raw["leaves"]
    if not isinstance(parents, dict) or not isinstance(leaves, dict) or not parents or not leaves:
        raise ConfigError(f"{path}: parents and leaves must be non-empty mappings; {_FORMAT}.")
    for name, color in parents.items():
        if not isinstance(color, str) or not mcolors.is_color_like(color):
            raise ConfigError(f"{path}: parents.{name}: {color!r} is not a colour; use '#rrggbb'.")
    for leaf, parent in leaves.items():
        if parent not in parents:
            raise ConfigError(
                f"{path}: leaves.{leaf}: {parent!r} is not one of the parents "
                f"({', '.join(map(str, parents))}); fix the name or add the parent."
            )
    both = sorted(set(map(str, parents)) & set(map(str, leaves)))
    if both:
        raise ConfigError(f"{path}: {both[0]!r} is both a parent and a leaf; rename one.")
    empty = [p for p in parents if p not in leaves.values()]
    if empty:
        raise ConfigError(f"{path}: parent {empty[0]!r} has no leaf; remove it or add leaves.")
    return Taxonomy(
        leaves=tuple(map(str, leaves)),
        parent_of=tuple(map(str, leaves.values())),
        parents=tuple(map(str, parents)),
        parent_colors=tuple(mcolors.to_hex(c) for c in parents.values()),
        source=str(path),
    )
