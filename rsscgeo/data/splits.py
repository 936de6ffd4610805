"""Seeded stratified train/test splits (and a validation part), saved as CSV beside a run."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rsscgeo.data.catalog import LABEL_SEPARATOR, Catalog, Item
from rsscgeo.errors import DatasetError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """A catalogue divided into train and test items, and optionally validation items.

    Validation items are neither trained on nor tested: calibration is fitted on them.
    """

    train: Catalog
    test: Catalog
    val: Catalog | None = None


def hold_out_validation(split: Split, fraction: float, seed: int) -> Split:
    """Move a seeded, stratified ``fraction`` of the training items into ``val``.

    The test items stay as they are, so runs with and without validation are scored on
    the same test split.
    """
    inner = stratified_split(split.train, 1.0 - fraction, seed + 1)
    return Split(train=inner.train, test=split.test, val=inner.test)


def stratified_split(catalog: Catalog, train_fraction: float, seed: int) -> Split:
    """Split each class (multi-label: each item's rarest label) by ``train_fraction``.

    Every stratum with at least two items contributes to both sides.

    Raises:
        DatasetError: If the fraction is not strictly between 0 and 1.
    """
    if not 0.0 < train_fraction < 1.0:
        raise DatasetError(f"train fraction {train_fraction} must be between 0 and 1 (e.g. 0.8).")
    counts: dict[int, int] = defaultdict(int)
    for item in catalog.items:
        for label in item.labels:
            counts[label] += 1
    strata: dict[int, list[Item]] = defaultdict(list)
    for item in catalog.items:
        strata[min(item.labels, key=lambda lab: (counts[lab], lab))].append(item)
    rng = random.Random(seed)
    train: set[Path] = set()
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda i: str(i.path))
        rng.shuffle(members)
        n_train = round(len(members) * train_fraction)
        if len(members) >= 2:
            n_train = min(max(n_train, 1), len(members) - 1)
        train.update(i.path for i in members[:n_train])
    test = {i.path for i in catalog.items} - train
    return Split(catalog.subset(train), catalog.subset(test))


def write_split(path: Path, split: Split) -> None:
    """Write ``path,labels,split`` rows, paths relative to the catalogue root."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        for name in SPLIT_NAMES:
            part: Catalog | None = getattr(split, name)
            if part is None:
                continue
            for item in part.items:
                rel = (
                    item.path.relative_to(part.root)
                    if item.path.is_relative_to(part.root)
                    else item.path
                )
                writer.writerow(
                    [rel.as_posix(), LABEL_SEPARATOR.join(part.label_names(item)), name]
                )


def split_names(path: Path) -> set[str]:
    """The split names (``train``, ``val``, ``test``) that rows of a split CSV use.

    Raises:
        DatasetError: If the file is unreadable.
    """
    try:
        with path.open(newline="") as f:
            return {r.get("split") or "" for r in csv.DictReader(f)} - {""}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"split file {path} is not readable ({err}).") from None


def read_split(path: Path, catalog: Catalog, which: str) -> Catalog:
    """The items of ``catalog`` listed under split ``which`` in a split CSV.

    Raises:
        DatasetError: If the file is unreadable, or names images not in the catalogue.
    """
    if which not in SPLIT_NAMES:
        raise DatasetError(f"split {which!r} is not one of {', '.join(SPLIT_NAMES)}.")
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("split") == which]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"split file {path} is not readable ({err}).") from None
    if not rows:
        raise DatasetError(f"split file {path} has no '{which}' rows; pass a split CSV from a run.")
    wanted = {(catalog.root / r["path"]).resolve() for r in rows}
    known = {i.path.resolve(): i.path for i in catalog.items}
    missing = wanted - known.keys()
    if missing:
        raise DatasetError(
            f"split file {path} lists {len(missing)} images not in {catalog.root} "
            f"(e.g. {sorted(missing)[0]}); pass the dataset the split was made from."
        )
    return catalog.subset({known[p] for p in wanted})


def split_catalog(
    catalog: Catalog,
    *,
    split_file: Path | None,
    train_fraction: float,
    val_fraction: float,
    seed: int,
) -> Split:
    """The split a run trains on.

    ``split_file``'s rows, or a seeded stratified split; then ``val_fraction`` of the
    training rows is held out when the split has no ``val`` rows.

    Raises:
        DatasetError: If the split file is unreadable or names images not in ``catalog``.
    """
    if split_file is None:
        split = stratified_split(catalog, train_fraction, seed)
    else:
        split = Split(
            read_split(split_file, catalog, "train"),
            read_split(split_file, catalog, "test"),
            val=read_split(split_file, catalog, "val")
            if "val" in split_names(split_file)
            else None,
        )
    if split.val is None and val_fraction > 0:
        split = hold_out_validation(split, val_fraction, seed)
    return split
