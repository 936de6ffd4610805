"""`rsscgeo classify` on the real scenes in ../shared/data/scenes with the bundled model."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from helpers import FLAT_MODEL, assert_one_line_error, write_raster
from rasterio.transform import from_origin

from rsscgeo import load_model
from rsscgeo.modelfile import BUNDLED_MODEL

pytestmark = pytest.mark.real_data


# Scenes by name, relative to the scenes_dir fixture.
CASES = {
    "striped_nodata": ("rasterio", "RGB.byte.tif"),
    "jpeg_cog_3857": ("rasterio", "cogeo.tif"),
    "naip_rgbn": ("opengeos", "naip_m_4709963_se_14_1_20200831.tif"),
    "landsat8_uint16": ("landsat8", "LC81070352015122LGN00_RGB_B4B3B2_cog.tif"),
    "geographic_4326": ("opengeos", "landsat_2020.tif"),
}


@pytest.fixture(scope="module")
def scene_path(scenes_dir: Path) -> Callable[[str], Path]:
    """A scene of CASES by name."""
    return lambda name: scenes_dir.joinpath(*CASES[name])


@pytest.fixture(scope="module")
def card():
    return load_model(BUNDLED_MODEL).card


def legend_names(card) -> list[str]:
    """What the maps of ``card`` show by default: its classes, families, Uncertain if calibrated."""
    from rsscgeo.scene.legend import Legend

    return [entry.name for entry in Legend.for_card(card).entries]


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_are_georeferenced_and_consistent(
    tmp_path: Path, run_cli, card, name: str, scene_path
) -> None:
    scene = scene_path(name)
    gpkg, tif = tmp_path / f"{name}.gpkg", tmp_path / f"{name}.tif"
    result = run_cli("classify", scene, "--out", gpkg, "--out", tif, "--probabilities")
    assert result.exit_code == 0, result.output
    frame = gpd.read_file(gpkg)
    with rasterio.open(scene) as src, rasterio.open(tif) as out:
        assert out.crs == src.crs and frame.crs == src.crs
        classes, probs = out.read(1), out.read(list(range(2, 2 + card.num_classes)))
        # One pixel per patch: the scene's grid at the reading resolution, scaled by the stride.
        res = out.transform.a / card.patch_size
        assert out.transform.c == pytest.approx(src.transform.c)
        assert out.transform.f == pytest.approx(src.transform.f)
        if name == "naip_rgbn":  # 5 m, 2.5x coarser than the model: read at its 2 m
            assert res == pytest.approx(card.gsd)
        elif "cog" not in name:  # native resolution: exactly the scene transform scaled
            assert out.transform.almost_equals(src.transform @ Affine.scale(card.patch_size))
        assert res > 0
        assert out.nodata == 255
    valid = classes != 255
    assert len(frame) == int(valid.sum()) > 0
    assert set(frame["class_name"]) <= set(legend_names(card))
    p_cols = [f"p_{n}" for n in card.class_names]
    np.testing.assert_allclose(frame[p_cols].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-4)
    assert (frame["valid_fraction"] >= 0.5).all()
    assert list(frame.columns[:8]) == [
        *("row", "col", "class_id", "class_name", "level", "leaf_name", "parent_name", "score")
    ]
    assert set(frame["level"]) <= {"leaf", "parent", "uncertain"}
    named = frame["level"] == "leaf"
    assert (frame["class_name"][named] == frame["leaf_name"][named]).all()
    by_family = frame["level"] == "parent"
    assert (frame["class_name"][by_family] == frame["parent_name"][by_family]).all()
    assert set(frame["class_name"][by_family]) <= set(card.parent_names)
    # The raster and the polygons agree patch by patch.
    raster_ids = np.where(frame["class_id"] == -1, 254, frame["class_id"])  # Uncertain
    np.testing.assert_array_equal(classes[frame["row"], frame["col"]], raster_ids)
    with sqlite3.connect(gpkg) as db:
        styles = db.execute(
            "SELECT f_table_name, useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
    assert styles and styles[0][:2] == (name, 1)
    assert styles[0][2].count("<category ") == len(legend_names(card))
    assert gpkg.with_suffix(".qml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [gpkg.name, tif.name, f"{name}.qml", f"{tif.name}.aux.xml", f"{name}.areas.csv"]
    )
    category_names = ET.parse(f"{tif}.aux.xml").getroot().iterfind(".//Category")
    assert [c.text for c in category_names][: card.num_classes] == card.class_names


def test_polygons_tile_the_classified_area(tmp_path: Path, run_cli, scene_path) -> None:
    gpkg = tmp_path / "tiles.gpkg"
    assert (
        run_cli("classify", scene_path("naip_rgbn"), "--out", gpkg, "--bands", "1,2,3").exit_code
        == 0
    )
    frame = gpd.read_file(gpkg)
    union = shapely.union_all(frame.geometry.values)
    assert union.area == pytest.approx(frame.geometry.area.sum(), rel=1e-9)  # no overlaps
    assert union.area == pytest.approx(len(frame) * frame.geometry.area.iloc[0], rel=1e-9)
    assert union.geom_type == "Polygon"  # one connected block: no gaps on a full scene


def test_one_and_two_workers_give_identical_outputs(tmp_path: Path, run_cli, scene_path) -> None:
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.tif"
        args = (
            "classify",
            scene_path("striped_nodata"),
            "--out",
            out,
            "--workers",
            workers,
            "--stride",
            50,
        )
        assert run_cli(*args).exit_code == 0
        with rasterio.open(out) as src:
            outs.append(src.read())
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.fixture
def no_crs(tmp_path: Path) -> Path:
    pixels = np.zeros((3, 64, 64), np.uint8)
    return write_raster(tmp_path / "nocrs.tif", pixels, None, from_origin(0, 64, 1, 1))


def test_bad_input(tmp_path: Path, run_cli, no_crs: Path, scene_path, scenes_dir: Path) -> None:
    out = tmp_path / "out.gpkg"
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene_path("jpeg_cog_3857").read_bytes()[:5000])
    cases = [
        ((text, "--out", out), ("notes.tif", "not a readable raster")),
        ((empty, "--out", out), ("empty.tif",)),
        ((truncated, "--out", out), ("truncated.tif",)),
        ((no_crs, "--out", out), ("no CRS", "gdal_edit")),
        ((scenes_dir / "rasterio" / "shade.tif", "--out", out), ("1 band(s)", "--bands")),
        (
            (scene_path("naip_rgbn"), "--out", out, "--bands", "1,2,9"),
            ("band 9 does not exist", "--bands"),
        ),
        ((scene_path("naip_rgbn"), "--out", out, "--bands", "1,2"), ("needs 3 bands",)),
        (
            (scene_path("naip_rgbn"), "--out", tmp_path / "missing" / "o.gpkg"),
            ("does not exist", "create it"),
        ),
        ((scene_path("naip_rgbn"), "--out", out, "--model", text), ("notes.tif",)),
        ((scene_path("naip_rgbn"), "--out", tmp_path / "o.shp"), (".gpkg or .tif",)),
    ]
    for args, needles in cases:
        assert_one_line_error(run_cli("classify", *args), *needles)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.tif", "empty.tif", "truncated.tif", "nocrs.tif"]
    )


def test_existing_output_needs_overwrite(tmp_path: Path, run_cli, scene_path) -> None:
    out = tmp_path / "o.tif"
    out.write_text("keep me")
    assert_one_line_error(
        run_cli("classify", scene_path("striped_nodata"), "--out", out), "--overwrite"
    )
    assert out.read_text() == "keep me"
    assert (
        run_cli("classify", scene_path("striped_nodata"), "--out", out, "--overwrite").exit_code
        == 0
    )
    with rasterio.open(out) as src:
        assert src.count == 1


@pytest.mark.slow
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, scene_path
) -> None:
    import rsscgeo.scene.tasks as engine

    # 6x6-patch chunks: 3x3 chunks
    scene, args = (
        scene_path("striped_nodata"),
        ("--stride", "50", "--workers", "1", "--chunk-size", "300"),
    )
    original, calls = engine.ChunkWork.__call__, []

    def counted(self, chunk, loaded):
        calls.append(chunk.index)
        return original(self, chunk, loaded)

    monkeypatch.setattr(engine.ChunkWork, "__call__", counted)
    ref_tif, ref_gpkg = tmp_path / "ref.tif", tmp_path / "ref.gpkg"
    assert run_cli("classify", scene, "--out", ref_tif, "--out", ref_gpkg, *args).exit_code == 0
    total = len(calls)
    assert total == 9
    calls.clear()

    def dies_after_two_chunks(self, chunk, loaded):
        calls.append(chunk.index)
        if len(calls) > 2:
            raise RuntimeError("power loss")
        return original(self, chunk, loaded)

    monkeypatch.setattr(engine.ChunkWork, "__call__", dies_after_two_chunks)
    tif, gpkg = tmp_path / "run.tif", tmp_path / "run.gpkg"
    assert run_cli("classify", scene, "--out", tif, "--out", gpkg, *args).exit_code != 0
    assert not tif.exists() and not gpkg.exists()
    journal = tmp_path / ".run.gpkg.journal"  # beside the first output
    finished = {int(p.name.split("-")[1]) for p in journal.glob("chunk-*.npz")}
    assert finished == set(calls[:2])  # the two chunks that ran before the failure

    calls.clear()
    monkeypatch.setattr(engine.ChunkWork, "__call__", counted)
    result = run_cli("classify", scene, "--out", tif, "--out", gpkg, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert sorted(calls) == sorted(set(range(total)) - finished)  # only unfinished chunks ran
    with rasterio.open(ref_tif) as a, rasterio.open(tif) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform
    expected, actual = gpd.read_file(ref_gpkg, layer="ref"), gpd.read_file(gpkg, layer="run")
    assert expected.drop(columns="geometry").equals(actual.drop(columns="geometry"))
    assert expected.geometry.geom_equals(actual.geometry).all()
    assert not journal.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ref.areas.csv",
        "ref.gpkg",
        "ref.qml",
        "ref.tif",
        "ref.tif.aux.xml",
        "run.areas.csv",
        "run.gpkg",
        "run.qml",
        "run.tif",
        "run.tif.aux.xml",
    ]


def test_resume_refuses_a_journal_of_another_job(
    tmp_path: Path, run_cli, monkeypatch, scene_path
) -> None:
    import rsscgeo.scene.tasks as engine

    original = engine.ChunkWork.__call__

    def fails(self, chunk, loaded):
        raise RuntimeError("x")

    monkeypatch.setattr(engine.ChunkWork, "__call__", fails)
    out = tmp_path / "o.tif"
    assert (
        run_cli(
            "classify",
            scene_path("striped_nodata"),
            "--out",
            out,
            "--stride",
            "50",
            "--chunk-size",
            "300",
        ).exit_code
        != 0
    )
    monkeypatch.setattr(engine.ChunkWork, "__call__", original)
    result = run_cli(
        "classify",
        scene_path("striped_nodata"),
        "--out",
        out,
        "--stride",
        "75",
        "--resume",
        "--chunk-size",
        "300",
    )
    assert_one_line_error(result, "other options", "--overwrite to start over")


def test_patch_dataset_is_lazy_and_matches_the_geotiff(tmp_path: Path, run_cli, scene_path) -> None:
    import rsscgeo

    scene = scene_path("striped_nodata")
    options = rsscgeo.ClassifyOptions(stride=75, chunk_size=300)  # 4x4 patches a chunk
    data = rsscgeo.patch_dataset([scene], load_model(BUNDLED_MODEL), options)
    assert data.probability.chunks is not None  # dask-backed until computed
    assert data.sizes["class"] == load_model(BUNDLED_MODEL).card.num_classes and data.attrs["crs"]
    out = tmp_path / "o.tif"
    assert run_cli("classify", scene, "--out", out, "--stride", "75").exit_code == 0
    with rasterio.open(out) as src:
        classes, transform = src.read(1), src.transform
    computed = data.compute()
    np.testing.assert_array_equal(computed.map_value, classes)
    expected = np.where(computed.class_id < 0, 255, computed.class_id)
    leaves = computed.map_value < load_model(BUNDLED_MODEL).card.num_classes
    np.testing.assert_array_equal(expected[leaves], classes[leaves])  # class_id: the top class
    assert (computed.uncertain == (classes == 254)).all()
    assert tuple(transform.to_gdal()) == pytest.approx(computed.attrs["transform"])
    done = computed.class_id >= 0
    np.testing.assert_allclose(
        computed.probability.where(done).sum("class").values[done.values], 1, atol=1e-4
    )
    # Coordinates are patch centres: the first one is half a patch inside the scene's corner.
    with rasterio.open(scene) as src:
        assert computed.x.values[0] == pytest.approx(src.transform.c + 75 * src.transform.a)


def test_device_without_gpu_is_a_clear_error(tmp_path: Path, run_cli, scene_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli(
        "classify", scene_path("striped_nodata"), "--out", tmp_path / "o.tif", "--device", "cuda"
    )
    assert_one_line_error(result, "no CUDA GPU", "--device cpu")


def _write_part(src: rasterio.DatasetReader, path: Path, window, crs: str | None = None) -> Path:
    """Write a window of ``src`` to ``path``, warped to ``crs`` when given."""
    from rasterio.vrt import WarpedVRT

    profile = src.profile | {
        "width": int(window.width),
        "height": int(window.height),
        "transform": src.window_transform(window),
        "driver": "GTiff",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(src.read(window=window))
    if crs is not None:
        with rasterio.open(path) as part, WarpedVRT(part, crs=crs) as vrt:
            warped = vrt.read()
            profile = part.profile | {
                "crs": crs,
                "transform": vrt.transform,
                "width": vrt.width,
                "height": vrt.height,
            }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(warped)
    return path


def test_mosaic_of_files_in_two_crs(tmp_path: Path, run_cli, scene_path) -> None:
    from rasterio.windows import Window

    with rasterio.open(scene_path("naip_rgbn")) as src:
        left = _write_part(src, tmp_path / "left.tif", Window(0, 0, 480, src.height))
        right = _write_part(
            src, tmp_path / "right.tif", Window(450, 0, src.width - 450, src.height), "EPSG:3857"
        )
        scene_crs = src.crs
    out = tmp_path / "mosaic.gpkg"
    result = run_cli("classify", left, right, "--out", out, "--bands", "1,2,3")
    assert result.exit_code == 0, result.output
    assert "right.tif is in another CRS and is reprojected" in result.output
    frame = gpd.read_file(out, layer="mosaic")
    assert frame.crs == scene_crs
    assert frame["col"].max() >= 5  # patches beyond the left file's 480 px come from the right one


def test_files_that_do_not_overlap_and_tiny_scenes(tmp_path: Path, run_cli, scene_path) -> None:
    from rasterio.windows import Window

    with rasterio.open(scene_path("naip_rgbn")) as src:
        a = _write_part(src, tmp_path / "a.tif", Window(0, 0, 200, 200))
        b = _write_part(src, tmp_path / "b.tif", Window(600, 400, 200, 200))
        tiny = _write_part(src, tmp_path / "tiny.tif", Window(300, 300, 40, 40))
    out = tmp_path / "o.gpkg"
    assert_one_line_error(run_cli("classify", a, b, "--out", out), "a.tif", "does not overlap")
    assert not out.exists()
    result = run_cli("classify", tiny, "--out", out)
    assert result.exit_code == 0 and "smaller than one patch" in result.output
    result = run_cli("classify", tiny, "--out", out, "--overwrite", "--min-valid", "0.05")
    assert result.exit_code == 0
    assert len(gpd.read_file(out, layer="o")) == 1  # one padded patch covers the whole scene


class _SeesLayoutAndTexture(torch.nn.Module):
    """A fixed random model whose answer depends on a patch's content, not just its colour:
    each band's mean over a 4x4 grid of blocks (where things are) and the mean absolute
    response of eight random 3x3 filters (texture), mixed by a random linear layer. Two
    patches of a real scene get different probabilities; a wrong pixel moves them."""

    def __init__(self, classes: int = 30) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.filters = torch.nn.Conv2d(3, 8, 3, bias=False)
        self.head = torch.nn.Linear(3 * 16 + 8, classes)
        with torch.no_grad():
            self.filters.weight.copy_(torch.randn(8, 3, 3, 3, generator=generator))
            weight = torch.randn(classes, 3 * 16 + 8, generator=generator)
            self.head.weight.copy_(weight / 4)  # spread answers, not near one-hot ones
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        texture = self.filters(x).abs().mean(dim=(2, 3))
        return self.head(torch.cat([layout, texture], dim=1))


@pytest.mark.slow
def test_parallel_reads_are_thread_safe(tmp_path: Path, scene_path) -> None:
    """Many concurrent chunk reads of a deflate-tiled real scene give the probabilities of
    one worker (a shared GDAL handle once gave decode errors and wrong pixels here).

    The model sees layout and texture and the scene has real structure, so every patch
    has its own answer: a wrong or shifted pixel block in any chunk would show.
    """
    from rasterio.enums import Resampling

    from rsscgeo import ClassifyOptions, ClassifyOutputs, classify_scene, open_engine
    from rsscgeo.modelfile import LoadedModel

    with rasterio.open(scene_path("naip_rgbn")) as src:  # 934 x 723 px at 5 m
        pixels = src.read([1, 2, 3], out_shape=(3, 1024, 1024), resampling=Resampling.bilinear)
        crs, left, top = src.crs, src.bounds.left, src.bounds.top
    scene = write_raster(
        tmp_path / "scene.tif",
        pixels,
        crs,
        from_origin(left, top, 2.0, 2.0),  # the model's 2 m: read natively, no resampling
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    card = load_model(BUNDLED_MODEL).card
    loaded = LoadedModel(_SeesLayoutAndTexture(card.num_classes).eval(), card)
    # 13 x 13 patches in 49 chunks of 2 x 2; each chunk reads 225 px, across tile edges.
    options = ClassifyOptions(stride=75, chunk_size=150, probabilities=True)
    p_columns = [f"p_{name}" for name in card.class_names]
    runs = []
    for workers in (1, 2, 2):
        folder = tmp_path / f"run{len(runs)}_{workers}_workers"
        folder.mkdir()
        outputs = ClassifyOutputs(gpkg=folder / "p.gpkg", geotiff=folder / "p.tif")
        with open_engine(workers=workers) as engine:
            classify_scene([scene], loaded, options, outputs, engine, progress=False)
        with rasterio.open(outputs.geotiff) as src:
            raster = src.read()
        table = gpd.read_file(outputs.gpkg, layer="p").sort_values(["row", "col"])
        runs.append((raster, table[p_columns].to_numpy()))
    raster, table = runs[0]
    assert raster.shape == (1 + card.num_classes, 13, 13) and table.shape == (169, card.num_classes)
    # Every patch has its own answer, far from every other patch's (1000x the tolerance
    # below): equal outputs cannot hide pixels read from the wrong place.
    apart = np.abs(table[:, None] - table[None]).max(axis=2) + np.eye(len(table))
    assert apart.min() > 1e-3, np.unravel_index(apart.argmin(), apart.shape)
    assert len(np.unique(table.argmax(axis=1))) >= 5  # most probable classes
    for other_raster, other_table in runs[1:]:
        # 1e-6: one worker's torch uses two intra-op threads, two workers one each.
        np.testing.assert_allclose(other_raster, raster, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other_table, table, rtol=0, atol=1e-6)


def test_tta_reaches_the_outputs_and_the_resume_fingerprint(
    tmp_path: Path, run_cli, card, monkeypatch: pytest.MonkeyPatch, scene_path
) -> None:
    from rasterio.windows import Window

    import rsscgeo
    import rsscgeo.scene.tasks as engine

    with rasterio.open(scene_path("naip_rgbn")) as src:  # six patches
        scene = _write_part(src, tmp_path / "part.tif", Window(150, 150, 450, 300))
    gpkg = tmp_path / "tta.gpkg"
    # At native 5 m: six patches (read at the model's 2 m it would be 40).
    result = run_cli("classify", scene, "--out", gpkg, "--bands", "1,2,3", "--gsd", "5", "--tta")
    assert result.exit_code == 0, result.output
    assert "test-time augmentation" in result.output
    frame = gpd.read_file(gpkg, layer="tta")
    loaded = load_model(BUNDLED_MODEL)
    options = rsscgeo.ClassifyOptions(bands=(1, 2, 3), gsd=5.0)
    with_tta = rsscgeo.patch_dataset([scene], loaded, replace(options, tta=True))
    plain = rsscgeo.patch_dataset([scene], loaded, options)
    at = (frame["row"].to_numpy(), frame["col"].to_numpy())
    expected = with_tta.probability.values[at]
    assert len(frame) == 6
    np.testing.assert_allclose(frame[[f"p_{n}" for n in card.class_names]], expected, atol=1e-6)
    assert np.abs(expected - plain.probability.values[at]).max() > 1e-3

    # A journal of a run without TTA is not resumed with --tta.
    def fails(self, chunk, loaded):
        raise RuntimeError("power loss")

    out = tmp_path / "o.gpkg"
    monkeypatch.setattr(engine.ChunkWork, "__call__", fails)
    assert run_cli("classify", scene, "--out", out, "--bands", "1,2,3").exit_code != 0
    monkeypatch.undo()
    result = run_cli("classify", scene, "--out", out, "--bands", "1,2,3", "--tta", "--resume")
    assert_one_line_error(result, "other options", "--overwrite to start over")


def special_names(names: list[str]) -> list[str]:
    """Class names with every character XML and HTML escape: < & " ' >."""
    return [f'<{name}> & "{name}\'s" >' for name in names]


