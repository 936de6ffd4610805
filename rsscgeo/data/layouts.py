"""Dataset layouts: how a folder or file becomes a catalogue, and ``open_catalog``.

:func:`open_catalog` is the one way in. Given a layout name it opens one of the paper's
published layouts (:data:`LAYOUTS`, listed by ``rsscgeo datasets list``); without one it
tries the detected layouts (:data:`DETECTED`) in order: a ``path,labels`` CSV manifest
file, BigEarthNet patch folders (``*/*_labels_metadata.json``), then a class-folder tree.

Risojević & Stojnić (2021) train and test on AID, UC Merced, NWPU-RESISC45, PatternNet,
RSI-CB256 and MLRSNet. Each loader takes the dataset's top folder as unpacked from its
archive or, where that is unambiguous, the folder that directly holds the class folders,
and returns a :class:`~rsscgeo.data.catalog.Catalog` rooted at one fixed folder of the
dataset, so a split CSV written from either path reads back from the other.

Layouts as published, and where they were checked:

* ``aid``: ``AID/<Class>/<class>_<n>.jpg``, 30 classes, 10,000 JPEGs of 600x600 px. Checked
  on the AID images in ``shared/data/aid150``: 30 CamelCase class folders (``Airport`` ...
  ``Viaduct``) of lower-case ``<class>_<n>.jpg`` files.
* ``ucmerced``: ``UCMerced_LandUse/Images/<class>/<class>NN.tif``, 21 classes x 100 RGB TIFFs
  without georeferencing, 256x256 px (44 are a few pixels off, says the TFDS catalogue).
  torchgeo's ``UCMerced`` reads ``base_dir = UCMerced_LandUse/Images``.
* ``resisc45``: ``NWPU-RESISC45/<class>/<class>_NNN.jpg``, 45 classes x 700 JPEGs
  (torchrs reads ``NWPU-RESISC45`` as an ``ImageFolder``; class names as in TFDS).
* ``patternnet``: ``PatternNet/images/<class>/*.jpg``, 38 classes x 800 JPEGs (torchgeo's
  ``PatternNet``: ``directory = PatternNet/images``).
* ``rsicb256``: ``RSI-CB256/<category>/<class>/*.tif``, 35 classes under 6 categories:
  cultivated land, construction land and facilities, transportation and facilities,
  water area and facilities, woodland, other land (lehaifeng/RSI-CB README). The category
  folders are spelt differently from copy to copy (``construction_land`` and
  ``other objects`` are both in use), so any names are accepted; the classes are the leaf
  folders, which must be unique.
* ``mlrsnet`` and ``mlrsnet-multilabel``: ``MLRSNet/Images/<category>/<category>_NNNNN.jpg``,
  46 categories, 109,161 JPEGs, and ``MLRSNet/labels/<category>.csv`` (cugbrs/MLRSNet). A
  CSV's header is ``image,airplane,airport,bare soil,...,wind turbine`` (60 label names,
  some with spaces, ``habor`` misspelt as published), then a ``<file name>,0,1,...`` row per
  image. Category folders, CSVs and file names share their spelling, typos included
  (``swimmimg_pool``). Some copies unpack to ``Images/<category>/<category>/``, so images
  are found at any depth under their category folder. Single-label uses the 46 categories,
  multi-label the 60 labels; both root their catalogue at ``MLRSNet`` so they share paths.
"""

from __future__ import annotations

import csv
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rsscgeo.data.catalog import (
    IMAGE_SUFFIXES,
    Catalog,
    Item,
    Task,
    class_index,
    folder_images,
    read_manifest,
    require_known,
    scan_bigearthnet,
    scan_class_folders,
    scan_folders,
    subfolders,
)
from rsscgeo.errors import DatasetError


class Opener(Protocol):
    """Reads one layout from the path the user gave, with an optional fixed class list."""

    def __call__(self, root: Path, /, classes: Sequence[str] | None = None) -> Catalog:
        """The catalogue of the dataset at ``root``."""
        ...


@dataclass(frozen=True)
class Layout:
    """A dataset layout and the function that reads it.

    A published layout (``detect`` is ``None``) is chosen by name and carries its
    dataset's class and image counts; a detected one is recognised by ``detect``.
    """

    name: str
    dataset: str
    n_classes: int | None
    n_images: int | None
    tree: str
    task: Task | None  # None: decided by the data (a manifest's rows)
    opener: Opener
    detect: Callable[[Path], bool] | None = None


