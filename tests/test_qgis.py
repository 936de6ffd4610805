"""Real QGIS opens classify's outputs: valid layers, right CRS, the card's styled classes."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import geopandas as gpd
import pytest
from helpers import FLAT_MODEL
from PIL import Image

from rsscgeo import load_model
from rsscgeo.modelfile import BUNDLED_MODEL

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = Path(__file__).with_name("qgis_probe.py")


def _has_pyqgis() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True)
    return check.returncode == 0


@pytest.fixture(scope="module")
def pyqgis() -> None:
    if not _has_pyqgis():
        if os.environ.get("CI"):
            pytest.fail("PyQGIS is missing in CI; scripts/setup.sh installs python3-qgis as root")
        pytest.skip("PyQGIS not installed (apt-get install -y python3-qgis qgis-providers)")


def probe(tmp_path: Path, gpkg: Path, tif: Path, png: Path) -> tuple[dict, str]:
    """What real QGIS reports on opening ``gpkg`` and ``tif`` (see qgis_probe.py)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    probe = subprocess.run(
        [SYSTEM_PYTHON, str(PROBE), str(gpkg), str(tif), str(png)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout.strip().splitlines()[-1]), probe.stderr


@pytest.mark.parametrize(
    "scene_name",
    [("opengeos", "naip_m_4709963_se_14_1_20200831.tif"), ("rasterio", "cogeo.tif")],
    ids=lambda parts: Path(parts[-1]).stem,
)
def test_outputs_open_styled_in_qgis(
    tmp_path: Path, run_cli, pyqgis: None, scenes_dir: Path, scene_name: tuple[str, str]
) -> None:
    scene = scenes_dir.joinpath(*scene_name)
    gpkg, tif, png = tmp_path / "labels.gpkg", tmp_path / "labels.tif", tmp_path / "map.png"
    assert run_cli("classify", scene, "--out", gpkg, "--out", tif).exit_code == 0
    # The style embedded in the GeoPackage alone styles it (a file shared without its .qml).
    gpkg.with_suffix(".qml").unlink()
    report, stderr = probe(tmp_path, gpkg, tif, png)
    # GDAL 3.6 under QGIS 3.22 reads GeoPackage 1.2 without the 1.4 "partially supported" warning.
    assert "partially supported" not in stderr, stderr
    import rasterio

    with rasterio.open(scene) as src:
        epsg = src.crs.to_epsg()
    assert report["vector_valid"] and report["raster_valid"]
    assert report["vector_crs"] == report["raster_crs"] == f"EPSG:{epsg}"
    assert report["renderer"] == "categorizedSymbol"
    card = load_model(BUNDLED_MODEL).card
    from rsscgeo.scene.legend import Legend

    legend = Legend.for_card(card)
    assert report["categories"] == [entry.name for entry in legend.entries]
    assert report["raster_renderer"] == "paletted"
    assert report["raster_labels"][: card.num_classes] == card.class_names
    assert report["features"] > 0
    assert report["png_saved"]
    # The rendered map shows each class present in the layer in its card colour.
    present = set(gpd.read_file(gpkg, layer="labels")["class_name"])
    colours = {e.name: e.rgb for e in legend.entries}
    rendered = {rgb for _, rgb in Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert {colours[name] for name in present} <= rendered


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, float]:
    from test_uncertain import SCENE, write_calibrated_model

    return write_calibrated_model(tmp_path_factory.mktemp("model"), repo_root / SCENE)


def test_uncertain_is_a_grey_category_in_qgis(
    tmp_path: Path, run_cli, pyqgis: None, calibrated: tuple[Path, float], repo_root: Path
) -> None:
    from test_uncertain import SCENE

    scene = repo_root / SCENE
    model, _ = calibrated
    gpkg, tif, png = tmp_path / "labels.gpkg", tmp_path / "labels.tif", tmp_path / "map.png"
    result = run_cli("classify", scene, "--model", model, "--out", gpkg, "--out", tif)
    assert result.exit_code == 0, result.output
    frame = gpd.read_file(gpkg, layer="labels")
    assert 0 < (frame["class_name"] == "Uncertain").sum() < len(frame)
    report, _ = probe(tmp_path, gpkg, tif, png)
    card = load_model(model).card
    assert report["vector_valid"] and report["raster_valid"]
    assert report["categories"] == [*card.class_names, "Uncertain"]
    grey = report["category_colors"][-1]
    assert grey[1:3] == grey[3:5] == grey[5:7]  # #rrggbb with r = g = b
    assert report["category_colors"][:-1] == [c.color for c in card.classes]
    # The raster's legend names value 254 Uncertain, in the same grey.
    at = report["raster_values"].index(254)
    assert report["raster_labels"][at] == "Uncertain" == report["raster_legend"][at]
    assert report["raster_colors"][at] == grey
    assert report["raster_labels"][: card.num_classes] == card.class_names
    rendered = {rgb for _, rgb in Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert tuple(int(grey[i : i + 2], 16) for i in (1, 3, 5)) in rendered


def test_class_names_with_xml_characters_are_qgis_categories(
    tmp_path: Path, run_cli, pyqgis: None, scenes_dir: Path
) -> None:
    from test_classify import CASES, naip_part, write_special_names_model

    model = write_special_names_model(tmp_path)
    names = load_model(model).card.class_names
    assert all(c in names[0] for c in "<&\"'>")
    scene = naip_part(scenes_dir.joinpath(*CASES["naip_rgbn"]), tmp_path)
    gpkg, tif, png = tmp_path / "labels.gpkg", tmp_path / "labels.tif", tmp_path / "map.png"
    args = ("--bands", "1,2,3", "--gsd", "5", "--uncertain-below", "0")
    result = run_cli("classify", scene, "--model", model, "--out", gpkg, "--out", tif, *args)
    assert result.exit_code == 0, result.output
    report, _ = probe(tmp_path, gpkg, tif, png)
    # QGIS loaded the layer's default style from layer_styles: one category per class,
    # its value and its legend label the exact name.
    assert report["vector_valid"] and report["raster_valid"]
    assert report["renderer"] == "categorizedSymbol"
    assert report["categories"] == names
    assert report["category_labels"] == names
    assert report["raster_labels"][: len(names)] == names  # from the .tif.aux.xml
    assert report["features"] == 6


def test_families_are_categories_in_their_colours_in_qgis(
    tmp_path: Path, run_cli, pyqgis: None, repo_root: Path
) -> None:
    from test_hierarchy import SCENE, hierarchical

    from rsscgeo.modelfile import save_model

    flat = load_model(FLAT_MODEL)
    card = hierarchical(flat.card, flat.card.uncertain_below)
    model = save_model(tmp_path / "families.safetensors", flat.model, card)
    gpkg, tif, png = tmp_path / "labels.gpkg", tmp_path / "labels.tif", tmp_path / "map.png"
    result = run_cli("classify", SCENE, "--model", model, "--out", gpkg, "--out", tif)
    assert result.exit_code == 0, result.output
    assert "named by family" in result.output
    report, _ = probe(tmp_path, gpkg, tif, png)
    assert report["vector_valid"] and report["raster_valid"]
    expected = [*card.class_names, *card.parent_names, "Uncertain"]
    assert report["categories"] == expected
    families = slice(card.num_classes, card.num_classes + len(card.parents))
    assert report["category_colors"][families] == [p.color for p in card.parents]
    values = list(range(card.num_classes, card.num_classes + len(card.parents)))
    assert report["raster_values"][families] == values
    assert report["raster_labels"][families] == card.parent_names
    assert report["raster_colors"][families] == [p.color for p in card.parents]


def test_suggested_patches_are_labelled_in_qgis_and_adapted_on(
    tmp_path: Path, run_cli, pyqgis: None, repo_root: Path
) -> None:
    scene = repo_root / "examples" / "scenes" / "naip_2020_rgbn.tif"
    gpkg = tmp_path / "map.gpkg"
    result = run_cli("classify", scene, "--out", gpkg, "--suggest", "12")
    assert result.exit_code == 0, result.output
    picks = gpd.read_file(gpkg, layer="to_label", fid_as_index=True)
    card = load_model(BUNDLED_MODEL).card
    # Label most as the model guessed, two as a class it lacks; leave one empty.
    wanted = {int(fid): name for fid, name in picks["predicted"].items()}
    for fid in list(wanted)[:2]:
        wanted[fid] = "Vineyard"
    del wanted[list(wanted)[-1]]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    probe = subprocess.run(
        [SYSTEM_PYTHON, str(PROBE.with_name("qgis_label_probe.py")), str(gpkg), json.dumps(wanted)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["valid"] and report["features"] == 12
    assert report["renderer"] == "RuleRenderer" and report["labels_enabled"]
    assert report["widget"] == "ValueMap" and report["new_class_widget"] == "TextEdit"
    assert set(card.class_names + card.parent_names) <= set(report["choices"])
    assert report["aliases"] == ["label (a class or family)", "new class (if none fits)"]
    assert report["committed"], report["errors"]
    labelled = gpd.read_file(gpkg, layer="to_label", fid_as_index=True)
    assert labelled["new_class"].dropna().to_dict() == {f: wanted[f] for f in list(wanted)[:2]}
    said = labelled["new_class"].fillna(labelled["label"])
    assert said.dropna().to_dict() == wanted
    out = tmp_path / "adapted.safetensors"
    result = run_cli("adapt", BUNDLED_MODEL, scene, "--labels", gpkg, "--out", out)
    assert result.exit_code == 0, result.output
    adaptation = load_model(out).card.adaptation
    assert adaptation is not None
    assert adaptation.label_counts == dict(Counter(wanted.values()))
    assert adaptation.new_classes == ["Vineyard"]
