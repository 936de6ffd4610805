"""STAC items as scenes: the asset and the bands come from the item's metadata.

Items are local JSON files written by the tests (with pystac), whose assets point at
crops of a real NAIP scene, on disk or served over HTTP by a server the test starts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from helpers import assert_one_line_error
from rasterio.windows import Window
from servers import serve_folder

from rsscgeo.errors import SceneError
from rsscgeo.stac import resolve_stac

pytestmark = pytest.mark.real_data

NAIP = "opengeos/naip_m_4709963_se_14_1_20200831.tif"
RGB = ("red", "green", "blue")
WHEN = dt.datetime(2020, 8, 31, 17, 0, tzinfo=dt.UTC)


def crop(scenes_dir: Path, out: Path, bands: list[int], window: Window) -> Path:
    """A crop of the real NAIP scene with its bands in the given order."""
    with rasterio.open(scenes_dir / NAIP) as src:
        profile = src.profile | {
            "width": window.width,
            "height": window.height,
            "count": len(bands),
            "transform": src.window_transform(window),
        }
        pixels = src.read(bands, window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(pixels)
    return out


def eo_bands(*names: str | None) -> dict[str, object]:
    return {"eo:bands": [{"name": f"b{i}", "common_name": n} for i, n in enumerate(names)]}


def write_item(path: Path, item_id: str, assets: dict[str, pystac.Asset]) -> Path:
    item = pystac.Item(
        item_id,
        {"type": "Point", "coordinates": [-99.2, 47.0]},
        [-99.3, 46.9, -99.1, 47.1],
        WHEN,
        {},
        assets=assets,
    )
    path.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)))
    return path


def data_asset(
    href: str, *names: str | None, key_roles: tuple[str, ...] = ("data",)
) -> pystac.Asset:
    extra = eo_bands(*names) if names else {}
    return pystac.Asset(
        href, media_type=pystac.MediaType.COG, roles=list(key_roles), extra_fields=extra
    )


@pytest.fixture
def crops(tmp_path: Path, scenes_dir: Path) -> dict[str, Path]:
    """RGBN and BGRN crops of one real area (250 x 250 px at 5 m: 5 x 5 patches at 2 m)."""
    window = Window(300, 200, 250, 250)
    return {
        "rgbn": crop(scenes_dir, tmp_path / "rgbn.tif", [1, 2, 3, 4], window),
        "bgrn": crop(scenes_dir, tmp_path / "bgrn.tif", [3, 2, 1, 4], window),
        "left": crop(scenes_dir, tmp_path / "left.tif", [1, 2, 3, 4], Window(300, 200, 125, 250)),
        "right": crop(scenes_dir, tmp_path / "right.tif", [1, 2, 3, 4], Window(425, 200, 125, 250)),
    }


def test_the_asset_is_chosen_by_band_names_then_visual_then_image(tmp_path: Path) -> None:
    assets = {
        "thumbnail": pystac.Asset("t.png", media_type="image/png", roles=["thumbnail"]),
        "unnamed": data_asset("u.tif"),
        "analytic": data_asset("a.tif", "blue", "green", "red", "nir"),
        "visual": data_asset("v.tif", key_roles=("visual",)),
    }
    item = write_item(tmp_path / "item.json", "naip-1", assets)
    chosen = resolve_stac([item], RGB)
    assert [s.filename for s in chosen.sources] == ["a.tif"]
    assert chosen.bands == (3, 2, 1)
    assert chosen.metadata == {
        "stac_item_ids": "naip-1",
        "stac_datetimes": WHEN.isoformat(),
        "stac_assets": "analytic",
    }
    del assets["analytic"]
    visual = resolve_stac([write_item(tmp_path / "v.json", "v", assets)], RGB)
    assert [s.filename for s in visual.sources] == ["v.tif"] and visual.bands is None
    assets = {"image": data_asset("i.tif", "red", "green"), "other": data_asset("o.tif")}
    image = resolve_stac([write_item(tmp_path / "i.json", "i", assets)], RGB)
    assert [s.filename for s in image.sources] == ["i.tif"] and image.bands is None
    chosen = resolve_stac([write_item(tmp_path / "o.json", "o", assets)], RGB, asset="other")
    assert [s.filename for s in chosen.sources] == ["o.tif"]
    with pytest.raises(SceneError, match=r"no asset 'nope' \(it has image, other"):
        resolve_stac([tmp_path / "o.json"], RGB, asset="nope")
    del assets["image"]
    with pytest.raises(SceneError, match="no asset with the model's bands"):
        resolve_stac([write_item(tmp_path / "x.json", "x", assets)], RGB)


def test_stac_1_1_band_names_count_too(tmp_path: Path) -> None:
    bands = {"bands": [{"name": n, "eo:common_name": n} for n in ("nir", "red", "green", "blue")]}
    asset = pystac.Asset("s.tif", roles=["data"], extra_fields=bands)
    chosen = resolve_stac([write_item(tmp_path / "item.json", "s", {"data": asset})], RGB)
    assert chosen.bands == (2, 3, 4)


@pytest.mark.slow
def test_bands_by_common_name_give_the_outputs_of_the_right_bands(
    crops: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    item = write_item(
        tmp_path / "item.json",
        "naip-bgrn",
        {"image": data_asset(str(crops["bgrn"]), "blue", "green", "red", "nir")},
    )
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("classify", item, "--out", out / "item.gpkg", "--out", out / "item.tif")
    assert result.exit_code == 0, result.output
    assert "STAC item naip-bgrn" in result.output and "bands 3,2,1" in result.output
    result = run_cli(
        "classify", crops["rgbn"], "--out", out / "rgbn.gpkg", "--out", out / "rgbn.tif"
    )
    assert result.exit_code == 0, result.output
    expected, actual = gpd.read_file(out / "rgbn.gpkg"), gpd.read_file(out / "item.gpkg")
    assert len(actual) == len(expected) >= 9
    assert expected.drop(columns="geometry").equals(actual.drop(columns="geometry"))
    metadata = pyogrio.read_info(out / "item.gpkg", layer="item")["layer_metadata"]
    assert metadata["stac_item_ids"] == "naip-bgrn"
    assert metadata["stac_datetimes"] == WHEN.isoformat()
    with rasterio.open(out / "item.tif") as src:
        assert src.tags()["stac_item_ids"] == "naip-bgrn"


@pytest.mark.slow
def test_served_items_with_relative_assets_form_a_mosaic(
    crops: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    www = crops["left"].parent
    for side in ("left", "right"):
        write_item(
            www / f"{side}.json",
            f"naip-{side}",
            {"image": data_asset(f"{side}.tif", "red", "green", "blue", "nir")},
        )
    out = tmp_path / "mosaic.gpkg"
    with serve_folder(www) as server:
        # One item served (its asset relative to the item's URL), one on disk.
        result = run_cli("classify", server.url_of("left.json"), www / "right.json", "--out", out)
        assert result.exit_code == 0, result.output
        served = {path for method, path, _ in server.requests if method == "GET"}
        assert {"/left.json", "/left.tif"} <= served
    frame = gpd.read_file(out)
    whole = tmp_path / "whole.gpkg"
    assert run_cli("classify", crops["rgbn"], "--out", whole).exit_code == 0
    reference = gpd.read_file(whole)
    assert frame.total_bounds == pytest.approx(reference.total_bounds)
    agree = np.mean(frame["class_name"].to_numpy() == reference["class_name"].to_numpy())
    assert len(frame) == len(reference) and agree >= 0.75
    metadata = pyogrio.read_info(out, layer="mosaic")["layer_metadata"]
    assert metadata["stac_item_ids"] == "naip-left,naip-right"


def test_bad_items_are_one_line(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "o.gpkg"
    missing = tmp_path / "missing.json"
    assert_one_line_error(
        run_cli("classify", missing, "--out", out), "missing.json", "does not exist"
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert_one_line_error(run_cli("classify", broken, "--out", out), "broken.json", "STAC")
    collection = pystac.Collection(
        "c",
        "a collection",
        pystac.Extent.from_dict(
            {"spatial": {"bbox": [[-1, -1, 1, 1]]}, "temporal": {"interval": [[None, None]]}}
        ),
    )
    path = tmp_path / "collection.json"
    path.write_text(json.dumps(collection.to_dict(include_self_link=False)))
    assert_one_line_error(run_cli("classify", path, "--out", out), "Collection, not an Item")
    item = write_item(tmp_path / "item.json", "i", {"other": data_asset("o.tif")})
    assert_one_line_error(
        run_cli("classify", item, "--out", out, "--asset", "nope"), "no asset 'nope'", "--asset"
    )
    assert not out.exists()