LAYOUTS: dict[str, Layout] = {}
"""The published layouts, by name (``data.layout``, ``rsscgeo datasets split``)."""
DETECTED: dict[str, Layout] = {}
"""The detected layouts, in the order :func:`open_catalog` tries them."""


def register(
    name: str,
    dataset: str,
    n_classes: int | None,
    n_images: int | None,
    tree: str,
    task: Task | None = "multiclass",
    detect: Callable[[Path], bool] | None = None,
) -> Callable[[Opener], Opener]:
    """Decorator: make an opener known under ``name``.

    A published layout goes into :data:`LAYOUTS`, and its opener first checks that its
    folder exists, called directly or not. With ``detect`` the layout goes into
    :data:`DETECTED` instead, tried after those registered before it.
    """

    def add(opener: Opener) -> Opener:
        if detect is not None:
            DETECTED[name] = Layout(name, dataset, n_classes, n_images, tree, task, opener, detect)
            return opener

        @functools.wraps(opener)
        def checked(root: Path, /, classes: Sequence[str] | None = None) -> Catalog:
            root = Path(root)
            if not root.is_dir():
                state = "is a file, not a folder" if root.exists() else "does not exist"
                raise DatasetError(
                    f"dataset folder {root} {state}; layout {name!r} expects {tree}."
                )
            return opener(root, classes)

        LAYOUTS[name] = Layout(name, dataset, n_classes, n_images, tree, task, checked)
        return checked

    return add


def get_layout(name: str) -> Layout:
    """The published layout called ``name``.

    Raises:
        DatasetError: If no layout has that name, listing those that do.
    """
    if name not in LAYOUTS:
        raise DatasetError(
            f"unknown dataset layout {name!r}; use one of {', '.join(LAYOUTS)} "
            "(rsscgeo datasets list)."
        )
    return LAYOUTS[name]


def open_catalog(
    source: str | Path, classes: Sequence[str] | None = None, layout: str | None = None
) -> Catalog:
    """Open a dataset in a published layout, or detect its layout.

    Args:
        source: The dataset folder or manifest file; for a published layout, the
            dataset's top folder (or the folder holding its class folders).
        classes: A fixed class list (e.g. a model's); labels outside it are errors.
            By default the classes are those found in the dataset.
        layout: A published layout (``aid``, ``mlrsnet-multilabel``, ... see
            :data:`LAYOUTS`); ``None`` detects a manifest file, BigEarthNet patch
            folders or class folders (:data:`DETECTED`).

    Raises:
        DatasetError: If the source is missing, empty or malformed, or the layout unknown.
    """
    source = Path(source)
    if layout is not None:
        return get_layout(layout).opener(source, classes)
    if not source.exists():
        raise DatasetError(f"dataset {source} does not exist; check the path.")
    for detected in DETECTED.values():
        if detected.detect is not None and detected.detect(source):
            return detected.opener(source, classes)
    raise DatasetError(
        f"dataset {source} is neither a folder nor a file; pass a dataset folder or a "
        "path,labels CSV manifest."
    )


# The detected layouts, in the order open_catalog tries them: a file can only be a
# manifest, and BigEarthNet's patch folders would otherwise read as class folders.
register(
    "manifest",
    "CSV manifest",
    None,
    None,
    "<file>.csv with rows 'path,labels' (labels separated by ';')",
    task=None,
    detect=Path.is_file,
)(read_manifest)
register(
    "bigearthnet",
    "BigEarthNet",
    None,
    None,
    "<root>/<patch>/<patch>_B0x.tif + <patch>_labels_metadata.json",
    task="multilabel",
    detect=lambda source: any(source.glob("*/*_labels_metadata.json")),
)(scan_bigearthnet)
register(
    "class-folders",
    "class folders",
    None,
    None,
    "<root>/<class>/<image>",
    detect=Path.is_dir,
)(scan_class_folders)


def split_filename(layout: str, train_fraction: float, seed: int) -> str:
    """The split CSV's file name, e.g. ``aid_train20_seed0.csv``."""
    return f"{layout}_train{train_fraction * 100:g}_seed{seed}.csv"


