"""Class hierarchies: the card's families, back-off to a family, and what the outputs say.

A hierarchical card is made from the flat one of the previous bundled model (its 30 AID
classes take their families from ``configs/taxonomy/land_use_33.yaml``), so the real
network runs on the real demo scene with families whose members are known.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from helpers import FLAT_MODEL

import rsscgeo
from rsscgeo import load_model
from rsscgeo.errors import ConfigError, ModelFileError
from rsscgeo.hierarchy import CLASS_NODATA, UNCERTAIN_VALUE, Level
from rsscgeo.modelfile import (
    Calibration,
    LoadedModel,
    ModelCard,
    ParentInfo,
    read_card,
    save_model,
)
from rsscgeo.scene.legend import Legend
from rsscgeo.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = ROOT / "configs" / "taxonomy" / "land_use_33.yaml"
SCENE = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"


def hierarchical(card: ModelCard, uncertain_below: float) -> ModelCard:
    """``card`` with families from the land_use_33 taxonomy and a calibration."""
    taxonomy = load_taxonomy(TAXONOMY)
    parent = dict(zip(taxonomy.leaves, taxonomy.parent_of, strict=True))
    used = {parent[c.name] for c in card.classes}
    return card.model_copy(
        update={
            "classes": [c.model_copy(update={"parent": parent[c.name]}) for c in card.classes],
            "parents": [p for p in taxonomy.parent_infos() if p.name in used],
            "calibration": Calibration(
                temperature=card.temperature,
                uncertain_below=uncertain_below,
                fitted_on="test",
                rule="test",
            ),
        }
    )


def toy_card(uncertain_below: float = 0.5, parents: bool = True) -> ModelCard:
    """Four classes in two families: A = {a1, a2}, B = {b1, b2}."""
    raw = json.loads(read_card(FLAT_MODEL).model_dump_json())
    raw["classes"] = [
        {"name": n, "color": "#102030", "parent": p if parents else None}
        for n, p in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B"))
    ]
    raw["parents"] = (
        [{"name": "A", "color": "#ff0000"}, {"name": "B", "color": "#00ff00"}] if parents else []
    )
    raw["calibration"] = {
        "temperature": 1.0,
        "uncertain_below": uncertain_below,
        "fitted_on": "t",
        "rule": "t",
    }
    return ModelCard.model_validate(raw)


def test_backoff_names_the_family_only_when_the_class_is_doubtful() -> None:
    legend = Legend.for_card(toy_card(0.5))
    probs = np.array(
        [
            [0.60, 0.20, 0.10, 0.10],  # a1 is sure
            [0.30, 0.30, 0.20, 0.20],  # A = 0.60: the family
            [0.40, 0.05, 0.30, 0.25],  # a1 0.40, A 0.45, B 0.55: family B, not a1's
            [0.30, 0.15, 0.30, 0.25],  # A 0.45, B 0.55: B
            [0.26, 0.23, 0.27, 0.24],  # A 0.49, B 0.51: B
            [np.nan] * 4,  # skipped
        ],
        np.float32,
    )
    labels = legend.label(probs)
    a, b = 4, 5  # the families' map values follow the 4 classes
    assert labels.values.tolist() == [0, a, b, b, b, CLASS_NODATA]
    assert labels.level[:5].tolist() == [Level.LEAF] + [Level.PARENT] * 4
    assert labels.leaf.tolist() == [0, 0, 0, 0, 2, -1]
    assert labels.parent.tolist() == [0, 0, 1, 1, 1, -1]
    np.testing.assert_allclose(labels.score[:5], [0.60, 0.60, 0.55, 0.55, 0.51], atol=1e-6)
    # Neither the class nor any family reaches 0.7: Uncertain; --no-backoff: the flat rule.
    strict = Legend.for_card(toy_card(0.7)).label(probs[[1, 4]])
    assert strict.values.tolist() == [UNCERTAIN_VALUE, UNCERTAIN_VALUE]
    flat = Legend.for_card(toy_card(0.5), backoff=False)
    assert flat.label(probs[:2]).values.tolist() == [0, UNCERTAIN_VALUE]
    assert [e.name for e in flat.entries] == ["a1", "a2", "b1", "b2", "Uncertain"]
    assert [e.name for e in legend.entries] == ["a1", "a2", "b1", "b2", "A", "B", "Uncertain"]


def test_cards_refuse_inconsistent_families(tmp_path: Path) -> None:
    card = toy_card()
    for change, message in [
        ({"parents": []}, "classes name a parent but the card lists no parents"),
        ({"parents": [ParentInfo(name="A", color="#000000")]}, "parent 'B' is not in parents"),
        (
            {"parents": [*card.parents, ParentInfo(name="C", color="#000000")]},
            "parent 'C' has no class",
        ),
    ]:
        raw = json.loads(card.model_copy(update=change).model_dump_json())
        with pytest.raises(ValueError, match=message):
            ModelCard.model_validate(raw)
    # A file with such a card is a one-line ModelFileError.
    raw = json.loads(card.model_dump_json())
    raw["parents"] = raw["parents"][:1]
    path = save_model(tmp_path / "m.safetensors", torch.nn.Linear(1, 1), card)
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), str(path), metadata={"rsscgeo.card": json.dumps(raw)})
    with pytest.raises(ModelFileError, match="parent 'B' is not in parents"):
        read_card(path)


def test_an_old_flat_card_loads_and_inspects_flat(run_cli) -> None:
    card = read_card(FLAT_MODEL)
    assert card.parents == [] and all(c.parent is None for c in card.classes)
    assert not Legend.for_card(card).hierarchical
    result = run_cli("models", "inspect", FLAT_MODEL)
    shown = json.loads(result.output)
    assert shown["parents"] == [] and shown["classes"][0]["parent"] is None


def test_the_taxonomy_groups_families_a_map_reader_names() -> None:
    taxonomy = load_taxonomy(TAXONOMY)
    assert len(taxonomy.parents) >= 5
    sizes = [len(taxonomy.members(p)) for p in taxonomy.parents]
    assert max(sizes) <= 0.4 * len(taxonomy.leaves)
    aid = sorted(p.name for p in (ROOT.parent / "shared" / "data" / "aid150").iterdir())
    assert set(aid) <= set(taxonomy.leaves)
    assert {"Lake", "Wetland", "Island"} <= set(taxonomy.leaves)
    classes = taxonomy.classes()
    water = [c for c in classes if c.parent == "Water"]
    # A class's colour is a shade of its family's hue.
    import colorsys

    import matplotlib.colors as mcolors

    hue = colorsys.rgb_to_hls(
        *mcolors.to_rgb(dict(zip(taxonomy.parents, taxonomy.parent_colors, strict=True))["Water"])
    )[0]
    for c in water:
        assert colorsys.rgb_to_hls(*mcolors.to_rgb(c.color))[0] == pytest.approx(hue, abs=0.02)
    assert len({c.color for c in classes}) == len(classes)


def test_a_bad_taxonomy_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("parents: {Water: '#0000ff'}\nleaves: {Pond: Watr}\n")
    with pytest.raises(ConfigError, match=r"leaves\.Pond: 'Watr' is not one of the parents"):
        load_taxonomy(bad)


@pytest.fixture(scope="module")
def hierarchical_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel]:
    """The flat network with families and its own calibration, on the demo scene."""
    folder = tmp_path_factory.mktemp("hierarchy")
    bundled = load_model(FLAT_MODEL)
    loaded = LoadedModel(bundled.model, hierarchical(bundled.card, bundled.card.uncertain_below))
    outputs = rsscgeo.ClassifyOutputs(folder / "map.gpkg", folder / "map.tif")
    options = rsscgeo.ClassifyOptions(gsd=5.0, backend="torch")
    with rsscgeo.open_engine(workers=1) as engine:
        rsscgeo.classify_scene([SCENE], loaded, options, outputs, engine, progress=False)
    return folder, loaded


def test_outputs_say_what_the_map_says_at_each_level(hierarchical_run) -> None:
    folder, loaded = hierarchical_run
    card = loaded.card
    frame = gpd.read_file(folder / "map.gpkg", layer="map")
    assert {"leaf", "parent"} <= set(frame["level"])  # the scene has both
    families = set(card.parent_names)
    by_family = frame[frame["level"] == "parent"]
    assert set(by_family["class_name"]) <= families
    assert (by_family["class_name"] == by_family["parent_name"]).all()
    leaves = frame[frame["level"] == "leaf"]
    assert (leaves["class_name"] == leaves["leaf_name"]).all()
    parent_of = {c.name: c.parent for c in card.classes}
    assert (leaves["parent_name"] == leaves["leaf_name"].map(parent_of)).all()
    # The family's score is the sum of its classes' probabilities, at least the threshold.
    for _, row in by_family.head(20).iterrows():
        total = sum(row[f"p_{c.name}"] for c in card.classes if c.parent == row["class_name"])
        threshold = card.uncertain_below
        assert row["score"] == pytest.approx(total, abs=1e-4) and total >= threshold - 1e-6
    with rasterio.open(folder / "map.tif") as src:
        values = src.read(1)
        colors = src.colormap(1)
    first = card.num_classes
    assert np.isin(values[values < 254], np.arange(first + len(card.parents))).all()
    for j, parent in enumerate(card.parents):
        red, green, blue = colors[first + j][:3]
        assert f"#{red:02x}{green:02x}{blue:02x}" == parent.color
    names = (folder / "map.tif.aux.xml").read_text()
    assert all(f"<Category>{p}</Category>" in names for p in card.parent_names)
    qml = (folder / "map.qml").read_text()
    assert all(f'value="{p}"' in qml for p in card.parent_names)


def test_family_areas_are_the_sums_of_their_classes(hierarchical_run) -> None:
    folder, loaded = hierarchical_run
    with (folder / "map.areas.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    totals = {r["class"]: r for r in rows if r["level"] == "family"}
    assert set(totals) == set(loaded.card.parent_names)
    for name, total in totals.items():
        members = [r for r in rows if r["family"] == name and r["level"] in ("leaf", "parent")]
        assert int(total["patches"]) == sum(int(r["patches"]) for r in members)
        assert float(total["area_m2"]) == pytest.approx(
            sum(float(r["area_m2"]) for r in members), abs=0.5
        )
    map_rows = [r for r in rows if r["level"] != "family"]
    assert sum(float(r["percent"]) for r in map_rows) == pytest.approx(100, abs=0.01)


def test_patch_dataset_says_uncertain_where_the_map_does(hierarchical_run) -> None:
    folder, loaded = hierarchical_run
    data = rsscgeo.patch_dataset([SCENE], loaded, rsscgeo.ClassifyOptions(gsd=5.0, backend="torch"))
    data = data.compute()
    frame = gpd.read_file(folder / "map.gpkg", layer="map")
    uncertain = data.uncertain.values[frame["row"], frame["col"]]
    np.testing.assert_array_equal(uncertain, (frame["level"] == "uncertain").to_numpy())
    assert (frame["level"] == "parent").any()  # families kept some patches from Uncertain


def test_backoff_coverage_scores_each_level_against_the_accepted_classes() -> None:
    from rsscgeo.training.selective import backoff_coverage

    card = toy_card(0.5)
    probs = torch.tensor(
        [
            [0.60, 0.20, 0.10, 0.10],  # a1 by class: right
            [0.10, 0.60, 0.20, 0.10],  # a2 by class: wrong (a1 accepted)
            [0.30, 0.30, 0.20, 0.20],  # A by family: right (a1 is in A)
            [0.30, 0.15, 0.30, 0.25],  # B by family: wrong
            [0.35, 0.20, 0.25, 0.20],  # A 0.55 by family: right
        ]
    )
    allowed = torch.zeros(5, 4, dtype=torch.bool)
    allowed[:, 0] = True  # every image is a1
    scored = backoff_coverage(probs, allowed, card, 0.5)
    assert (scored.by_class, scored.by_family, scored.images) == (2, 3, 5)
    assert scored.class_accuracy == pytest.approx(0.5)
    assert scored.family_accuracy == pytest.approx(2 / 3)
    assert scored.coverage == 1.0 and scored.accuracy == pytest.approx(3 / 5)
    assert "by family" in scored.describe()
