"""``rsscgeo change`` on the real NAIP scenes of one tile, 2009 and 2020."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from helpers import assert_one_line_error
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from rsscgeo import ClassifyOptions, ClassifyOutputs, load_model, open_engine, plan_scene, run_plan
from rsscgeo.errors import OptionError, RunInterrupted
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel
from rsscgeo.scene.change import ChangeGeoPackage, fromto_path, plan_change, run_change
from rsscgeo.scene.engine import Engine
from rsscgeo.scene.legend import UNCERTAIN

pytestmark = pytest.mark.real_data

NAIP = {
    2009: ("opengeos", "naip_m_4709963_se_14_1_20090818.tif"),
    2020: ("opengeos", "naip_m_4709963_se_14_1_20200831.tif"),
}
# A corner of the tile (5 m pixels): 7 x 8 patches of the bundled model, read at 2 m.
CROP = Window(0, 0, 400, 360)
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with open_engine(workers=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def naip(scenes_dir: Path) -> dict[int, Path]:
    return {year: scenes_dir.joinpath(*parts) for year, parts in NAIP.items()}


def _crop(source: Path, target: Path, shift: float = 0.0) -> Path:
    """``CROP`` of ``source`` as a GeoTIFF, moved ``shift`` CRS units east."""
    with rasterio.open(source) as src:
        profile = {**src.profile, "width": CROP.width, "height": CROP.height}
        transform = src.window_transform(CROP)
        profile["transform"] = Affine.translation(shift, 0) @ transform
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=CROP))
    return target


@pytest.fixture(scope="module")
def crops(naip: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Crops of both years, 2009's warped into Web Mercator, and one far away."""
    folder = tmp_path_factory.mktemp("crops")
    found = {str(y): _crop(p, folder / f"{y}.tif") for y, p in naip.items()}
    found["far"] = _crop(naip[2020], folder / "far.tif", shift=100_000)
    found["3857"] = _warp(found["2009"], folder / "2009-3857.tif", "EPSG:3857")
    return found


def _warp(source: Path, target: Path, crs: str) -> Path:
    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": crs, "transform": transform}
        profile.update(width=width, height=height)
        with rasterio.open(target, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.bilinear,
                )
    return target


def _layer(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer=path.stem).set_index(["row", "col"]).sort_index()


def _fromto(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0)


def _classify(scene: Path, loaded: LoadedModel, out: Path, engine: Engine, **aligned) -> Path:
    plan = plan_scene([scene], loaded, ClassifyOptions(), ClassifyOutputs(out), **aligned)
    run_plan(plan, engine, progress=False)
    return out


def test_identical_scenes_change_nothing(tmp_path: Path, run_cli, crops: dict[str, Path]) -> None:
    gpkg, tif = tmp_path / "same.gpkg", tmp_path / "same.tif"
    result = run_cli("change", crops["2009"], crops["2009"], "--out", gpkg, "--out", tif)
    assert result.exit_code == 0, result.output
    assert "changed: 0 patches" in result.output
    layer = _layer(gpkg)
    assert len(layer) > 40
    assert not layer.changed.any()
    assert (layer.from_class == layer.to_class).all()
    assert np.allclose(layer.from_score, layer.to_score)
    table = _fromto(fromto_path(gpkg))
    assert list(table.index) == list(table.columns)
    assert np.allclose(table.to_numpy(), np.diag(np.diag(table.to_numpy())))
    with rasterio.open(tif) as src:
        before, after, changed = src.read()
        assert src.descriptions == ("from_class", "to_class", "changed")
    compared = changed != 255
    assert compared.sum() == len(layer)
    assert (before == after).all() and (changed[compared] == 0).all()


