"""Area per class: cell areas in projected and geographic CRSs, and the areas.csv of a run."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from rasterio.crs import CRS

from rsscgeo.scene.areas import COLUMNS, cell_areas
from rsscgeo.scene.grid import PatchGrid

# The surface of the WGS84 ellipsoid (NIMA TR8350.2), m².
WGS84_SURFACE_M2 = 5.10065622e14


def grid(
    crs: str, transform: Affine, width: int, height: int, patch: int, stride: int
) -> PatchGrid:
    return PatchGrid(CRS.from_user_input(crs), transform, width, height, patch, stride)


def test_projected_cells_are_stride_squared_in_metres() -> None:
    utm = grid("EPSG:32633", Affine(2, 0, 500_000, 0, -2, 6_000_000), 600, 300, 150, 100)
    np.testing.assert_allclose(cell_areas(utm), (100 * 2) ** 2)
    assert len(cell_areas(utm)) == utm.rows
    # New York Long Island, US survey feet: 1 ft = 1200/3937 m.
    feet = grid("EPSG:2263", Affine(10, 0, 1e6, 0, -10, 2e5), 300, 300, 150, 150)
    np.testing.assert_allclose(cell_areas(feet), (1500 * 1200 / 3937) ** 2, rtol=1e-9)


def test_geographic_cells_are_geodesic() -> None:
    # One-degree cells over the whole globe add up to the ellipsoid's surface.
    globe = grid("EPSG:4326", Affine(1, 0, -180, 0, -1, 90), 360, 180, 1, 1)
    areas = cell_areas(globe)
    assert areas.sum() * globe.cols == pytest.approx(WGS84_SURFACE_M2, rel=1e-6)
    # A one-degree cell at the equator: about 110.57 km x 111.32 km.
    assert areas[89] == pytest.approx(110_574 * 111_320, rel=2e-3)
    assert areas[0] < areas[45] < areas[89]  # smaller towards the pole


@pytest.mark.real_data
@pytest.mark.parametrize(
    "scene",
    ["opengeos/naip_m_4709963_se_14_1_20200831.tif", "opengeos/landsat_2020.tif"],
    ids=["utm", "geographic"],
)
def test_areas_csv_adds_up_the_classified_patches(
    scene: str, scenes_dir: Path, tmp_path: Path, run_cli
) -> None:
    gpkg = tmp_path / "labels.gpkg"
    result = run_cli("classify", scenes_dir / scene, "--out", gpkg, "--workers", "1")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "labels.areas.csv", keep_default_na=False)
    assert tuple(table.columns) == COLUMNS
    frame = gpd.read_file(gpkg, layer="labels")
    # A card with families adds each family's total after the rows of what the map says.
    totals = table[table["level"] == "family"]
    table = table[table["level"] != "family"]
    for family, row in totals.set_index("class").iterrows():
        members = table[table["family"] == family]
        assert row["patches"] == members["patches"].sum()
        assert row["area_m2"] == pytest.approx(members["area_m2"].sum(), rel=1e-6)
    assert table["patches"].sum() == len(frame)
    assert table["class"].iloc[-1] == "Uncertain"
    assert table["percent"].sum() == pytest.approx(100, abs=0.01)
    np.testing.assert_allclose(table["area_ha"], table["area_m2"] / 1e4, atol=1e-3)
    counted = table[table["patches"] > 0].set_index("class")
    scores = frame.groupby("class_name")["score"].mean()
    mean_scores = pd.to_numeric(counted["mean_score"])
    np.testing.assert_allclose(mean_scores, scores[counted.index], atol=1e-4)
    # Each patch: its cell's area times its valid fraction. The patch is the cell here
    # (stride = patch size). In EPSG:4326 the ellipsoidal cylindrical equal-area
    # projection EPSG:6933 (parallels and meridians stay straight, so a lon/lat box stays
    # a rectangle) checks the geodesic areas independently.
    geographic = frame.crs.is_geographic
    equal_area = frame.geometry.to_crs("EPSG:6933") if geographic else frame.geometry
    expected = (equal_area.area * frame["valid_fraction"]).sum()
    assert table["area_m2"].sum() == pytest.approx(expected, rel=2e-3)
    largest = counted.drop(index="Uncertain", errors="ignore")["area_ha"].idxmax()
    row = counted.loc[largest]
    assert f"{largest} {row['patches']} ({row['area_ha']:.1f} ha)" in result.output
