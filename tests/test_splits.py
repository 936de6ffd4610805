from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rsscgeo.data.catalog import Catalog, Item
from rsscgeo.data.splits import read_split, stratified_split, write_split
from rsscgeo.errors import DatasetError


def _catalog(tmp_path: Path, sizes: dict[str, int]) -> Catalog:
    items = []
    for index, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            path = tmp_path / name / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.touch()
            items.append(Item(path, (index,)))
    return Catalog(tmp_path, tuple(sizes), "multiclass", tuple(items))


@pytest.mark.parametrize("fraction", [0.8, 0.2])
def test_split_is_stratified_seeded_and_complete(tmp_path: Path, fraction: float) -> None:
    catalog = _catalog(tmp_path, {"a": 50, "b": 20, "c": 7})
    split = stratified_split(catalog, fraction, seed=3)
    train = Counter(i.labels[0] for i in split.train.items)
    assert train == {0: round(50 * fraction), 1: round(20 * fraction), 2: round(7 * fraction)}
    assert {i.path for i in split.train.items}.isdisjoint({i.path for i in split.test.items})
    assert len(split.train.items) + len(split.test.items) == 77
    again = stratified_split(catalog, fraction, seed=3)
    assert again.train.items == split.train.items
    assert stratified_split(catalog, fraction, seed=4).train.items != split.train.items


def test_split_csv_round_trip(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, {"a": 10, "b": 10})
    split = stratified_split(catalog, 0.8, seed=0)
    csv_path = tmp_path / "split.csv"
    write_split(csv_path, split)
    assert read_split(csv_path, catalog, "test").items == split.test.items
    with pytest.raises(DatasetError, match="not one of"):
        read_split(csv_path, catalog, "validation")


def test_bad_fraction(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="between 0 and 1"):
        stratified_split(_catalog(tmp_path, {"a": 3}), 1.0, seed=0)
