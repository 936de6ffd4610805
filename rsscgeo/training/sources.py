"""Several labelled datasets as one training set over a taxonomy's classes.

Each source's class folders are mapped onto the taxonomy (one class, a set of classes
or a family; see ``SourceConfig``), split (its own split file, or seeded and
stratified) with a validation hold-out, and decoded once into the uint8 tile cache.
A row's target is the set of classes it may be: one class for most rows, several for
a coarser source label (NWPU's residential is one of AID's three).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from rsscgeo.data.cache import cached_tiles
from rsscgeo.data.catalog import Catalog
from rsscgeo.data.classmap import check_folders, did_you_mean, load_class_map
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.splits import Split, split_catalog, write_split
from rsscgeo.errors import ConfigError, DatasetError
from rsscgeo.exemplars import Exemplars, choose
from rsscgeo.taxonomy import Taxonomy
from rsscgeo.training.config import SourceConfig


@dataclass(frozen=True)
class SourceData:
    """One source, mapped and split.

    Attributes:
        config: How it was configured.
        split: Its train/val/test catalogues (folder labels).
        allowed: Per folder label, the taxonomy classes an image of it may be.
        left_out: Folders without a class in the map.
    """

    config: SourceConfig
    split: Split
    allowed: tuple[tuple[int, ...], ...]
    left_out: tuple[str, ...]

    def part(self, name: str) -> Catalog | None:
        """The train, val or test catalogue."""
        catalog: Catalog | None = getattr(self.split, name)
        return catalog


@dataclass(frozen=True)
class Rows(Dataset[dict[str, torch.Tensor]]):
    """Decoded tiles with their target sets and sources (one part of every source).

    Attributes:
        tiles: N x 3 x S x S uint8.
        targets: N x classes, True for the classes a row may be.
        source: N source indexes.
    """

    tiles: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.bool_]
    source: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, indexes: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once (DataLoader's batched fetch): one gather, no per-item work."""
        order = np.asarray(indexes)
        return {
            "tiles": torch.from_numpy(np.ascontiguousarray(self.tiles[order])),
            "targets": torch.from_numpy(self.targets[order]),
            "source": torch.from_numpy(self.source[order]),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One row (with a batch dimension of 1)."""
        return self.__getitems__([index])


def batch_of(rows: Any) -> Any:
    """DataLoader's ``collate_fn`` for :meth:`Rows.__getitems__`: already a batch."""
    return rows


def open_source(config: SourceConfig, taxonomy: Taxonomy, seed: int) -> SourceData:
    """Open, map and split one source.

    Raises:
        ConfigError: If its class map names a class or family the taxonomy lacks.
        DatasetError: If its folders do not fit the map or the taxonomy.
    """
    catalog = open_catalog(config.path, layout=config.layout)
    if catalog.task != "multiclass":
        raise DatasetError(
            f"source {config.name}: {config.path} is multi-label; sources are single-label."
        )
    names: dict[str, tuple[str, ...]]
    if config.class_map is None:
        names = {folder: (folder,) for folder in catalog.classes}
        where = f"source {config.name} (no class_map: folders are taxonomy classes)"
    else:
        class_map = load_class_map(config.class_map)
        check_folders(class_map, catalog)
        names = dict(class_map.accepted)
        where = str(config.class_map)
    allowed: list[tuple[int, ...]] = []
    for folder in catalog.classes:
        chosen: set[int] = set()
        for name in names.get(folder, ()):
            try:
                chosen.update(taxonomy.resolve(name))
            except KeyError:
                known = [*taxonomy.leaves, *taxonomy.parents]
                raise ConfigError(
                    f"{where}: {folder}: {name!r} is neither a class nor a family of "
                    f"{taxonomy.source}{did_you_mean(name, known)}; use its names exactly."
                ) from None
        allowed.append(tuple(sorted(chosen)))
    kept = {i for i, classes in enumerate(allowed) if classes}
    left_out = tuple(folder for i, folder in enumerate(catalog.classes) if i not in kept)
    mapped = Catalog(
        catalog.root,
        catalog.classes,
        "multiclass",
        tuple(item for item in catalog.items if item.labels[0] in kept),
    )
    split = split_catalog(
        mapped,
        split_file=config.split_file,
        train_fraction=config.train_fraction,
        val_fraction=config.val_fraction,
        seed=seed,
    )
    return SourceData(config, split, tuple(allowed), left_out)


def rows(sources: Sequence[SourceData], part: str, classes: int, side: int) -> Rows:
    """One part (train, val or test) of every source as decoded rows, in source order."""
    tiles, targets, origin = [], [], []
    for index, source in enumerate(sources):
        catalog = source.part(part)
        if catalog is None or not catalog.items:
            continue
        tiles.append(np.asarray(cached_tiles([item.path for item in catalog.items], side)))
        mask = np.zeros((len(catalog.items), classes), dtype=bool)
        for row, item in enumerate(catalog.items):
            mask[row, list(source.allowed[item.labels[0]])] = True
        targets.append(mask)
        origin.append(np.full(len(catalog.items), index, dtype=np.int64))
    if not tiles:
        raise DatasetError(f"no source has {part} images; check the sources' splits.")
    return Rows(np.concatenate(tiles), np.concatenate(targets), np.concatenate(origin))


def draw_exemplars(train: Rows, per_class: int, seed: int) -> Exemplars | None:
    """Up to ``per_class`` training rows of each class, for the model file (none at 0)."""
    if per_class <= 0:
        return None
    chosen, classes = choose(train.targets, per_class, seed)
    tiles = np.ascontiguousarray(train.tiles[np.sort(chosen)])
    order = np.argsort(chosen)  # read the memory-mapped cache in file order, once
    return Exemplars(torch.from_numpy(tiles), torch.from_numpy(classes[order]))


def balanced_weights(train: Rows, weights: Sequence[float]) -> torch.Tensor:
    """Per-row sampling weights: each source's share of draws is its weight's share."""
    counts = np.bincount(train.source, minlength=len(weights)).astype(float)
    per_row = np.asarray(weights, dtype=float)[train.source] / counts[train.source]
    return torch.from_numpy(per_row / per_row.sum())


def write_splits(folder: Path, sources: Sequence[SourceData]) -> list[Path]:
    """Each source's split as ``<folder>/<source>.csv`` (rerunnable with split_file)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        path = folder / f"{source.config.name}.csv"
        write_split(path, source.split)
        written.append(path)
    return written