@register("aid", "AID", 30, 10_000, "AID/<class>/<image>.jpg")
def open_aid(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """AID, from the ``AID`` folder."""
    return _flat(root, "aid", classes)


@register(
    "ucmerced", "UC Merced Land Use", 21, 2_100, "UCMerced_LandUse/Images/<class>/<class>NN.tif"
)
def open_ucmerced(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """UC Merced, from ``UCMerced_LandUse`` or its ``Images`` folder."""
    return _flat(_inner(root, "Images"), "ucmerced", classes)


@register("resisc45", "NWPU-RESISC45", 45, 31_500, "NWPU-RESISC45/<class>/<class>_NNN.jpg")
def open_resisc45(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """NWPU-RESISC45, from the ``NWPU-RESISC45`` folder."""
    return _flat(root, "resisc45", classes)


@register("patternnet", "PatternNet", 38, 30_400, "PatternNet/images/<class>/<image>.jpg")
def open_patternnet(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """PatternNet, from ``PatternNet`` or its ``images`` folder."""
    return _flat(_inner(root, "images"), "patternnet", classes)


@register("rsicb256", "RSI-CB256", 35, 24_747, "RSI-CB256/<category>/<class>/<image>.tif")
def open_rsicb256(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """RSI-CB256, from the ``RSI-CB256`` folder; classes are the leaf folders."""
    leaves = [leaf for category in _class_folders(root, "rsicb256") for leaf in _leaves(category)]
    _require_flat(leaves, "rsicb256")
    repeated = [name for name, n in Counter(leaf.name for leaf in leaves).items() if n > 1]
    if repeated:
        raise DatasetError(
            f"class folder {repeated[0]!r} appears under several categories of {root}; "
            "rename one so that every class name is unique."
        )
    return scan_folders(root, sorted(leaves, key=lambda leaf: leaf.name), classes)


@register("mlrsnet", "MLRSNet", 46, 109_161, "MLRSNet/Images/<category>/<category>_NNNNN.jpg")
def open_mlrsnet(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """MLRSNet's 46 categories (single-label), from ``MLRSNet`` or its ``Images`` folder."""
    top, images = _mlrsnet_folders(root, "mlrsnet")
    # No _require_flat: some copies unpack to Images/<category>/<category>/*.jpg.
    return scan_folders(top, _class_folders(images, "mlrsnet"), classes)


@register(
    "mlrsnet-multilabel",
    "MLRSNet",
    60,
    109_161,
    "MLRSNet/Images/<category>/<image>.jpg + MLRSNet/labels/<category>.csv",
    task="multilabel",
)
def open_mlrsnet_multilabel(root: Path, classes: Sequence[str] | None = None) -> Catalog:
    """MLRSNet's 60 labels (multi-label) from its per-category label CSVs.

    The classes are the label columns of the first CSV, in the published order.
    """
    name = "mlrsnet-multilabel"
    top, images = _mlrsnet_folders(root, name)
    labels = _inner(top, "labels")
    if labels == top:
        raise DatasetError(
            f"{top} has no labels folder; layout {name!r} expects {LAYOUTS[name].tree} "
            "(the label CSVs come with the MLRSNet download)."
        )
    folders = _class_folders(images, name)
    tables = [_read_label_table(labels / f"{folder.name}.csv") for folder in folders]
    _require_csvs_have_folders(labels, images, folders)
    names = list(classes) if classes is not None else list(tables[0].labels)
    index = class_index(names, [], where=str(labels))
    for table in tables:  # every CSV's columns must be known labels
        require_known(index, table.labels, where=str(table.path))
    items = [item for f, t in zip(folders, tables, strict=True) for item in _items(f, t, index)]
    return Catalog(top, tuple(names), "multilabel", tuple(items))


def _flat(root: Path, layout: str, classes: Sequence[str] | None) -> Catalog:
    """A one-level layout: ``root/<class>/<image>``."""
    folders = _class_folders(root, layout)
    _require_flat(folders, layout)
    return scan_folders(root, folders, classes)


def _inner(root: Path, name: str) -> Path:
    """``root``'s sub-folder ``name`` (any case) if it has one, else ``root`` itself."""
    return next((p for p in subfolders(root) if p.name.lower() == name.lower()), root)


def _class_folders(root: Path, layout: str) -> list[Path]:
    folders = subfolders(root)
    if not folders:
        raise DatasetError(
            f"{root} has no sub-folders; layout {layout!r} expects {LAYOUTS[layout].tree}."
        )
    return folders


def _require_flat(folders: Sequence[Path], layout: str) -> None:
    """Refuse class folders that hold folders: another layout, or the wrong folder given."""
    for folder in folders:
        nested = subfolders(folder)
        if nested:
            raise DatasetError(
                f"class folder {folder} holds the folder {nested[0].name!r}; layout "
                f"{layout!r} expects {LAYOUTS[layout].tree}: pass the folder that holds the "
                "class folders, or another layout (rsscgeo datasets list)."
            )


def _leaves(category: Path) -> list[Path]:
    """The class folders of one RSI-CB category folder."""
    loose = sorted(p.name for p in category.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    leaves = subfolders(category)
    if loose or not leaves:
        problem = f"holds the image {loose[0]!r}" if loose else "has no class folders"
        raise DatasetError(
            f"category folder {category} {problem}; layout 'rsicb256' expects "
            f"{LAYOUTS['rsicb256'].tree} (one level of class folders: layout 'aid')."
        )
    return leaves


def _mlrsnet_folders(root: Path, layout: str) -> tuple[Path, Path]:
    """MLRSNet's top folder and its ``Images`` folder, given either of them."""
    images = _inner(root, "Images")
    if images != root:
        return root, images
    if root.name.lower() == "images":
        return root.parent, root
    raise DatasetError(
        f"{root} has no Images folder; layout {layout!r} expects {LAYOUTS[layout].tree} "
        "(pass the MLRSNet folder)."
    )


def _require_csvs_have_folders(labels: Path, images: Path, folders: Sequence[Path]) -> None:
    orphans = sorted({p.stem for p in labels.glob("*.csv")} - {f.name for f in folders})
    if orphans:
        raise DatasetError(
            f"{labels / orphans[0]}.csv has no image folder {images / orphans[0]}; "
            "restore the images or remove the CSV."
        )


@dataclass(frozen=True)
class _LabelTable:
    """One MLRSNet label CSV: its label columns and, per image file, its line and labels."""

    path: Path
    labels: tuple[str, ...]
    rows: dict[str, tuple[int, tuple[str, ...]]]


def _read_label_table(path: Path) -> _LabelTable:
    """Parse ``image,<label>,...`` with 0/1 cells; the first column's name is not checked."""
    header, body = _csv_rows(path)
    labels = tuple(header[1:])
    rows: dict[str, tuple[int, tuple[str, ...]]] = {}
    for line, row in body:
        image = row[0]
        if image in rows:
            raise DatasetError(f"{path}:{line}: {image} is listed twice; remove one row.")
        rows[image] = (line, _labels_set(path, line, labels, row[1:]))
    return _LabelTable(path, labels, rows)


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and non-blank rows (with line numbers) of a CSV, cells stripped."""
    if not path.is_file():
        raise DatasetError(
            f"label file {path} is missing; layout 'mlrsnet-multilabel' needs one CSV per "
            "category folder (MLRSNet/labels/<category>.csv from the MLRSNet download)."
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            rows = [[cell.strip() for cell in row] for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path} is not a readable CSV ({err}); restore the file.") from None
    if not rows or len(rows[0]) < 2:
        raise DatasetError(
            f"{path}: the header must be 'image,<label 1>,...,<label 60>'; "
            f"found {rows[0] if rows else 'an empty file'}."
        )
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if any(row)]
    return rows[0], body


def _labels_set(
    path: Path, line: int, labels: tuple[str, ...], cells: list[str]
) -> tuple[str, ...]:
    """The labels whose cell is 1."""
    if len(cells) != len(labels):
        raise DatasetError(
            f"{path}:{line}: {len(cells)} values for {len(labels)} labels; "
            "every row needs a 0 or 1 per header label."
        )
    bad = next((cell for cell in cells if cell not in ("0", "1")), None)
    if bad is not None:
        raise DatasetError(f"{path}:{line}: value {bad!r} is not 0 or 1; fix the row.")
    chosen = tuple(label for label, cell in zip(labels, cells, strict=True) if cell == "1")
    if not chosen:
        raise DatasetError(f"{path}:{line}: the image has no label set to 1; give it one.")
    return chosen


def _items(folder: Path, table: _LabelTable, index: dict[str, int]) -> list[Item]:
    """The images of one category folder with their labels, which must match one to one."""
    images = {p.name: p for p in folder_images(folder)}
    missing = sorted(table.rows.keys() - images.keys())
    if missing:
        line = table.rows[missing[0]][0]
        raise DatasetError(
            f"{table.path}:{line}: image {missing[0]} is not in {folder} ({len(missing)} rows "
            "name missing images); restore the images or remove their rows."
        )
    unlisted = sorted(images.keys() - table.rows.keys())
    if unlisted:
        raise DatasetError(
            f"image {images[unlisted[0]]} has no row in {table.path} ({len(unlisted)} images "
            "without labels); add their rows or remove the images."
        )
    return [
        Item(images[name], tuple(sorted(index[label] for label in labels)))
        for name, (_, labels) in sorted(table.rows.items())
    ]
