"""Class maps: which model classes count as correct for the folders of another dataset.

A model trained on AID knows AID's 30 classes; UC Merced's folders are named otherwise
and not all of them have a counterpart. A class map is a YAML mapping from a dataset's
class-folder names to the model classes accepted for each::

    agricultural: [Farmland]    # crop fields
    forest: Forest              # one class may be written without brackets

A prediction is correct when the model's top-1 class is one of the accepted classes.
Folders the map does not name are left out of the evaluation (and reported as such).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from rsscgeo.data.catalog import Catalog, Item
from rsscgeo.errors import ConfigError, DatasetError
from rsscgeo.yamlfile import read_yaml

_FORMAT = "write one '<dataset folder>: [<model class>, ...]' line per folder"


class _Accepted(RootModel[dict[str, list[str]]]):
    """The raw mapping, validated: folder → non-empty list of distinct class names."""

    @field_validator("root", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("root")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for folder, names in value.items():
            if not folder.strip():
                raise ValueError("a dataset folder name is empty")
            if not names:
                raise ValueError(f"{folder}: accepts no model class; name at least one")
            if len(set(names)) != len(names):
                raise ValueError(f"{folder}: a model class is listed twice")
        return value


class ClassMap(BaseModel):
    """Dataset folder → the model classes accepted as correct for its images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accepted: dict[str, tuple[str, ...]] = Field(min_length=1)
    source: str = Field(default="class map", description="Where it was read, for messages.")

    @property
    def folders(self) -> list[str]:
        """The mapped dataset folders, in the map's order."""
        return list(self.accepted)


def load_class_map(path: str | Path) -> ClassMap:
    """Read and validate a class map YAML file.

    Raises:
        ConfigError: If the file is missing, not YAML or not a folder → classes mapping.
    """
    path = Path(path)
    raw = read_yaml(path, "class map", f"{_FORMAT} (see configs/class_maps/)")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path} must map dataset folders to model classes; {_FORMAT}.")
    return parse_class_map(raw, source=str(path))


def parse_class_map(raw: dict[str, object], *, source: str = "class map") -> ClassMap:
    """Validate an already parsed folder → classes mapping.

    Raises:
        ConfigError: Naming the bad entry.
    """
    try:
        accepted = _Accepted.model_validate(raw).root
    except ValidationError as err:
        first = err.errors()[0]
        loc = [str(p) for p in first["loc"]]
        where = loc[0] + "".join(f"[{p}]" for p in loc[1:]) + ": " if loc else ""
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise ConfigError(f"{source}: {where}{message}; {_FORMAT}.") from None
    return ClassMap(accepted={k: tuple(v) for k, v in accepted.items()}, source=source)


def check_model_classes(class_map: ClassMap, model_classes: Sequence[str], model: str) -> None:
    """Refuse accepted class names that the model does not predict.

    Raises:
        ConfigError: Naming the entry, the unknown class and the closest model class.
    """
    known = set(model_classes)
    for folder, names in class_map.accepted.items():
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"{class_map.source}: {folder}: {name!r} is not a class of {model}"
                    f"{did_you_mean(name, model_classes)}; use the model's class names "
                    "exactly (rsscgeo models inspect MODEL)."
                )


def check_folders(class_map: ClassMap, catalog: Catalog) -> None:
    """Refuse map entries that are not class folders (labels) of the dataset.

    Raises:
        DatasetError: Naming the entry and the dataset's folders; or if the dataset is
            multi-label.
    """
    if catalog.task != "multiclass":
        raise DatasetError(
            f"{catalog.root} is a multi-label dataset; a class map needs single-label "
            "class folders."
        )
    for folder in class_map.folders:
        if folder not in catalog.classes:
            shown = ", ".join(catalog.classes[:12]) + ("..." if len(catalog.classes) > 12 else "")
            raise DatasetError(
                f"{class_map.source}: {folder!r} is not a class folder of {catalog.root}"
                f"{did_you_mean(folder, catalog.classes)} (its folders: {shown}); fix the "
                "entry or remove it from the class map."
            )


@dataclass(frozen=True)
class LeftOut:
    """A dataset folder that takes no part in the evaluation, and why."""

    folder: str
    images: int
    reason: str

    def __str__(self) -> str:
        return f"{self.folder} ({self.reason}; {self.images} images)"


@dataclass(frozen=True)
class MappedCatalog:
    """The mapped folders' images, and the model classes accepted for each folder.

    ``catalog.classes`` are the mapped folders in the dataset's order; ``accepted[i]``
    holds the indexes of the model classes accepted for ``catalog.classes[i]``.
    """

    catalog: Catalog
    model_classes: tuple[str, ...]
    accepted: tuple[tuple[int, ...], ...]
    left_out: tuple[LeftOut, ...]

    def accepted_names(self, index: int) -> list[str]:
        """The accepted model class names of dataset class ``index``."""
        return [self.model_classes[i] for i in self.accepted[index]]


def map_catalog(
    catalog: Catalog, class_map: ClassMap, model_classes: Sequence[str], model: str = "the model"
) -> MappedCatalog:
    """Keep the images of the mapped folders, labelled by folder, with their accepted classes.

    Args:
        catalog: The dataset opened with its own folder names as classes.
        class_map: Folder → accepted model classes.
        model_classes: The model's class names in output order.
        model: How to name the model in messages (e.g. its path).

    Raises:
        ConfigError: If the map accepts a class the model does not have.
        DatasetError: If the map names a folder the dataset does not have, or the
            dataset is multi-label.
    """
    check_model_classes(class_map, model_classes, model)
    check_folders(class_map, catalog)
    kept = [name for name in catalog.classes if name in class_map.accepted]
    new_index = {catalog.classes.index(name): i for i, name in enumerate(kept)}
    counts = [0] * len(catalog.classes)
    items = []
    for item in catalog.items:
        counts[item.labels[0]] += 1
        if item.labels[0] in new_index:
            items.append(Item(item.path, (new_index[item.labels[0]],)))
    if not items:
        raise DatasetError(
            f"{catalog.root} has no images in the folders of {class_map.source}; "
            "add images or map other folders."
        )
    position = {name: i for i, name in enumerate(model_classes)}
    accepted = tuple(tuple(position[n] for n in class_map.accepted[name]) for name in kept)
    left_out = tuple(
        LeftOut(name, counts[i], "not in the class map")
        for i, name in enumerate(catalog.classes)
        if name not in class_map.accepted
    )
    subset = Catalog(catalog.root, tuple(kept), "multiclass", tuple(items))
    return MappedCatalog(subset, tuple(model_classes), accepted, left_out)


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'X'?)"`` for the closest of ``choices``, or nothing."""
    lowered = {c.lower(): c for c in choices}
    close = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)), None
    )
    return f" (did you mean {close!r}?)" if close else ""