@pytest.fixture(scope="module")
def naip_change(
    naip: dict[int, Path],
    loaded: LoadedModel,
    engine: Engine,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """2009 -> 2020 through the library, and each year classified alone on that grid."""
    folder = tmp_path_factory.mktemp("change")
    outputs = ClassifyOutputs(folder / "change.gpkg", folder / "change.tif")
    plan = plan_change([naip[2009]], [naip[2020]], loaded, ClassifyOptions(), outputs)
    summary = run_change(plan, engine, progress=False)
    # Each year classified alone on that grid, read as change reads it: 2009 warped onto
    # its own grid, 2020 onto 2009's (its own grid is 1 m off: the files' extents differ).
    aligned = {
        year: _classify(naip[year], loaded, folder / f"{year}.gpkg", engine, align_to=plan.grid)
        for year in (2009, 2020)
    }
    # And 2009 as classify reads it by default (resampled on its own grid, not warped).
    plain = _classify(naip[2009], loaded, folder / "2009-plain.gpkg", engine)
    assert plan.before.grid == plan_scene([naip[2009]], loaded).grid
    return {
        "gpkg": outputs.gpkg,
        "tif": outputs.geotiff,
        "2009": aligned[2009],
        "2020": aligned[2020],
        "plain": plain,
        "changed": summary.changed,
    }


@pytest.mark.slow
def test_change_has_each_scenes_own_classes(naip_change: dict[str, Any]) -> None:
    change = _layer(naip_change["gpkg"])
    before, after = _layer(naip_change["2009"]), _layer(naip_change["2020"])
    both = before.index.intersection(after.index)
    assert len(both) > 150
    assert change.index.equals(both)
    assert (change.from_class == before.class_name[both]).all()
    assert (change.to_class == after.class_name[both]).all()
    assert np.allclose(change.from_score, before.score[both])
    assert np.allclose(change.to_score, after.score[both])
    assert change.geometry.geom_equals(before.geometry[both]).all()
    assert np.allclose(
        change.valid_fraction, np.minimum(before.valid_fraction, after.valid_fraction)[both]
    )
    # A resampled read differs from a warped one by a unit in a few pixels: the classes
    # of plain classify agree on most patches (borderline ones flip to or from Uncertain).
    plain = _layer(naip_change["plain"]).class_name[both]
    assert (plain == change.from_class).mean() >= 0.9


@pytest.mark.slow
def test_changed_means_different_and_certain(naip_change: dict[str, Any]) -> None:
    change = _layer(naip_change["gpkg"])
    certain = (change.from_class != UNCERTAIN) & (change.to_class != UNCERTAIN)
    # Two classes compare as classes; when either date names a family, families compare.
    card = load_model(BUNDLED_MODEL).card
    family = {c.name: c.parent or c.name for c in card.classes} | {p: p for p in card.parent_names}
    leaves = change.from_class.isin(card.class_names) & change.to_class.isin(card.class_names)
    differ = np.where(
        leaves,
        change.from_class != change.to_class,
        change.from_class.map(family) != change.to_class.map(family),
    )
    expected = certain & differ
    assert (change.changed == expected).all()
    assert (change.compared_at[certain] == np.where(leaves, "leaf", "parent")[certain]).all()
    assert 0 < change.changed.sum() == naip_change["changed"] < len(change)
    # Uncertain at one date and a class at the other is no change.
    assert (~certain & (change.from_class != change.to_class)).any()
    with rasterio.open(naip_change["tif"]) as src:
        bands = src.read()
        names = src.tags()["classes"].split(",")
    from_ids, to_ids, changed = (b[tuple(change.index.to_frame().to_numpy().T)] for b in bands)
    assert (changed == change.changed.to_numpy()).all()
    named = [UNCERTAIN if v == 254 else names[v] for v in from_ids]
    assert named == list(change.from_class)
    assert [UNCERTAIN if v == 254 else names[v] for v in to_ids] == list(change.to_class)
    assert (bands[:, bands[2] == 255] == 255).all()


@pytest.mark.slow
def test_fromto_sums_to_the_compared_area(naip_change: dict[str, Any]) -> None:
    gpkg = naip_change["gpkg"]
    change = _layer(gpkg)
    table = _fromto(fromto_path(gpkg))
    with rasterio.open(naip_change["tif"]) as src:
        cell = src.res[0] * src.res[1]  # one pixel per grid cell, in m²
    assert np.isclose(table.to_numpy().sum(), (cell * change.valid_fraction).sum() / 1e4, atol=1e-3)
    # Rows are BEFORE's categories, columns AFTER's: the classes present in either.
    present = sorted(set(change.from_class) | set(change.to_class))
    assert sorted(table.index) == present and list(table.columns) == list(table.index)
    for name in present:
        assert np.isclose(
            table.loc[name].sum(),
            (cell * change.valid_fraction[change.from_class == name]).sum() / 1e4,
            atol=1e-3,
        )


@pytest.mark.slow
def test_the_style_fills_changed_patches(naip_change: dict[str, Any]) -> None:
    gpkg = naip_change["gpkg"]
    qml = gpkg.with_suffix(".qml").read_text()
    with sqlite3.connect(gpkg) as db:
        styles = db.execute(
            "SELECT f_table_name, f_geometry_column, styleQML, useAsDefault FROM layer_styles"
        ).fetchall()
    assert styles == [("change", "geom", qml, 1)]  # the geometry column GDAL wrote
    assert 'type="RuleRenderer"' in qml and 'filter="&quot;changed&quot;"' in qml


def test_a_scene_in_another_crs_is_read_onto_the_first_grid(
    tmp_path: Path, crops: dict[str, Path], loaded: LoadedModel, engine: Engine
) -> None:
    outputs = ClassifyOutputs(tmp_path / "crs.gpkg", tmp_path / "crs.tif")
    plan = plan_change([crops["2009"]], [crops["3857"]], loaded, ClassifyOptions(), outputs)
    summary = run_change(plan, engine, progress=False)
    layer = _layer(outputs.gpkg)
    with rasterio.open(crops["2009"]) as src:
        assert layer.crs == src.crs
    with rasterio.open(outputs.geotiff) as src:
        assert src.transform == plan_scene([crops["2009"]], loaded).grid.output_transform
    # The same pixels warped there and back: almost every patch compared, few changed...
    assert summary.compared >= 0.8 * summary.grid.rows * summary.grid.cols
    assert summary.changed <= 0.1 * summary.compared, summary.changed
    # ...and AFTER's pixels land on BEFORE's: any shift by one pixel differs more.
    chunk = plan.before.chunks[0]
    before, valid = (a.astype(float) for a in plan.before.reader.read(plan.grid, chunk))
    after, after_valid = plan.after.reader.read(plan.grid, chunk)
    both = (valid > 0) & after_valid
    error = {
        (dy, dx): np.abs(np.roll(before, (dy, dx), (1, 2)) - after)[:, both].mean()
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    }
    assert min(error, key=error.__getitem__) == (0, 0) and error[0, 0] < 1, error


def test_an_interrupted_run_leaves_nothing(
    tmp_path: Path, crops: dict[str, Path], loaded: LoadedModel, engine: Engine, monkeypatch
) -> None:
    calls = []

    def interrupt(self: ChangeGeoPackage, pair: object) -> None:
        calls.append(pair)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ChangeGeoPackage, "write", interrupt)
    outputs = ClassifyOutputs(tmp_path / "stop.gpkg", tmp_path / "stop.tif")
    plan = plan_change([crops["2009"]], [crops["2020"]], loaded, ClassifyOptions(), outputs)
    with pytest.raises(RunInterrupted, match="no change output was written"):
        run_change(plan, engine, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def bad_inputs(tmp_path: Path, crops: dict[str, Path]) -> Callable[[str], list[str]]:
    existing = tmp_path / "existing.gpkg"
    existing.touch()
    cases = {
        "missing after": [crops["2009"], tmp_path / "missing.tif", "--out", tmp_path / "a.gpkg"],
        "existing output": [crops["2009"], crops["2020"], "--out", existing],
        "far away": [crops["2009"], crops["far"], "--out", tmp_path / "b.gpkg"],
        "probabilities": [
            *(crops["2009"], crops["2020"], "--out", tmp_path / "c.tif", "--probabilities")
        ],
        "no output": [crops["2009"], crops["2020"]],
    }
    return lambda name: [str(a) for a in cases[name]]


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing after", ("missing.tif",)),
        ("existing output", ("existing.gpkg exists", "--overwrite")),
        ("far away", ("does not overlap",)),
        ("probabilities", ("--probabilities",)),
        ("no output", ("--out",)),
    ],
)
def test_bad_input_is_one_line(run_cli, bad_inputs, case: str, needles: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli("change", *bad_inputs(case)), *needles)


