"""``classify --suggest``: the patches worth labelling, as a styled layer ``to_label``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error

from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.suggest import CandidatePool, uncertain_per_cluster

DEMO = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"


def test_picks_are_the_most_uncertain_of_each_cluster_and_never_repeat() -> None:
    # Two tight groups and an outlier; the uncertainty decides within a group.
    features = torch.tensor([[0.0, 0], [0.01, 0], [0.02, 0], [1, 0], [1.01, 0], [0, 1]])
    uncertainty = np.array([0.5, 0.9, 0.1, 0.2, 0.3, 0.05])
    picks = uncertain_per_cluster(features, uncertainty, 3, seed=0)
    assert sorted(picks) == [1, 4, 5]
    for seed in range(5):  # any k-means++ start finds the same three groups
        assert sorted(uncertain_per_cluster(features, uncertainty, 3, seed)) == [1, 4, 5]
    everything = uncertain_per_cluster(features, uncertainty, 100, seed=0)  # more than there are
    assert sorted(everything) == list(range(6))
    assert uncertain_per_cluster(features[:0], uncertainty[:0], 3, seed=0) == []
    # Identical rows make one cluster: the most uncertain others fill in, each once.
    same = torch.zeros((4, 2))
    filled = uncertain_per_cluster(same, np.array([0.1, 0.4, 0.3, 0.2]), 3, seed=0)
    assert filled == [1, 2, 3]


def _chunk(index: int, probabilities: np.ndarray) -> ChunkResult:
    rows, cols = probabilities.shape[:2]
    valid = np.ones((rows, cols), np.float32)
    return ChunkResult(Chunk(index, 0, index * cols, rows, cols), probabilities, valid)


def test_pool_keeps_the_most_uncertain_and_ties_follow_the_seed() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 4, 5)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    probs[0, 0] = np.nan  # a skipped patch never enters
    pool = CandidatePool(5)
    pool.add(_chunk(0, probs))
    top2 = -np.sort(-probs.reshape(-1, 5), axis=1)[:, :2]
    uncertainty = 1 - (top2[:, 0] - top2[:, 1])
    expected = np.argsort(-np.nan_to_num(uncertainty, nan=-1))[:5]
    assert sorted(zip(pool.rows, pool.cols, strict=True)) == sorted(
        (int(i) // 4, int(i) % 4) for i in expected
    )
    # Equal uncertainty everywhere: the seed decides, the same way every time.
    flat = np.full((4, 4, 5), 0.2, np.float32)
    picks = {}
    for seed in (0, 0, 1):
        tied = CandidatePool(3, seed)
        tied.add(_chunk(0, flat))
        picks.setdefault(seed, []).append(list(zip(tied.rows, tied.cols, strict=True)))
    assert picks[0][0] == picks[0][1]
    assert picks[1][0] != picks[0][0]


@pytest.mark.real_data
def test_suggest_writes_a_styled_to_label_layer(tmp_path: Path, run_cli) -> None:
    gpkg = tmp_path / "map.gpkg"
    result = run_cli("classify", DEMO, "--out", gpkg, "--suggest", "7")
    assert result.exit_code == 0, result.output
    assert "suggested 7 patches to label" in result.output
    picks = gpd.read_file(gpkg, layer="to_label")
    patches = gpd.read_file(gpkg, layer="map")
    assert len(picks) == 7
    assert list(picks.columns[:6]) == ["label", "new_class", "predicted", "score", "row", "col"]
    assert picks["label"].isna().all() and picks["new_class"].isna().all()
    assert len(set(zip(picks["row"], picks["col"], strict=True))) == 7  # no patch twice
    assert picks.crs == patches.crs
    # Each pick is a patch of the map, with the map's most probable class as the guess.
    merged = picks.merge(patches, on=["row", "col"], suffixes=("", "_map"))
    assert len(merged) == 7
    assert (merged["predicted"] == merged["top1"]).all()
    assert merged.geometry.geom_equals(merged["geometry_map"]).all()
    # The picks are among the most uncertain patches of the map.
    probs = patches.filter(like="p_").to_numpy()
    top2 = -np.sort(-probs, axis=1)[:, :2]
    margin = top2[:, 0] - top2[:, 1]
    picked = patches.set_index(["row", "col"]).index.isin(
        list(zip(picks["row"], picks["col"], strict=True))
    )
    # Each is the most uncertain of its cluster (7 clusters over about 190 patches).
    assert np.median(margin[picked]) < np.quantile(margin, 0.25)
    with sqlite3.connect(gpkg) as db:
        styles = dict(db.execute("SELECT f_table_name, styleQML FROM layer_styles"))
    assert 'editWidget type="ValueMap"' in styles["to_label"]
    assert (tmp_path / "map.to_label.qml").read_text() == styles["to_label"]


@pytest.mark.real_data
def test_suggest_more_than_there_are_patches(tmp_path: Path, run_cli) -> None:
    gpkg = tmp_path / "map.gpkg"
    result = run_cli("classify", DEMO, "--out", gpkg, "--suggest", "100000")
    assert result.exit_code == 0, result.output
    picks = gpd.read_file(gpkg, layer="to_label")
    patches = gpd.read_file(gpkg, layer="map")
    assert len(picks) == len(patches)


def test_suggest_without_a_geopackage_is_one_line(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "map.tif"
    result = run_cli("classify", DEMO, "--out", out, "--suggest", "5")
    assert_one_line_error(result, "suggest", ".gpkg")
    assert not out.exists()
