"""The paper's six datasets in their published layouts, and their seeded splits."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_one_line_error

from rsscgeo.data.catalog import Catalog
from rsscgeo.data.layouts import DETECTED, LAYOUTS, open_catalog, open_ucmerced, split_filename
from rsscgeo.data.splits import read_split, stratified_split
from rsscgeo.errors import ConfigError, DatasetError
from rsscgeo.training.config import parse_config

PER_CLASS = 5
MLRSNET_LABELS = ["airplane", "bare soil", "beach", "sea"]


@pytest.fixture
def tiny(write_image: Callable[[Path, int], Path]) -> Callable[[Path, list[str]], None]:
    """Factory: 8x8 px images at ``folder/<name>`` for each of ``names``."""

    def make(folder: Path, names: list[str]) -> None:
        for name in names:
            write_image(folder / name, 8)

    return make


def _aid(tmp: Path, tiny: Callable[..., None]) -> Path:
    for cls in ("Beach", "Forest", "Port"):
        tiny(tmp / "AID" / cls, [f"{cls.lower()}_{i}.jpg" for i in range(1, PER_CLASS + 1)])
    return tmp / "AID"


def _ucmerced(tmp: Path, tiny: Callable[..., None]) -> Path:
    for cls in ("agricultural", "beach", "forest"):
        folder = tmp / "UCMerced_LandUse" / "Images" / cls
        tiny(folder, [f"{cls}{i:02d}.tif" for i in range(PER_CLASS)])
    return tmp / "UCMerced_LandUse"


def _resisc45(tmp: Path, tiny: Callable[..., None]) -> Path:
    for cls in ("airplane", "beach", "church"):
        tiny(tmp / "NWPU-RESISC45" / cls, [f"{cls}_{i:03d}.jpg" for i in range(1, PER_CLASS + 1)])
    return tmp / "NWPU-RESISC45"


def _patternnet(tmp: Path, tiny: Callable[..., None]) -> Path:
    for cls in ("airplane", "beach", "bridge"):
        folder = tmp / "PatternNet" / "images" / cls
        tiny(folder, [f"{cls}{i:03d}.jpg" for i in range(1, PER_CLASS + 1)])
    return tmp / "PatternNet"


def _rsicb256(tmp: Path, tiny: Callable[..., None]) -> Path:
    tree = {"construction_land": ["city_building", "container"], "other objects": ["desert"]}
    for category, classes in tree.items():
        for cls in classes:
            folder = tmp / "RSI-CB256" / category / cls
            tiny(folder, [f"{cls}({i}).tif" for i in range(1, PER_CLASS + 1)])
    return tmp / "RSI-CB256"


def _mlrsnet(tmp: Path, tiny: Callable[..., None]) -> Path:
    top = tmp / "MLRSNet"
    for category in ("airplane", "beach"):
        names = [f"{category}_{i:05d}.jpg" for i in range(1, PER_CLASS + 1)]
        tiny(top / "Images" / category, names)
        rows = [[name, *_flags(category, i)] for i, name in enumerate(names)]
        _write_labels(top / "labels" / f"{category}.csv", rows)
    # Tolerated: spaces around cells and a byte-order mark, as spreadsheets write them.
    text = (top / "labels" / "beach.csv").read_text().replace(",", " , ")
    (top / "labels" / "beach.csv").write_text("\ufeff" + text)
    return top


def _flags(category: str, i: int) -> list[str]:
    """The first image of each category carries a second label."""
    extra = {"airplane": "bare soil", "beach": "sea"}[category] if i == 0 else None
    return ["1" if label in (category, extra) else "0" for label in MLRSNET_LABELS]


def _write_labels(path: Path, rows: list[list[str]], header: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or ["image", *MLRSNET_LABELS])
        writer.writerows(rows)


# layout → (builder of the published tree, inner folder also accepted, expected classes)
CASES: dict[str, tuple[Callable[..., Path], str | None, list[str]]] = {
    "aid": (_aid, None, ["Beach", "Forest", "Port"]),
    "ucmerced": (_ucmerced, "Images", ["agricultural", "beach", "forest"]),
    "resisc45": (_resisc45, None, ["airplane", "beach", "church"]),
    "patternnet": (_patternnet, "images", ["airplane", "beach", "bridge"]),
    "rsicb256": (_rsicb256, None, ["city_building", "container", "desert"]),
    "mlrsnet": (_mlrsnet, "Images", ["airplane", "beach"]),
}


@pytest.fixture
def dataset(tmp_path: Path, tiny: Callable[..., None]) -> Callable[[str], Path]:
    """Factory: the tiny dataset of a layout in its published form; returns its top folder."""
    return lambda layout: CASES[layout.removesuffix("-multilabel")][0](tmp_path, tiny)


@pytest.mark.parametrize("layout", list(CASES))
def test_single_label_layouts(layout: str, dataset: Callable[[str], Path]) -> None:
    top = dataset(layout)
    _, inner, classes = CASES[layout]
    catalog = open_catalog(top, layout=layout)
    assert catalog.classes == tuple(classes)
    assert catalog.task == "multiclass"
    assert len(catalog.items) == PER_CLASS * len(classes)
    assert Counter(catalog.label_names(i)[0] for i in catalog.items) == dict.fromkeys(
        classes, PER_CLASS
    )
    for item in catalog.items:  # the label is the folder the image is in
        assert catalog.label_names(item) == [item.path.parent.name]
    if inner is not None:  # the inner folder opens to the same catalogue
        assert open_catalog(top / inner, layout=layout) == catalog
    assert LAYOUTS[layout].opener(top) == catalog


def test_mlrsnet_multilabel(dataset: Callable[[str], Path]) -> None:
    top = dataset("mlrsnet-multilabel")
    catalog = open_catalog(top / "Images", layout="mlrsnet-multilabel")
    assert catalog.classes == tuple(MLRSNET_LABELS)  # the CSV header's order
    assert catalog.task == "multilabel"
    assert catalog.root == top  # shared with single-label mlrsnet, so are split paths
    assert open_catalog(top, layout="mlrsnet").root == top
    labels = {i.path.name: catalog.label_names(i) for i in catalog.items}
    assert len(labels) == 2 * PER_CLASS
    assert labels["airplane_00001.jpg"] == ["airplane", "bare soil"]
    assert labels["beach_00001.jpg"] == ["beach", "sea"]
    assert labels["beach_00002.jpg"] == ["beach"]
    assert Counter(len(ls) for ls in labels.values()) == {1: 8, 2: 2}


def test_mlrsnet_images_nested_one_level_deeper(dataset: Callable[[str], Path]) -> None:
    top = dataset("mlrsnet")
    airplane = top / "Images" / "airplane"
    nested = airplane / "airplane"
    nested.mkdir()
    for image in list(airplane.glob("*.jpg")):
        image.rename(nested / image.name)
    catalog = open_catalog(top, layout="mlrsnet-multilabel")
    assert len(catalog.items) == 2 * PER_CLASS


def test_fixed_class_list(dataset: Callable[[str], Path]) -> None:
    top = dataset("aid")
    catalog = open_catalog(top, ["Port", "Forest", "Beach", "River"], layout="aid")
    assert catalog.classes == ("Port", "Forest", "Beach", "River")
    with pytest.raises(DatasetError, match="unknown label 'Beach'"):
        open_catalog(top, ["Port", "Forest"], layout="aid")


def test_openers_check_their_folder(dataset: Callable[[str], Path], tmp_path: Path) -> None:
    top = dataset("ucmerced")
    assert open_ucmerced(top) == open_catalog(top / "Images", layout="ucmerced")
    with pytest.raises(DatasetError, match="missing does not exist; layout 'ucmerced'"):
        open_ucmerced(tmp_path / "missing")


def test_detected_layouts_without_a_name(
    dataset: Callable[[str], Path], tmp_path: Path, write_image: Callable[[Path, int], Path]
) -> None:
    assert list(DETECTED) == ["manifest", "bigearthnet", "class-folders"]  # the order tried
    assert DETECTED.keys().isdisjoint(LAYOUTS)  # published layouts only by name
    top = dataset("aid")
    assert open_catalog(top) == open_catalog(top, layout="aid")  # class folders
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,labels\nAID/Beach/beach_1.jpg,Beach;Forest\n")
    catalog = open_catalog(manifest)
    assert catalog.task == "multilabel" and catalog.classes == ("Beach", "Forest")
    patch = tmp_path / "ben" / "S2A_patch"
    write_image(patch / "S2A_patch_B02.tif", 8)
    (patch / "S2A_patch_labels_metadata.json").write_text('{"labels": ["Sea and ocean"]}')
    assert open_catalog(tmp_path / "ben").items[0].path == patch  # not a class folder
    with pytest.raises(DatasetError, match="missing does not exist; check the path"):
        open_catalog(tmp_path / "missing")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("layout", [*CASES, "mlrsnet-multilabel"])
def test_split_cli_is_stratified_seeded_and_complete(
    layout: str, dataset: Callable[[str], Path], tmp_path: Path, run_cli
) -> None:
    top = dataset(layout)
    out = tmp_path / "splits"
    args = ["datasets", "split", layout, top, "--train-fraction", "0.8", "--train-fraction", "0.2"]
    result = run_cli(*args, "--seed", "0", "--out-dir", out)
    assert result.exit_code == 0, result.output
    catalog = open_catalog(top, layout=layout)
    everything = {i.path.relative_to(catalog.root).as_posix() for i in catalog.items}
    for fraction in (0.8, 0.2):
        path = out / split_filename(layout, fraction, 0)
        assert path.name == f"{layout}_train{round(fraction * 100)}_seed0.csv"
        rows = _read_csv(path)
        train = [r for r in rows if r["split"] == "train"]
        test = [r for r in rows if r["split"] == "test"]
        assert {r["path"] for r in train}.isdisjoint({r["path"] for r in test})
        assert sorted(r["path"] for r in rows) == sorted(everything)
        if catalog.task == "multiclass":  # each class split by the fraction
            wanted = round(PER_CLASS * fraction)
            assert Counter(r["labels"] for r in train) == dict.fromkeys(catalog.classes, wanted)
        else:  # strata by rarest label: 4 'airplane', 4 'beach', 1 'bare soil', 1 'sea'
            singles = Counter(r["labels"] for r in train if ";" not in r["labels"])
            assert singles == dict.fromkeys(["airplane", "beach"], round(4 * fraction))
            assert len(train) == {0.8: 8, 0.2: 2}[fraction]
    same = run_cli(*args, "--seed", "0", "--out-dir", tmp_path / "again")
    other = run_cli(*args, "--seed", "1", "--out-dir", tmp_path / "other")
    assert same.exit_code == other.exit_code == 0
    name = split_filename(layout, 0.8, 0)
    assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    other_rows = _read_csv(tmp_path / "other" / split_filename(layout, 0.8, 1))
    assert other_rows != _read_csv(out / name)


def test_split_file_reads_back_through_data_config(
    dataset: Callable[[str], Path], tmp_path: Path, run_cli
) -> None:
    top = dataset("ucmerced")
    result = run_cli("datasets", "split", "ucmerced", top, "--out-dir", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert result.output.count("ucmerced_train") == 2  # 0.8 and 0.2 by default
    split_file = tmp_path / "s" / "ucmerced_train20_seed0.csv"
    for path in (top, top / "Images"):  # either folder, as the split was made from the top
        config = parse_config(
            {
                "name": "n",
                "protocol": "finetune",
                "out_dir": str(tmp_path / "run"),
                "data": {"path": str(path), "layout": "ucmerced", "split_file": str(split_file)},
            }
        )
        # As training/run.py opens and splits the data.
        catalog = open_catalog(config.data.path, layout=config.data.layout)
        assert config.data.split_file is not None
        train = read_split(config.data.split_file, catalog, "train")
        test = read_split(config.data.split_file, catalog, "test")
        expected = stratified_split(catalog, 0.2, seed=0)
        assert set(train.items) == set(expected.train.items)
        assert set(test.items) == set(expected.test.items)


def test_config_refuses_unknown_layout(tmp_path: Path) -> None:
    raw = {"name": "n", "protocol": "finetune", "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"data\.layout: unknown dataset layout.*rsicb256"):
        parse_config({**raw, "data": {"path": str(tmp_path), "layout": "rsi-cb"}})
    parsed = parse_config({**raw, "data": {"path": str(tmp_path), "layout": "mlrsnet"}})
    assert parsed.data.layout == "mlrsnet"
    assert parse_config({**raw, "data": {"path": str(tmp_path)}}).data.layout is None


def test_list_command(run_cli) -> None:
    result = run_cli("datasets", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(LAYOUTS) == 7
    counts = {line.split()[0]: line for line in lines}
    assert "30 classes" in counts["aid"] and "35 classes" in counts["rsicb256"]
    assert "60 labels" in counts["mlrsnet-multilabel"]
    assert "UCMerced_LandUse/Images/<class>/<class>NN.tif" in counts["ucmerced"]


def _csv_path(top: Path, name: str = "beach") -> Path:
    return top / "labels" / f"{name}.csv"


def _edit_csv(top: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path = _csv_path(top)
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _mlrsnet_break(kind: str, top: Path) -> None:
    if kind == "no labels folder":
        for path in (top / "labels").iterdir():
            path.unlink()
        (top / "labels").rmdir()
    elif kind == "missing csv":
        _csv_path(top).unlink()
    elif kind == "orphan csv":
        _write_labels(_csv_path(top, "harbor&port"), [])
    elif kind == "row without image":
        (top / "Images" / "beach" / "beach_00003.jpg").unlink()
    elif kind == "image without row":
        _edit_csv(top, lambda lines: [ln for ln in lines if "beach_00004" not in ln])
    elif kind == "unknown label":
        _write_labels(_csv_path(top), [], header=["image", *MLRSNET_LABELS, "snowberg"])
    elif kind == "bad value":
        _edit_csv(top, lambda lines: [*lines[:2], lines[2].replace("1", "2", 1), *lines[3:]])
    elif kind == "no label":
        _edit_csv(top, lambda lines: [*lines, "beach_00009.jpg,0,0,0,0"])
    elif kind == "short row":
        _edit_csv(top, lambda lines: [*lines, "beach_00009.jpg,0,1"])
    elif kind == "twice":
        _edit_csv(top, lambda lines: [*lines, lines[1]])
    elif kind == "bad header":
        _csv_path(top).write_text("image\n")


MLRSNET_ERRORS = {
    "no labels folder": ("has no labels folder", "MLRSNet/labels/<category>.csv"),
    "missing csv": ("beach.csv is missing", "one CSV per"),
    "orphan csv": ("harbor&port.csv has no image folder", "remove the CSV"),
    "row without image": ("beach.csv:4", "beach_00003.jpg is not in", "remove their rows"),
    "image without row": ("beach_00004.jpg has no row in", "add their rows"),
    "unknown label": ("beach.csv", "unknown label 'snowberg'", "airplane"),
    "bad value": ("beach.csv:3", "'2' is not 0 or 1"),
    "no label": ("beach.csv:7", "no label set to 1"),
    "short row": ("beach.csv:7", "2 values for 4 labels"),
    "twice": ("beach.csv:7", "listed twice"),
    "bad header": ("beach.csv", "image,<label 1>,...,<label 60>"),
}


@pytest.mark.parametrize("kind", list(MLRSNET_ERRORS))
def test_mlrsnet_label_errors_are_one_line(
    kind: str, dataset: Callable[[str], Path], tmp_path: Path, run_cli
) -> None:
    top = dataset("mlrsnet-multilabel")
    _mlrsnet_break(kind, top)
    result = run_cli("datasets", "split", "mlrsnet-multilabel", top, "--out-dir", tmp_path / "o")
    assert_one_line_error(result, *MLRSNET_ERRORS[kind])
    assert not (tmp_path / "o" / split_filename("mlrsnet-multilabel", 0.8, 0)).exists()


def test_wrong_layouts_are_one_line_errors(
    dataset: Callable[[str], Path], tmp_path: Path, run_cli
) -> None:
    rsicb, aid = dataset("rsicb256"), dataset("aid")
    out = ("--out-dir", tmp_path / "o")
    cases = [
        (("nope", aid), ("unknown dataset layout 'nope'", "aid, ucmerced")),
        (("aid", tmp_path / "missing"), ("missing does not exist", "AID/<class>/<image>.jpg")),
        (("aid", aid / "Beach" / "beach_1.jpg"), ("is a file, not a folder",)),
        (("aid", rsicb), ("holds the folder 'city_building'", "layout 'aid'", "rsscgeo datasets")),
        (("resisc45", tmp_path), ("holds the folder", "NWPU-RESISC45/<class>/<class>_NNN.jpg")),
        (("rsicb256", aid), ("holds the image 'beach_1.jpg'", "<category>/<class>", "'aid'")),
        (("mlrsnet", aid), ("has no Images folder", "pass the MLRSNet folder")),
        (("patternnet", aid / "Beach"), ("has no sub-folders", "PatternNet/images/<class>")),
    ]
    for (layout, root), needles in cases:
        assert_one_line_error(run_cli("datasets", "split", layout, root, *out), *needles)
    (rsicb / "other objects" / "container").mkdir()
    assert_one_line_error(
        run_cli("datasets", "split", "rsicb256", rsicb, *out), "'container' appears under several"
    )
    empty = tmp_path / "AID2" / "Beach"
    empty.mkdir(parents=True)
    assert_one_line_error(run_cli("datasets", "split", "aid", empty.parent, *out), "has no images")
    assert_one_line_error(
        run_cli("datasets", "split", "aid", aid, "--train-fraction", "1", *out), "0<x<1"
    )


def test_split_refuses_to_overwrite(
    dataset: Callable[[str], Path], tmp_path: Path, run_cli
) -> None:
    top = dataset("aid")
    args = ("datasets", "split", "aid", top, "--train-fraction", "0.2", "--out-dir", tmp_path)
    assert run_cli(*args).exit_code == 0
    assert_one_line_error(run_cli(*args), "aid_train20_seed0.csv exists", "--overwrite")
    assert run_cli(*args, "--overwrite").exit_code == 0


@pytest.mark.real_data
def test_real_aid_opens_and_splits_20_80(aid_dir: Path) -> None:
    catalog: Catalog = open_catalog(aid_dir, layout="aid")
    assert len(catalog.classes) == 30
    assert len(catalog.items) == sum(1 for p in aid_dir.rglob("*") if p.is_file())
    split = stratified_split(catalog, 0.2, seed=0)
    for part in (split.train, split.test):
        assert {i.labels[0] for i in part.items} == set(range(30))
    train = Counter(i.labels[0] for i in split.train.items)
    totals = Counter(i.labels[0] for i in catalog.items)
    assert all(train[c] == round(totals[c] * 0.2) for c in totals)
