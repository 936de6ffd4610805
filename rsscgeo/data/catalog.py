"""Catalogues of labelled tiles: which files exist and which labels each carries.

The types (:class:`Item`, :class:`Catalog`) and the readers of three layouts:

* class folders (AID, UC Merced, NWPU-RESISC45, PatternNet, RSI-CB): ``root/<class>/*``;
* a CSV manifest with columns ``path,labels`` (labels separated by ``;``), relative
  paths resolved against the manifest's folder; written by ``rsscgeo tiles`` too;
* BigEarthNet patch folders (``<patch>/<patch>_B0x.tif`` + ``*_labels_metadata.json``).

Which reader a source needs is decided in :mod:`rsscgeo.data.layouts`, whose
``open_catalog`` detects these three and opens the paper's six datasets by name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rsscgeo.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
LABEL_SEPARATOR = ";"
Task = Literal["multiclass", "multilabel"]


@dataclass(frozen=True)
class Item:
    """One labelled tile: a path and the indices of its labels."""

    path: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Catalog:
    """Labelled tiles with their class list and task."""

    root: Path
    classes: tuple[str, ...]
    task: Task
    items: tuple[Item, ...]

    def label_names(self, item: Item) -> list[str]:
        """The class names of one item."""
        return [self.classes[i] for i in item.labels]

    def subset(self, paths: set[Path]) -> Catalog:
        """The items whose path is in ``paths``, with the same classes."""
        items = tuple(i for i in self.items if i.path in paths)
        return Catalog(self.root, self.classes, self.task, items)


def scan_class_folders(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """Read a dataset laid out as one folder of images per class (single-label).

    Raises:
        DatasetError: If there are no class folders, a class folder has no images, or
            a folder is not one of ``classes``.
    """
    folders = subfolders(root)
    if not folders:
        raise DatasetError(
            f"{root} has no class folders; expected {root}/<class name>/<image files>."
        )
    return scan_folders(root, folders, classes)


def scan_folders(
    root: Path, folders: Sequence[Path], classes: Sequence[str] | None = None
) -> Catalog:
    """Read one class per folder, named as the folder, into a catalogue rooted at ``root``.

    Args:
        root: The catalogue's root (split CSVs hold paths relative to it).
        folders: The class folders, anywhere under ``root``, in class order.
        classes: The allowed class names; by default the folder names.

    Raises:
        DatasetError: If a folder has no images or is not one of ``classes``.
    """
    names = list(classes) if classes is not None else [f.name for f in folders]
    index_of = class_index(names, [f.name for f in folders], where=str(root))
    items: list[Item] = []
    for folder in folders:
        index = index_of[folder.name]
        images = folder_images(folder)
        if not images:
            raise DatasetError(
                f"class folder {folder} has no images (.jpg/.png/.tif); "
                "add images or remove the folder."
            )
        items.extend(Item(path, (index,)) for path in images)
    return Catalog(root, tuple(names), "multiclass", tuple(items))


def subfolders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` by name, without hidden ones (``.ipynb_checkpoints``)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_images(folder: Path) -> list[Path]:
    """The image files anywhere under ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(path: Path, classes: Sequence[str] | None = None) -> Catalog:
    """Read a ``path,labels`` CSV manifest (multi-label when any row has several labels).

    Args:
        path: The CSV file.
        classes: The allowed class names; when given, an unknown label is an error.
            Otherwise classes are the sorted set of labels found.

    Raises:
        DatasetError: If the file is malformed, a path is missing or a label unknown.
    """
    rows = _manifest_rows(path)
    found = sorted({label for _, labels in rows for label in labels})
    names = list(classes) if classes is not None else found
    index = class_index(names, [], where=str(path))
    items = []
    for line, (rel, labels) in enumerate(rows, start=2):
        require_known(index, labels, where=f"{path}:{line}")
        image = (path.parent / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not image.exists():
            raise DatasetError(f"{path}:{line}: image {image} does not exist; fix the path.")
        items.append(Item(image, tuple(sorted(index[lab] for lab in labels))))
    task: Task = "multilabel" if any(len(i.labels) != 1 for i in items) else "multiclass"
    return Catalog(path.parent, tuple(names), task, tuple(items))


def scan_bigearthnet(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """Read BigEarthNet patch folders and their CORINE multi-label annotations.

    Raises:
        DatasetError: If a metadata file is unreadable.
    """
    patches: list[tuple[Path, list[str]]] = []
    for meta in sorted(root.glob("*/*_labels_metadata.json")):
        try:
            labels = json.loads(meta.read_text())["labels"]
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError(f"{meta}: cannot read labels ({err}); restore the file.") from None
        patches.append((meta.parent, labels))
    names = (
        list(classes) if classes is not None else sorted({lab for _, ls in patches for lab in ls})
    )
    index = class_index(names, [lab for _, ls in patches for lab in ls], where=str(root))
    items = tuple(Item(p, tuple(sorted(index[lab] for lab in ls))) for p, ls in patches)
    return Catalog(root, tuple(names), "multilabel", items)


def write_manifest(path: Path, rows: list[tuple[str, list[str]]]) -> None:
    """Write a ``path,labels`` manifest."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for rel, labels in rows:
            writer.writerow([rel, LABEL_SEPARATOR.join(labels)])


def class_index(names: Sequence[str], labels: Sequence[str], where: str) -> dict[str, int]:
    """Index of each class name.

    Raises:
        DatasetError: Naming ``where`` and the first of ``labels`` that is not a class.
    """
    index = {name: i for i, name in enumerate(names)}
    require_known(index, labels, where)
    return index


def require_known(index: dict[str, int], labels: Sequence[str], where: str) -> None:
    """Raise a DatasetError naming ``where`` and the first of ``labels`` not in ``index``."""
    unknown = [label for label in labels if label not in index]
    if unknown:
        names = list(index)
        shown = ", ".join(names[:8]) + ("..." if len(names) > 8 else "")
        raise DatasetError(f"{where}: unknown label {unknown[0]!r}; known labels: {shown}.")


def _manifest_rows(path: Path) -> list[tuple[str, list[str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
                raise DatasetError(
                    f"{path}: a manifest needs the header 'path,labels'; found {reader.fieldnames}."
                )
            rows = [
                (
                    row["path"],
                    [s.strip() for s in (row["labels"] or "").split(LABEL_SEPARATOR) if s.strip()],
                )
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path} is not a readable CSV manifest ({err}).") from None
    if not rows:
        raise DatasetError(f"{path}: the manifest has no rows; add 'path,labels' lines.")
    for line, (rel, labels) in enumerate(rows, start=2):
        if not rel or not labels:
            raise DatasetError(f"{path}:{line}: every row needs a path and at least one label.")
    return rows
