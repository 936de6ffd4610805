"""Remote scenes: URLs and GDAL virtual paths classify as the same local file does.

A Range-capable HTTP server (``servers.serve_folder``) started by each test serves a
real scene from ``../shared/data/scenes`` on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import assert_one_line_error
from servers import closed_port, serve_folder

from rsscgeo.errors import SceneError
from rsscgeo.sources import COG_DEFAULTS, scene_source

pytestmark = pytest.mark.real_data

NAIP = "opengeos/naip_m_4709963_se_14_1_20090818.tif"


@pytest.fixture
def served_scene(tmp_path: Path, scenes_dir: Path) -> Path:
    """A real NAIP COG in a folder of its own, to be served."""
    folder = tmp_path / "www"
    folder.mkdir()
    shutil.copy(scenes_dir / NAIP, folder / "naip.tif")
    return folder


@pytest.mark.parametrize(
    ("given", "gdal_path"),
    [
        ("https://host/a/scene.tif", "/vsicurl/https://host/a/scene.tif"),
        ("http://host:8080/scene.tif?x=1", "/vsicurl/http://host:8080/scene.tif?x=1"),
        ("s3://bucket/key/scene.tif", "/vsis3/bucket/key/scene.tif"),
        ("gs://bucket/scene.tif", "/vsigs/bucket/scene.tif"),
        ("az://container/scene.tif", "/vsiaz/container/scene.tif"),
        ("/vsizip/archive.zip/scene.tif", "/vsizip/archive.zip/scene.tif"),
    ],
)
def test_urls_become_gdal_paths_with_the_name_kept(given: str, gdal_path: str) -> None:
    source = scene_source(given)
    assert source.gdal_path == gdal_path and source.name == given and source.is_remote
    assert source.stem == "scene"


def test_local_paths_stay_local_and_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = scene_source("sub dir/scène.tif")
    assert not source.is_remote and source.name == "sub dir/scène.tif"
    assert source.path == tmp_path / "sub dir" / "scène.tif"
    with pytest.raises(SceneError, match="ftp2:// scheme"):
        scene_source("ftp2://host/scene.tif")


@pytest.mark.slow
def test_served_scene_gives_the_outputs_of_the_local_file(
    served_scene: Path, tmp_path: Path, run_cli
) -> None:
    local = served_scene / "naip.tif"
    with serve_folder(served_scene) as server:
        url = server.url_of("naip.tif")
        for name, scene in (("local", local), ("url", url), ("vsi", f"/vsicurl/{url}")):
            result = run_cli(
                "classify", scene, "--out", tmp_path / f"{name}.gpkg",
                "--out", tmp_path / f"{name}.tif", "--workers", "2",
            )  # fmt: skip
            assert result.exit_code == 0, result.output
        ranged = [r for r in server.requests if r[0] == "GET"]
        assert ranged and all(r[2] for r in ranged), "GDAL should read byte ranges"
    expected = gpd.read_file(tmp_path / "local.gpkg")
    for name in ("url", "vsi"):
        actual = gpd.read_file(tmp_path / f"{name}.gpkg")
        assert expected.drop(columns="geometry").equals(actual.drop(columns="geometry"))
        assert expected.geometry.geom_equals(actual.geometry).all()
        with (
            rasterio.open(tmp_path / "local.tif") as a,
            rasterio.open(tmp_path / f"{name}.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.transform == b.transform
        local_areas = (tmp_path / "local.areas.csv").read_text()
        assert (tmp_path / f"{name}.areas.csv").read_text() == local_areas


def test_remote_failures_are_one_line_naming_the_url(
    served_scene: Path, tmp_path: Path, run_cli
) -> None:
    data = (served_scene / "naip.tif").read_bytes()
    (served_scene / "cut.tif").write_bytes(data[: len(data) // 3])
    out = tmp_path / "o.gpkg"
    with serve_folder(served_scene) as server:
        missing = server.url_of("missing.tif")
        assert_one_line_error(run_cli("classify", missing, "--out", out), missing, "404")
        cut = server.url_of("cut.tif")
        assert_one_line_error(run_cli("classify", cut, "--out", out), cut)
    refused = f"http://127.0.0.1:{closed_port()}/scene.tif"
    assert_one_line_error(run_cli("classify", refused, "--out", out), refused)
    assert_one_line_error(
        run_cli("classify", "ftp2://host/scene.tif", "--out", out), "ftp2://", "scheme"
    )
    assert not out.exists()


def test_remote_signature_is_the_url_with_size_and_etag(served_scene: Path) -> None:
    scene = served_scene / "naip.tif"
    with serve_folder(served_scene) as server:
        source = scene_source(server.url_of("naip.tif"))
        first = source.signature()
        assert first["url"] == source.name
        assert first["size"] == str(scene.stat().st_size) and first["version"]
        scene.write_bytes(scene.read_bytes() + b"\0")  # a new version at the same URL
        second = source.signature()
        assert second["size"] != first["size"] and second["version"] != first["version"]


def test_cog_defaults_apply_unless_the_user_set_them(
    served_scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsscgeo.rasterfile import open_scene

    for key in COG_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "7")
    with serve_folder(served_scene) as server, open_scene(server.url_of("naip.tif")) as src:
        assert src.count == 4
    assert os.environ["GDAL_HTTP_MAX_RETRY"] == "7"  # the user's value wins
    assert os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert os.environ["GDAL_HTTP_MULTIRANGE"] == "YES"
