"""An independent oracle for `classify`: plain rasterio, the card's transform, the network.

For sampled patches of real scenes, the calibrated probabilities in the GeoPackage
(`p_<class>`) must equal what this file computes on its own: the pixels under the
patch's polygon read with plain rasterio at the grid's resolution (bilinear, as the
reading grid asks), scaled (/255 for 8-bit, the 2-98th percentile stretch for 16-bit),
normalised with ``card_transform(card)``, run through ``loaded.model`` and turned into
``softmax(logits / card.temperature)``. Nothing here calls rsscgeo's reader, cutter or
preprocessing.

Tolerance: 1e-4 on every probability. The two paths read the same pixels with the same
GDAL calls and differ only in float32 arithmetic (scaling before or after the resize,
channels-last convolutions, batch size): measured at most 5e-6. A wrong band order, a
window half a patch off or a missing scaling moves this calibrated model (temperature
0.43, so logit differences are doubled) by 5e-4 to 0.99 per patch (medians 0.23 to
0.89), which the second test proves. A looser oracle would not do: a direct bilinear
warp of the reprojected file onto another grid changes pixels by about 1 DN on average
and the probabilities by up to 0.3, as much as swapping two bands does for some
patches; so the oracle warps each file of a mosaic (bilinear) onto the reading grid
itself, as a mosaic must be read for its patches not to depend on the chunk they fall
in (the last test). Patches are sampled inside valid data (see ``sample``): at a nodata
edge the two paths' masks and nodata-aware resampling may differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from rsscgeo import ClassifyOptions, ClassifyOutputs, classify_scene, open_engine, plan_scene
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, load_model
from rsscgeo.predict import card_transform

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

TOLERANCE = 1e-4
SAMPLES = 12
SEED = 0
NAIP = ("opengeos", "naip_m_4709963_se_14_1_20200831.tif")


@dataclass(frozen=True)
class Case:
    """A classify job: its files (one mosaic) and options with a known reading grid."""

    files: list[Path]
    options: ClassifyOptions


def single_uint8(scenes: Path, folder: Path) -> Case:
    """Landsat 7, 3 bands uint8, nodata 0 around the scene, 300.04 x 300.04 m pixels."""
    # gsd 300: square pixels a little finer than the file's, so GDAL resamples.
    return Case([scenes / "rasterio" / "RGB.byte.tif"], ClassifyOptions(gsd=300.0, stride=75))


def mosaic_two_crs(scenes: Path, folder: Path) -> Case:
    """NAIP bands 1-3 cut into two halves overlapping by 30 px, the right one in EPSG:3857.

    Read at its native 5 m, one patch per chunk (see the chunking test below for why).
    """
    with rasterio.open(scenes.joinpath(*NAIP)) as src:
        profile = src.profile | {"driver": "GTiff", "count": 3, "tiled": False}
        for key in ("blockxsize", "blockysize", "compress", "photometric", "interleave"):
            profile.pop(key, None)
        left_window = Window(0, 0, 480, src.height)
        left = folder / "left_26914.tif"
        with rasterio.open(
            left,
            "w",
            **profile | {"width": 480, "transform": src.window_transform(left_window)},
        ) as dst:
            dst.write(src.read([1, 2, 3], window=left_window))
        right_window = Window(450, 0, src.width - 450, src.height)
        bounds = rasterio.windows.bounds(right_window, src.transform)
        crs = "EPSG:3857"
        transform, width, height = calculate_default_transform(
            src.crs, crs, int(right_window.width), src.height, *bounds
        )
        warped = np.zeros((3, height, width), np.uint8)
        reproject(
            src.read([1, 2, 3], window=right_window),
            warped,
            src_transform=src.window_transform(right_window),
            src_crs=src.crs,
            src_nodata=0,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=0,
            resampling=Resampling.bilinear,
        )
        right = folder / "right_3857.tif"
        profile |= {"crs": crs, "transform": transform, "width": width, "height": height}
        with rasterio.open(right, "w", **profile) as dst:
            dst.write(warped)
    return Case([left, right], ClassifyOptions(gsd=5.0, stride=75, chunk_size=75))


def single_uint16(scenes: Path, folder: Path) -> Case:
    """Landsat 8 true colour, 3 bands uint16 with nodata 0, 150.02 m pixels."""
    scene = scenes / "landsat8" / "LC81070352015122LGN00_RGB_B4B3B2_cog.tif"
    return Case([scene], ClassifyOptions(gsd=150.0, stride=100))


CASES: dict[str, Callable[[Path, Path], Case]] = {
    "rgb_byte_uint8": single_uint8,
    "naip_mosaic_26914_3857": mosaic_two_crs,
    "landsat8_uint16_stretched": single_uint16,
}


@dataclass
class Classified:
    """A finished run and what the oracle needs to check it."""

    case: Case
    frame: gpd.GeoDataFrame  # the GeoPackage layer
    resolution: float  # of the reading grid
    patch: int  # pixels per patch side
    low: np.ndarray  # per-band scaling: (raw - low) / (high - low)
    high: np.ndarray
    dtype: str


@pytest.fixture(scope="module")
def bundled() -> LoadedModel:
    return load_model(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def classified(
    tmp_path_factory: pytest.TempPathFactory, scenes_dir: Path, bundled: LoadedModel
) -> Callable[[str], Classified]:
    """Classify a case once per module (cached by name) to a GeoPackage."""
    runs: dict[str, Classified] = {}

    def run(name: str) -> Classified:
        if name not in runs:
            folder = tmp_path_factory.mktemp(name)
            case = CASES[name](scenes_dir, folder)
            # The reading grid: square pixels of the chosen gsd, patches of the card's size.
            resolution, patch = case.options.gsd, bundled.card.patch_size
            grid = plan_scene(case.files, bundled, case.options).grid
            assert grid.transform.a == -grid.transform.e == resolution and grid.patch == patch
            gpkg = folder / f"{name}.gpkg"
            outputs = ClassifyOutputs(gpkg=gpkg)
            with open_engine(workers=2) as engine:
                classify_scene(case.files, bundled, case.options, outputs, engine, progress=False)
            frame = gpd.read_file(gpkg, layer=name)
            # Each polygon is its patch: patch x patch pixels of the grid.
            widths = frame.bounds["maxx"] - frame.bounds["minx"]
            heights = frame.bounds["maxy"] - frame.bounds["miny"]
            np.testing.assert_allclose(widths, patch * resolution, rtol=1e-9)
            np.testing.assert_allclose(heights, patch * resolution, rtol=1e-9)
            low, high, dtype = oracle_scaling(case, bundled)
            runs[name] = Classified(case, frame, resolution, patch, low, high, dtype)
        return runs[name]

    return run


def oracle_scaling(case: Case, loaded: LoadedModel) -> tuple[np.ndarray, np.ndarray, str]:
    """(low, high, dtype): /255 for 8-bit; else each band's 2nd-98th percentile of the
    valid pixels of the whole scene read decimated to at most 1024 px a side (bilinear),
    computed here and checked against the plan's."""
    with rasterio.open(case.files[0]) as src:
        dtype, bands = src.dtypes[0], src.count
    if dtype == "uint8":
        assert loaded.card.input_scale == 255
        return np.zeros(3), np.full(3, 255.0), dtype
    assert len(case.files) == 1, "the 16-bit case is one file"
    plan = plan_scene(case.files, loaded, case.options)
    resolution = case.options.gsd
    with rasterio.open(case.files[0]) as src:
        factor = math.ceil(max(src.width, src.height) * max(src.res) / resolution / 1024)
        shape = (
            bands,
            round((src.bounds.top - src.bounds.bottom) / (resolution * factor)),
            round((src.bounds.right - src.bounds.left) / (resolution * factor)),
        )
        values = src.read(out_shape=shape, resampling=Resampling.bilinear).astype(np.float32)
        valid = (src.read_masks(out_shape=shape) > 0).all(axis=0)
    low, high = np.percentile(values[:, valid], [2, 98], axis=1)
    np.testing.assert_allclose(low, plan.scaling.low, rtol=1e-6)
    np.testing.assert_allclose(high, plan.scaling.high, rtol=1e-6)
    assert (high - low > 1000).all()  # a real stretch of 12-bit data, not a degenerate one
    return low, high, dtype