@pytest.mark.slow
def test_change_opens_styled_in_qgis(tmp_path: Path, naip_change: dict[str, Any]) -> None:
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True)
    if check.returncode != 0:
        pytest.skip("PyQGIS not installed (apt-get install -y python3-qgis qgis-providers)")
    probe = f"""
import os, sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsVectorLayer({str(naip_change["gpkg"])!r}, "change", "ogr")
renderer = layer.renderer()
rules = [(r.filterExpression(), r.symbol().color().name(), r.symbol().color().alpha())
         for r in renderer.rootRule().children()]
print(layer.isValid(), layer.featureCount(), renderer.type(), rules, flush=True)
os._exit(0)
"""
    env = {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path), "PATH": "/usr/bin"}
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    features = len(_layer(naip_change["gpkg"]))
    assert done.stdout.strip().splitlines()[-1] == (
        f"True {features} RuleRenderer [('\"changed\"', '#e41a1c', 255), ('ELSE', '#000000', 0)]"
    )


def test_multilabel_models_are_refused(crops: dict[str, Path], loaded: LoadedModel) -> None:
    card = loaded.card.model_copy(update={"task": "multilabel"})
    outputs = ClassifyOutputs(Path("never.gpkg"))
    with pytest.raises(OptionError, match="multi-label"):
        plan_change(
            [crops["2009"]], [crops["2020"]], LoadedModel(loaded.model, card), None, outputs
        )
