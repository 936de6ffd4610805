"""`rsscgeo tiles`: georeferenced tiles + manifest from a raster and labelled polygons."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error, write_raster
from rasterio.transform import from_origin
from shapely.geometry import box

from rsscgeo.data.layouts import open_catalog

ORIGIN_X, ORIGIN_Y, RES = 500000.0, 4200000.0, 2.0


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(1).integers(0, 255, (3, 96, 128), dtype=np.uint8)
    transform = from_origin(ORIGIN_X, ORIGIN_Y, RES, RES)
    return write_raster(tmp_path / "scene.tif", pixels, "EPSG:32633", transform)


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    # Left half forest, right half water (stored in EPSG:4326, the scene is in UTM).
    left = box(ORIGIN_X, ORIGIN_Y - 96 * RES, ORIGIN_X + 64 * RES, ORIGIN_Y)
    right = box(ORIGIN_X + 64 * RES, ORIGIN_Y - 96 * RES, ORIGIN_X + 128 * RES, ORIGIN_Y)
    frame = gpd.GeoDataFrame(
        {"class": ["forest", "water"]}, geometry=[left, right], crs="EPSG:32633"
    )
    path = tmp_path / "labels.gpkg"
    frame.to_crs("EPSG:4326").to_file(path)  # stored in another CRS: tiles must reproject it
    return path


def test_tiles_are_georeferenced_and_labelled(
    tmp_path: Path, scene: Path, labels: Path, run_cli
) -> None:
    out = tmp_path / "tiles"
    result = run_cli("tiles", scene, labels, "--field", "class", "--size", "32", "--out", out)
    assert result.exit_code == 0, result.output
    catalog = open_catalog(out / "manifest.csv")
    assert catalog.classes == ("forest", "water")
    assert len(catalog.items) == 4 * 3  # 128x96 scene, 32 px tiles
    with rasterio.open(scene) as src:
        for item in catalog.items:
            with rasterio.open(item.path) as tile:
                assert tile.crs == src.crs and tile.shape == (32, 32)
                col = round((tile.transform.c - ORIGIN_X) / RES)
                row = round((ORIGIN_Y - tile.transform.f) / RES)
                window = rasterio.windows.Window(col, row, 32, 32)
                np.testing.assert_array_equal(tile.read(), src.read(window=window))
                expected = "forest" if col < 64 else "water"
                assert catalog.label_names(item) == [expected]


def test_straddling_tiles_get_both_labels_and_output_is_protected(
    tmp_path: Path, scene: Path, labels: Path, run_cli
) -> None:
    out = tmp_path / "tiles"
    args = (
        "tiles",
        scene,
        labels,
        "--field",
        "class",
        "--size",
        "32",
        "--stride",
        "16",
        "--min-cover",
        "0.4",
    )
    assert run_cli(*args, "--out", out).exit_code == 0
    catalog = open_catalog(out / "manifest.csv")
    assert catalog.task == "multilabel"
    assert any(len(item.labels) == 2 for item in catalog.items)
    assert_one_line_error(run_cli(*args, "--out", out), "manifest.csv", "--overwrite")
    assert run_cli(*args, "--out", out, "--overwrite").exit_code == 0


def test_tiles_bad_input(tmp_path: Path, scene: Path, labels: Path, run_cli) -> None:
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("hello")
    assert_one_line_error(
        run_cli("tiles", not_raster, labels, "--field", "class", "--out", tmp_path / "o"),
        "notes.tif",
        "raster",
    )
    assert_one_line_error(
        run_cli("tiles", scene, labels, "--field", "landuse", "--out", tmp_path / "o"),
        "landuse",
        "class",
    )
    assert_one_line_error(
        run_cli(
            "tiles", scene, labels, "--field", "class", "--size", "512", "--out", tmp_path / "o"
        ),
        "no 512px tile",
    )
    assert not (tmp_path / "o").exists()