def write_special_names_model(folder: Path) -> Path:
    """The flat model with its classes renamed by ``special_names`` (no families)."""
    from rsscgeo.modelfile import save_model

    loaded = load_model(FLAT_MODEL)
    renamed = [
        c.model_copy(update={"name": n})
        for c, n in zip(loaded.card.classes, special_names(loaded.card.class_names), strict=True)
    ]
    card = loaded.card.model_copy(update={"classes": renamed})
    return save_model(folder / "special.safetensors", loaded.model, card, half=True)


def naip_part(source: Path, folder: Path) -> Path:
    """Six patches of the NAIP scene at its native 5 m (bands 1-3)."""
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        return _write_part(src, folder / "part.tif", Window(150, 150, 450, 300))


def test_class_names_with_xml_characters_round_trip(tmp_path: Path, run_cli, scene_path) -> None:
    model = write_special_names_model(tmp_path)
    names = load_model(model).card.class_names
    assert all(c in names[0] for c in "<&\"'>")
    scene = naip_part(scene_path("naip_rgbn"), tmp_path)
    gpkg, tif = tmp_path / "labels.gpkg", tmp_path / "labels.tif"
    args = ("--bands", "1,2,3", "--gsd", "5", "--uncertain-below", "0", "--probabilities")
    result = run_cli("classify", scene, "--model", model, "--out", gpkg, "--out", tif, *args)
    assert result.exit_code == 0, result.output

    def categories(qml: str) -> list[tuple[str | None, str | None]]:
        root = ET.fromstring(qml)  # raises on invalid XML
        renderer = root.find("renderer-v2")
        assert renderer is not None and renderer.get("type") == "categorizedSymbol"
        assert renderer.get("attr") == "class_name"
        return [(c.get("value"), c.get("label")) for c in renderer.iterfind("categories/category")]

    assert categories(gpkg.with_suffix(".qml").read_text()) == [(n, n) for n in names]
    with sqlite3.connect(gpkg) as db:
        [(qml, sld)] = db.execute("SELECT styleQML, styleSLD FROM layer_styles").fetchall()
    assert categories(qml) == [(n, n) for n in names]
    if sld:  # none is written today; if one is, it must be valid and name the classes
        texts = {e.text for e in ET.fromstring(sld).iter()}
        assert set(names) <= texts
    aux = ET.parse(f"{tif}.aux.xml").getroot()
    assert [c.text for c in aux.iterfind(".//Category")][: len(names)] == names
    with rasterio.open(tif) as src:
        assert list(src.descriptions[1:]) == [f"p_{n}" for n in names]
    frame = gpd.read_file(gpkg, layer="labels")
    assert len(frame) == 6 and set(frame["class_name"]) <= set(names)
    p_columns = [f"p_{n}" for n in names]
    assert set(p_columns) <= set(frame.columns)
    np.testing.assert_allclose(frame[p_columns].sum(axis=1), 1, atol=1e-4)
    best = frame[p_columns].to_numpy().argmax(axis=1)
    assert list(frame["class_name"]) == [names[i] for i in best]
