"""The QGIS plugin: rsscgeo's algorithms run in real QGIS 3.22 Processing, headless."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error
from test_qgis import SYSTEM_PYTHON, pyqgis  # noqa: F401 (the fixture)

from rsscgeo.qgis_plugin import PLUGIN_DIR

pytestmark = [pytest.mark.real_data, pytest.mark.slow, pytest.mark.usefixtures("pyqgis")]

PROBE = Path(__file__).with_name("qgis_processing_probe.py")
DEMO = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"
RSSCGEO = str(Path(sys.executable).with_name("rsscgeo"))


def processing(tmp_path: Path, request: dict, env: dict[str, str] | None = None) -> dict:
    """What the probe reports from real QGIS (see qgis_processing_probe.py)."""
    environment = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_RUNTIME_DIR": str(tmp_path),
        "RSSCGEO_EXECUTABLE": RSSCGEO,
        **(env or {}),
    }
    probe = subprocess.run(
        [SYSTEM_PYTHON, str(PROBE), str(PLUGIN_DIR.parent), json.dumps(request)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def test_the_provider_names_its_parameters_as_qgis_does(tmp_path: Path) -> None:
    found = processing(tmp_path, {"algorithms": True})
    assert set(found) == {"rsscgeo:classify", "rsscgeo:suggest", "rsscgeo:adapt", "rsscgeo:change"}
    assert {"INPUT", "MODEL", "OUTPUT", "OUTPUT_RASTER"} <= set(found["rsscgeo:classify"])
    assert {"INPUT", "INPUT_2", "MODEL", "OUTPUT", "OUTPUT_RASTER"} <= set(found["rsscgeo:change"])
    assert {"MODEL", "INPUT", "LABELS", "FIELD", "OUTPUT"} <= set(found["rsscgeo:adapt"])
    assert "N" in found["rsscgeo:suggest"]


def _same_outputs(gpkg: Path, tif: Path, other_gpkg: Path, other_tif: Path) -> None:
    ours, theirs = gpd.read_file(gpkg), gpd.read_file(other_gpkg)
    assert ours.drop(columns="geometry").equals(theirs.drop(columns="geometry"))
    assert ours.geometry.geom_equals(theirs.geometry).all()
    with rasterio.open(tif) as a, rasterio.open(other_tif) as b:
        assert a.profile == b.profile
        np.testing.assert_array_equal(a.read(), b.read())


def test_classify_in_qgis_writes_what_the_cli_writes(tmp_path: Path, run_cli) -> None:
    cli_gpkg, cli_tif = tmp_path / "cli.gpkg", tmp_path / "cli.tif"
    assert run_cli("classify", DEMO, "--out", cli_gpkg, "--out", cli_tif).exit_code == 0
    gpkg, tif = tmp_path / "qgis.gpkg", tmp_path / "qgis.tif"
    parameters = {"INPUT": str(DEMO), "OUTPUT": str(gpkg), "OUTPUT_RASTER": str(tif)}
    report = processing(tmp_path, {"run": "rsscgeo:classify", "parameters": parameters})
    assert "error" not in report, report
    assert report["results"] == {"OUTPUT": str(gpkg), "OUTPUT_RASTER": str(tif)}
    assert report["highest_progress"] == pytest.approx(100)
    # A stage's name once, not per progress line (a dialog logs every text it gets).
    texts = report["progress_texts"]
    assert "classifying" in texts and all(a != b for a, b in itertools.pairwise(texts)), texts
    _same_outputs(gpkg, tif, cli_gpkg, cli_tif)
    # Loaded as Processing loads its outputs: the embedded categorised style applies.
    layers = processing(tmp_path, {"load": [str(gpkg), str(tif)]})["layers"]
    assert layers[0]["valid"] and layers[0]["renderer"] == "categorizedSymbol"
    assert set(gpd.read_file(gpkg)["class_name"]) <= set(layers[0]["categories"])
    assert layers[1]["valid"] and layers[1]["renderer"] == "paletted"


def _larger_scene(path: Path) -> Path:
    """The demo scene repeated 3 x 3: about 1,900 patches, long enough to cancel midway."""
    with rasterio.open(DEMO) as src:
        data, profile = src.read(), src.profile
    tiled = np.tile(data, (1, 3, 3))
    profile |= {"width": tiled.shape[2], "height": tiled.shape[1], "tiled": True}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(tiled)
    return path


def test_cancel_stops_cleanly_and_a_rerun_resumes(tmp_path: Path, run_cli) -> None:
    scene = _larger_scene(tmp_path / "scene.tif")
    gpkg, tif = tmp_path / "map.gpkg", tmp_path / "map.tif"
    parameters = {"INPUT": str(scene), "OUTPUT": str(gpkg), "OUTPUT_RASTER": str(tif)}
    request = {"run": "rsscgeo:classify", "parameters": parameters, "cancel_at": 10}
    report = processing(tmp_path, request)
    assert "cancelled" in report.get("error", ""), report
    assert report["seconds_after_cancel"] < 10
    assert not gpkg.exists() and not tif.exists()
    journal = tmp_path / ".map.gpkg.journal"
    done = len(list(journal.glob("chunk-*.npz")))
    assert done > 0, sorted(p.name for p in tmp_path.iterdir())
    again = processing(tmp_path, {"run": "rsscgeo:classify", "parameters": parameters})
    assert "error" not in again, again
    assert not journal.exists()
    cli_gpkg, cli_tif = tmp_path / "cli.gpkg", tmp_path / "cli.tif"
    assert run_cli("classify", scene, "--out", cli_gpkg, "--out", cli_tif).exit_code == 0
    _same_outputs(gpkg, tif, cli_gpkg, cli_tif)


def test_errors_are_rsscgeos_one_line(tmp_path: Path, run_cli) -> None:
    no_crs = tmp_path / "no_crs.tif"
    with rasterio.open(DEMO) as src:
        profile = src.profile | {"crs": None}
        data = src.read()
    with rasterio.open(no_crs, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "map.gpkg"
    cli = run_cli("classify", no_crs, "--out", out)
    assert_one_line_error(cli)
    message = cli.output.strip().splitlines()[-1].removeprefix("Error: ")
    parameters = {"INPUT": str(no_crs), "OUTPUT": str(out)}
    report = processing(tmp_path, {"run": "rsscgeo:classify", "parameters": parameters})
    assert report["error"] == message
    assert not out.exists()
    # Without the executable, the message says which setting to fill.
    missing = processing(
        tmp_path,
        {"run": "rsscgeo:classify", "parameters": {"INPUT": str(DEMO), "OUTPUT": str(out)}},
        {"RSSCGEO_EXECUTABLE": "", "PATH": "/usr/bin:/bin"},
    )
    assert "rsscgeo executable" in missing["error"] and "RSSCGEO_EXECUTABLE" in missing["error"]


def test_a_modeler_model_chains_classify_and_change(tmp_path: Path) -> None:
    report = processing(tmp_path, {"model": str(tmp_path / "chain.model3")})
    assert report["saved"] and report["read"]
    children = report["children"]
    assert children["classify"]["algorithm"] == "rsscgeo:classify"
    assert children["change"]["algorithm"] == "rsscgeo:change"
    assert all(child["resolved"] for child in children.values())
    assert children["change"]["sources"] == ["INPUT", "INPUT_2"]
    assert "OUTPUT_RASTER" in children["classify"]["parameters"]
    assert report["model_parameters"] == ["after", "before"]


def test_the_packaged_zip_loads_in_qgis(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "rsscgeo_qgis.zip"
    result = run_cli("qgis", "package", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert "rsscgeo_qgis/metadata.txt" in names and "rsscgeo_qgis/__init__.py" in names
        assert not any("__pycache__" in n for n in names)
        archive.extractall(tmp_path / "plugins")
    report = processing(tmp_path, {"installed": str(tmp_path / "plugins")})
    assert report["available"] and report["loaded"] and report["started"], report
    assert report["metadata"]["name"] == "rsscgeo"
    assert report["metadata"]["hasProcessingProvider"] == "yes"
    assert report["algorithms"] == [
        "rsscgeo:adapt", "rsscgeo:change", "rsscgeo:classify", "rsscgeo:suggest"
    ]  # fmt: skip


def test_install_copies_enables_and_points_at_this_rsscgeo(tmp_path: Path, run_cli) -> None:
    result = run_cli("qgis", "install", "--profiles-dir", tmp_path, "--profile", "work")
    assert result.exit_code == 0, result.output
    plugin = tmp_path / "work" / "python" / "plugins" / "rsscgeo_qgis"
    assert (plugin / "metadata.txt").read_text() == (PLUGIN_DIR / "metadata.txt").read_text()
    ini = (tmp_path / "work" / "QGIS" / "QGIS3.ini").read_text()
    assert "rsscgeo_qgis=true" in ini
    assert f"Configuration\\RSSCGEO_EXECUTABLE={RSSCGEO}" in ini
