"""Property tests of the patch grid: coverage, pixel alignment and georeferencing."""

from __future__ import annotations

import itertools

import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from rsscgeo.errors import SceneError
from rsscgeo.scene.grid import PatchGrid

grids = st.builds(
    lambda w, h, patch, stride_frac, res, x0, y0: PatchGrid(
        CRS.from_epsg(32633),
        Affine(res, 0, x0, 0, -res, y0),
        w,
        h,
        patch,
        max(1, int(patch * stride_frac)),
    ),
    w=st.integers(1, 3000),
    h=st.integers(1, 3000),
    patch=st.integers(8, 512),
    stride_frac=st.floats(0.1, 1.0),
    res=st.sampled_from([0.3, 1.0, 2.0, 10.0, 30.0]),
    x0=st.floats(-1e6, 1e6),
    y0=st.floats(-1e6, 1e7),
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(grid=grids, per_side=st.integers(1, 20))
def test_patches_cover_the_raster_on_its_pixel_grid(grid: PatchGrid, per_side: int) -> None:
    # The last patch reaches the raster's edge, the one before it does not (no extra row).
    assert (grid.rows - 1) * grid.stride + grid.patch >= grid.height
    assert grid.rows == 1 or (grid.rows - 2) * grid.stride + grid.patch < grid.height
    assert (grid.cols - 1) * grid.stride + grid.patch >= grid.width
    assert grid.cols == 1 or (grid.cols - 2) * grid.stride + grid.patch < grid.width
    # Chunks partition the patches: contiguous row and column bands, each patch once.
    chunks = list(grid.chunks(per_side))
    assert sum(c.nrows * c.ncols for c in chunks) == grid.rows * grid.cols
    for axis, total in (("row", grid.rows), ("col", grid.cols)):
        size = "nrows" if axis == "row" else "ncols"
        spans = sorted({(getattr(c, axis), getattr(c, size)) for c in chunks})
        assert spans[0][0] == 0 and sum(n for _, n in spans) == total
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    for chunk in chunks:
        col_off, row_off, width, _height = grid.chunk_pixels(chunk)
        assert (col_off, row_off) == (chunk.col * grid.stride, chunk.row * grid.stride)
        assert width == (chunk.ncols - 1) * grid.stride + grid.patch


@settings(max_examples=200, deadline=None)
@given(grid=grids, data=st.data())
def test_patch_polygons_map_back_to_pixels(grid: PatchGrid, data: st.DataObject) -> None:
    row = data.draw(st.integers(0, grid.rows - 1))
    col = data.draw(st.integers(0, grid.cols - 1))
    left, bottom, right, top = grid.patch_bounds(row, col)
    inverse = ~grid.transform
    px_left, px_top = inverse @ (left, top)
    px_right, px_bottom = inverse @ (right, bottom)
    assert px_left == pytest.approx(col * grid.stride, abs=1e-6)
    assert px_top == pytest.approx(row * grid.stride, abs=1e-6)
    assert px_right - px_left == pytest.approx(grid.patch, abs=1e-6)
    assert px_bottom - px_top == pytest.approx(grid.patch, abs=1e-6)
    # The output raster's pixel (row, col) has the patch's top-left corner.
    assert grid.output_transform @ (col, row) == pytest.approx((left, top))


def test_rotated_transforms_are_refused() -> None:
    with pytest.raises(SceneError, match="rotated"):
        PatchGrid(CRS.from_epsg(3857), Affine(1, 0.5, 0, 0.5, -1, 0), 10, 10, 4, 4)


@pytest.mark.parametrize(
    ("native", "expected", "words"),
    [
        (0.5, 2.0, "decimated"),  # finer: decimated to the model's GSD
        (2.5, 2.5, "native"),  # within 1.5x: as it is
        (5.0, 2.0, "upsampled"),  # 2.5x coarser: upsampled to the model's GSD
        (30.0, 30.0, "warning"),  # over 4x coarser: native, with a warning
    ],
)
def test_scale_rule_reads_at_the_model_gsd_within_limits(native, expected, words) -> None:
    from types import SimpleNamespace

    from rsscgeo.scene.plan import _reading_resolution

    info = SimpleNamespace(resolution=(native, native), crs=CRS.from_epsg(32614))
    resolution, note = _reading_resolution(info, 2.0, None)
    assert resolution == (expected, expected) and words in note