@contextmanager
def opened(case: Case) -> Iterator[list]:
    """The files as plain rasterio datasets; those of a mosaic warped onto the grid.

    A single file is read as it is. Each file of a mosaic is warped (bilinear) onto the
    reading grid itself, in the first file's CRS: pixels of ``gsd`` from the mosaic's
    top-left corner, which is how a mosaic should read whatever the chunking.
    """
    with ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(path)) for path in case.files]
        if len(sources) == 1:
            yield sources
            return
        crs, res = sources[0].crs, case.options.gsd
        assert res is not None
        corners = [transform_bounds(src.crs, crs, *src.bounds) for src in sources]
        left0, top0 = min(c[0] for c in corners), max(c[3] for c in corners)
        warped = []
        for src, (left, bottom, right, top) in zip(sources, corners, strict=True):
            west = left0 + math.floor((left - left0) / res) * res
            north = top0 - math.floor((top0 - top) / res) * res
            width, height = math.ceil((right - west) / res), math.ceil((north - bottom) / res)
            transform = rasterio.Affine(res, 0, west, 0, -res, north)
            vrt = WarpedVRT(
                src, crs=crs, transform=transform, width=width, height=height,
                resampling=Resampling.bilinear,
            )  # fmt: skip
            warped.append(stack.enter_context(vrt))
        yield warped


