"""Calibrated scores and the Uncertain class in classify's outputs, on the bundled scene.

The model is the flat-card one (no families), so that Uncertain is the only back-off.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import FLAT_MODEL, assert_one_line_error

import rsscgeo
from rsscgeo import load_model
from rsscgeo.errors import OptionError, SceneError
from rsscgeo.hierarchy import Level
from rsscgeo.modelfile import Calibration, LoadedModel, ModelCard, save_model
from rsscgeo.scene.legend import UNCERTAIN_GREYS, Legend

SCENE = Path("examples", "scenes", "naip_2020_rgbn.tif")  # in the repository
TEMPERATURE = 2.0


def calibration(uncertain_below: float) -> Calibration:
    return Calibration(
        temperature=TEMPERATURE,
        uncertain_below=uncertain_below,
        fitted_on="a test fixture",
        rule="the largest gap between the middle scores of the bundled scene",
    )


def write_calibrated_model(folder: Path, scene: Path) -> tuple[Path, float]:
    """The flat model with a calibration whose threshold splits the scene's patches.

    Returns:
        The model file and its card's ``uncertain_below``: halfway across the widest
        gap between the scene's calibrated top-1 scores in their middle half, so about
        half the patches are Uncertain and no score is near the threshold.
    """
    bundled = load_model(FLAT_MODEL)
    card = bundled.card.model_copy(update={"calibration": calibration(0.0)})
    data = rsscgeo.patch_dataset([scene], LoadedModel(bundled.model, card)).compute()
    scores = np.sort(data.score.values[data.class_id.values >= 0])
    middle = np.arange(len(scores) // 4, 3 * len(scores) // 4) + 1
    gap = middle[np.argmax(scores[middle] - scores[middle - 1])]
    threshold = float(scores[gap - 1] + scores[gap]) / 2
    card = card.model_copy(update={"calibration": calibration(threshold)})
    return save_model(folder / "calibrated.safetensors", bundled.model, card), threshold


@pytest.fixture(scope="module")
def scene(repo_root: Path) -> Path:
    """The bundled NAIP scene (934 x 723 px, 5 m)."""
    return repo_root / SCENE


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, scene: Path) -> tuple[Path, float]:
    return write_calibrated_model(tmp_path_factory.mktemp("model"), scene)


def qml_categories(qml: str) -> dict[str, tuple[int, ...]]:
    """Category value -> fill colour (r, g, b) of a categorised QML style."""
    root = ET.fromstring(qml.split("\n", 1)[1])
    colors = {}
    for symbol in root.iter("symbol"):
        rgba = symbol.find(".//Option[@name='color']").get("value")
        colors[symbol.get("name")] = tuple(int(v) for v in rgba.split(",")[:3])
    return {c.get("value"): colors[c.get("symbol")] for c in root.iter("category")}


def classify(
    run_cli, scene: Path, model: Path, folder: Path, *args: object
) -> tuple[str, Path, Path]:
    gpkg, tif = folder / "labels.gpkg", folder / "labels.tif"
    result = run_cli("classify", scene, "--model", model, "--out", gpkg, "--out", tif, *args)
    assert result.exit_code == 0, result.output
    return result.output, gpkg, tif


@pytest.mark.slow
def test_uncertain_patches_in_every_output(
    tmp_path: Path, run_cli, calibrated, scene: Path
) -> None:
    model, threshold = calibrated
    card = load_model(model).card
    output, gpkg, tif = classify(run_cli, scene, model, tmp_path)
    frame = gpd.read_file(gpkg, layer="labels")
    p_cols = [f"p_{n}" for n in card.class_names]
    probs = frame[p_cols].to_numpy()
    uncertain = (frame["class_name"] == "Uncertain").to_numpy()
    assert 0 < uncertain.sum() < len(frame)  # the threshold splits the scene
    np.testing.assert_array_equal(frame["class_id"] == -1, uncertain)
    np.testing.assert_array_equal(frame["score"] < threshold, uncertain)
    # Scores and ranks are written for Uncertain patches too.
    names = np.array(card.class_names)
    order = np.argsort(-probs, axis=1)
    for rank in range(3):
        np.testing.assert_array_equal(frame[f"top{rank + 1}"], names[order[:, rank]])
    np.testing.assert_allclose(frame["score"], probs.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    confident = ~uncertain
    np.testing.assert_array_equal(frame["class_id"][confident], order[confident, 0])
    np.testing.assert_array_equal(frame["class_name"][confident], frame["top1"][confident])
    # The report gives the count, the share and where the threshold came from.
    share = 100 * uncertain.sum() / len(frame)
    assert f"Uncertain: {uncertain.sum()} patches ({share:.1f}% of classified, " in output
    assert f"below {threshold:g} from the model card" in output

    with rasterio.open(tif) as src:
        classes, colormap = src.read(1), src.colormap(1)
    expected = np.where(uncertain, 254, frame["class_id"])
    np.testing.assert_array_equal(classes[frame["row"], frame["col"]], expected)
    assert (classes == 255).sum() == classes.size - len(frame)  # skipped patches
    grey = colormap[254][:3]
    assert grey[0] == grey[1] == grey[2] and f"#{grey[0]:02x}{grey[0]:02x}{grey[0]:02x}" in (
        UNCERTAIN_GREYS
    )
    # The grey is none of the classes' colours: the card's Airport is #a6a6a6.
    card_colors = {tuple(int(c.color[i : i + 2], 16) for i in (1, 3, 5)) for c in card.classes}
    assert min(np.linalg.norm(np.subtract(grey, c)) for c in card_colors) > 30
    categories = [c.text or "" for c in ET.parse(f"{tif}.aux.xml").iterfind(".//Category")]
    assert len(categories) == 255 and categories[254] == "Uncertain"
    assert categories[:30] == card.class_names and not any(categories[30:254])

    with sqlite3.connect(gpkg) as db:
        [(embedded,)] = db.execute("SELECT styleQML FROM layer_styles").fetchall()
    for qml in (embedded, gpkg.with_suffix(".qml").read_text()):
        styled = qml_categories(qml)
        assert list(styled) == [*card.class_names, "Uncertain"]
        assert styled["Uncertain"] == grey


@pytest.mark.slow
def test_probabilities_are_calibrated_by_the_card_temperature(
    tmp_path: Path, run_cli, calibrated, scene: Path
) -> None:
    model, _ = calibrated
    gpkg = tmp_path / "plain.gpkg"
    assert run_cli("classify", scene, "--model", FLAT_MODEL, "--out", gpkg).exit_code == 0
    _, calibrated_gpkg, _ = classify(run_cli, scene, model, tmp_path)
    card = load_model(model).card
    p_cols = [f"p_{n}" for n in card.class_names]
    plain = gpd.read_file(gpkg, layer="plain")[p_cols].to_numpy(np.float64)
    scaled = gpd.read_file(calibrated_gpkg, layer="labels")[p_cols].to_numpy(np.float64)
    # softmax(logits / T) = softmax(log(softmax(logits / T0)) * T0 / T), T0 the bundled one's
    bundled = load_model(FLAT_MODEL).card.temperature
    expected = np.exp(np.log(plain) * bundled / TEMPERATURE)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scaled, expected, atol=1e-4)
    assert np.abs(scaled - plain).max() > 0.05


@pytest.mark.slow
def test_uncertain_below_overrides_the_card_and_zero_disables_it(
    tmp_path: Path, run_cli, calibrated, scene: Path
) -> None:
    model, threshold = calibrated
    output, gpkg, tif = classify(run_cli, scene, model, tmp_path, "--uncertain-below", 0)
    frame = gpd.read_file(gpkg, layer="labels")
    assert "Uncertain" not in set(frame["class_name"]) and (frame["class_id"] >= 0).all()
    assert (frame["score"] < threshold).any()  # would have been Uncertain by the card
    with rasterio.open(tif) as src:
        assert 254 not in src.read(1)
    assert len(list(ET.parse(f"{tif}.aux.xml").iterfind(".//Category"))) == 30
    assert "Uncertain" not in qml_categories(gpkg.with_suffix(".qml").read_text())
    assert "Uncertain: off (--uncertain-below 0)" in output

    higher = float(np.quantile(frame["score"], 0.9))
    output, gpkg, _ = classify(
        run_cli, scene, model, tmp_path, "--uncertain-below", higher, "--overwrite"
    )
    frame = gpd.read_file(gpkg, layer="labels")
    np.testing.assert_array_equal(frame["class_name"] == "Uncertain", frame["score"] < higher)
    assert f"below {higher:g} from --uncertain-below" in output


@pytest.mark.slow
def test_patch_dataset_flags_the_uncertain_patches_of_the_geotiff(
    tmp_path: Path, run_cli, calibrated, scene: Path
) -> None:
    model, threshold = calibrated
    _, _, tif = classify(run_cli, scene, model, tmp_path)
    data = rsscgeo.patch_dataset([scene], load_model(model)).compute()
    with rasterio.open(tif) as src:
        classes = src.read(1)
    assert data.attrs["uncertain_below"] == threshold
    np.testing.assert_array_equal(data.uncertain.values, classes == 254)
    assert data.uncertain.any() and not data.uncertain.values[data.class_id.values < 0].any()
    # class_id stays the top-1 class (-1 only for skipped patches).
    top = np.where(data.class_id < 0, 255, data.class_id)
    np.testing.assert_array_equal(np.where(data.uncertain, 254, top), classes)


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_uncertain_below_outside_0_1_is_a_one_line_error(
    tmp_path: Path, run_cli, value: str, scene: Path
) -> None:
    out = tmp_path / "o.gpkg"
    result = run_cli("classify", scene, "--out", out, "--uncertain-below", value)
    assert_one_line_error(result, "--uncertain-below", value)
    assert not out.exists()
    with pytest.raises(OptionError, match=r"within 0\.\.1"):
        rsscgeo.ClassifyOptions(uncertain_below=1.5)


def _card(**update: object) -> ModelCard:
    return load_model(FLAT_MODEL).card.model_copy(update=update)


def test_a_class_named_uncertain_is_refused_while_uncertain_is_on(
    tmp_path: Path, scene: Path
) -> None:
    card = _card(calibration=calibration(0.4))
    classes = [card.classes[0].model_copy(update={"name": "uncertain"}), *card.classes[1:]]
    card = card.model_copy(update={"classes": classes})
    loaded = LoadedModel(load_model(FLAT_MODEL).model, card)
    outputs = rsscgeo.ClassifyOutputs(gpkg=tmp_path / "o.gpkg")
    with pytest.raises(SceneError, match=r"class named 'uncertain'.*uncertain_below=0") as caught:
        rsscgeo.plan_scene([scene], loaded, rsscgeo.ClassifyOptions(), outputs)
    assert "--uncertain-below 0" in caught.value.cli_message()
    assert list(tmp_path.iterdir()) == []
    assert [e.name for e in Legend.for_card(card, 0).entries] == card.class_names


def test_multilabel_models_have_no_uncertain_class() -> None:
    card = _card(task="multilabel", thresholds=[0.5] * 30, calibration=calibration(0.4))
    legend = Legend.for_card(card)
    assert not legend.enabled and len(legend.entries) == 30
    weak = np.full((2, 30), 0.01, np.float32)
    assert (legend.label(weak).level == Level.LEAF).all()
    with pytest.raises(SceneError, match="multi-label models have no Uncertain class"):
        Legend.for_card(card, 0.3)