def read_patch(
    sources: list, bounds: tuple[float, ...], resolution: float, size: int, bands: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(bands x size x size float32 values, size x size validity) under ``bounds``.

    Each file fills the part of the patch it covers (whole pixels of the grid), read with
    bilinear resampling, except where an earlier file holds valid data.
    """
    left, _, _, top = bounds
    values = np.zeros((len(bands), size, size), np.float32)
    valid = np.zeros((size, size), bool)
    for src in sources:
        inner = src.bounds
        c0 = max(0, round((inner.left - left) / resolution))
        c1 = min(size, round((inner.right - left) / resolution))
        r0 = max(0, round((top - inner.top) / resolution))
        r1 = min(size, round((top - inner.bottom) / resolution))
        if c0 >= c1 or r0 >= r1:
            continue
        window = from_bounds(
            left + c0 * resolution,
            top - r1 * resolution,
            left + c1 * resolution,
            top - r0 * resolution,
            src.transform,
        )
        shape = (len(bands), r1 - r0, c1 - c0)
        part = src.read(bands, window=window, out_shape=shape, resampling=Resampling.bilinear)
        mask = (src.read_masks(bands, window=window, out_shape=shape) > 0).all(axis=0)
        held = valid[r0:r1, c0:c1]  # a view: where an earlier file holds valid data
        values[:, r0:r1, c0:c1][:, ~held] = part[:, ~held]
        held |= mask
    return values, valid


@torch.inference_mode()
def oracle_probabilities(loaded: LoadedModel, patches: list[np.ndarray]) -> np.ndarray:
    """Calibrated probabilities of patches already scaled to 0..1 (N x classes)."""
    transform = card_transform(loaded.card)
    batch = torch.stack([transform(torch.from_numpy(p.astype(np.float32))) for p in patches])
    logits = loaded.model(batch)
    return torch.softmax(logits.float() / loaded.card.temperature, dim=1).numpy()


def scaled(values: np.ndarray, run: Classified) -> np.ndarray:
    low, high = run.low[:, None, None], run.high[:, None, None]
    return np.clip((values - low) / (high - low), 0, 1)


def sample(run: Classified, sources: list) -> gpd.GeoDataFrame:
    """Up to SAMPLES patches, seeded, inside valid data, spread evenly over the groups
    of files they are read from.

    Inside valid data: classify counted every pixel valid (``valid_fraction`` 1) and the
    files' own masks agree but for at most 1 pixel in 1000. Such isolated nodata pixels
    (RGB.byte.tif has some) are filled from their neighbours by GDAL's nodata-aware
    bilinear read in both paths; a nodata edge, such as the border of a reprojected file,
    is more, and there the two paths' masks need not agree.
    """
    full = run.frame[run.frame["valid_fraction"] == 1].sort_values(["row", "col"])
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, feature in full.iterrows():
        bounds = feature.geometry.bounds
        _, valid = read_patch(sources, bounds, run.resolution, run.patch, [1, 2, 3])
        if valid.mean() >= 0.999:
            touched = tuple(i for i, s in enumerate(sources) if overlaps(s.bounds, bounds))
            groups.setdefault(touched, []).append(index)
    rng = np.random.default_rng(SEED)
    chosen: list[int] = []
    for touched in sorted(groups):
        take = min(len(groups[touched]), SAMPLES // len(groups))
        chosen += list(rng.choice(groups[touched], take, replace=False))
    assert len(chosen) >= SAMPLES - len(groups), groups
    return full.loc[sorted(chosen)]


def overlaps(a: rasterio.coords.BoundingBox, bounds: tuple[float, ...]) -> bool:
    left, bottom, right, top = bounds
    return a.left < right and a.right > left and a.bottom < top and a.top > bottom


def disagreement(
    run: Classified, loaded: LoadedModel, chosen: gpd.GeoDataFrame, sources: list, **mistake
) -> np.ndarray:
    """Per patch: the largest |oracle - GeoPackage| probability, the oracle making
    ``mistake``: ``bands`` (read order), ``shift`` (of the window, in patches, towards
    the grid's centre) or ``raw`` (skip the scaling)."""
    bands = mistake.get("bands", [1, 2, 3])
    patches = []
    minx, _, maxx, _ = run.frame.total_bounds
    centre = (minx + maxx) / 2
    for _, feature in chosen.iterrows():
        left, bottom, right, top = feature.geometry.bounds
        dx = mistake.get("shift", 0) * (right - left) * (1 if left < centre else -1)
        bounds = (left + dx, bottom, right + dx, top)
        values, _ = read_patch(sources, bounds, run.resolution, run.patch, bands)
        if not mistake.get("raw"):
            values = scaled(values, run)
        elif run.dtype != "uint8":
            values = values / np.iinfo(run.dtype).max  # "scaled" to the type's range
        patches.append(values)
    expected = chosen[[f"p_{name}" for name in loaded.card.class_names]].to_numpy(np.float64)
    return np.abs(oracle_probabilities(loaded, patches) - expected).max(axis=1)


@pytest.mark.parametrize("name", list(CASES))
def test_geopackage_probabilities_match_the_oracle(
    classified: Callable[[str], Classified], bundled: LoadedModel, name: str
) -> None:
    run = classified(name)
    with opened(run.case) as sources:
        chosen = sample(run, sources)
        if len(sources) > 1:  # both files, and the overlap, are checked
            groups = {
                tuple(overlaps(s.bounds, f.geometry.bounds) for s in sources)
                for _, f in chosen.iterrows()
            }
            assert {(True, False), (False, True), (True, True)} <= groups
        diff = disagreement(run, bundled, chosen, sources)
    at = list(zip(chosen["row"], chosen["col"], strict=True))
    assert diff.max() < TOLERANCE, dict(zip(at, diff, strict=True))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "mistake",
    [{"bands": [2, 1, 3]}, {"shift": 0.5}, {"raw": True}],
    ids=["swapped_bands", "window_half_a_patch_off", "no_scaling"],
)
def test_the_oracle_rejects_a_wrong_reading(
    classified: Callable[[str], Classified], bundled: LoadedModel, name: str, mistake: dict
) -> None:
    """The tolerance is tight enough: each classic mistake disagrees far beyond it."""
    run = classified(name)
    with opened(run.case) as sources:
        diff = disagreement(run, bundled, sample(run, sources), sources, **mistake)
    assert (diff > TOLERANCE).mean() >= 0.75, diff
    assert diff.max() > 100 * TOLERANCE, diff


def test_mosaic_probabilities_do_not_depend_on_chunking(
    classified: Callable[[str], Classified], bundled: LoadedModel, tmp_path: Path
) -> None:
    one_patch_chunks = classified("naip_mosaic_26914_3857")
    case = one_patch_chunks.case
    gpkg = tmp_path / "default_chunks.gpkg"
    options = ClassifyOptions(gsd=case.options.gsd, stride=case.options.stride)
    with open_engine(workers=2) as engine:
        classify_scene(
            case.files, bundled, options, ClassifyOutputs(gpkg=gpkg), engine, progress=False
        )
    default = gpd.read_file(gpkg, layer="default_chunks")
    p_columns = [f"p_{name}" for name in bundled.card.class_names]
    a = one_patch_chunks.frame.set_index(["row", "col"]).sort_index()
    b = default.set_index(["row", "col"]).sort_index()
    assert list(a.index) == list(b.index)
    diff = np.abs(a[p_columns].to_numpy() - b[p_columns].to_numpy()).max(axis=1)
    bad = diff >= TOLERANCE
    assert not bad.any(), dict(zip(a.index[bad], diff[bad], strict=True))
