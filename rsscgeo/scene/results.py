"""Per-patch results as a lazy, dask-backed xarray Dataset on the patch grid.

The same chunk tasks as ``classify_scene`` back a dask array each, so nothing is read
or classified until the user computes (or saves) the variables they want.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
from dask.delayed import delayed

from rsscgeo.backends import model_device
from rsscgeo.hierarchy import UNCERTAIN_VALUE
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.inference import prepare_model
from rsscgeo.scene.legend import Legend
from rsscgeo.scene.options import ClassifyOptions
from rsscgeo.scene.plan import plan_scene
from rsscgeo.sources import SceneLike


def patch_dataset(
    scenes: Sequence[SceneLike], loaded: LoadedModel, options: ClassifyOptions | None = None
) -> xr.Dataset:
    """The scene's per-patch classification as an xarray Dataset (computed lazily).

    Variables on dimensions ``y``, ``x`` (patch centres in the scene's CRS) and
    ``class``: ``probability`` (calibrated; NaN for skipped patches), ``class_id``
    (the top-1 class, -1 when skipped), ``score`` (the top-1 probability),
    ``map_value`` (what the map says, as in the GeoTIFF's class band: the class id, the
    number of classes + the family's index for a patch named by its family, 254
    Uncertain, 255 skipped), ``uncertain`` (True where the map says Uncertain: score
    below ``options.uncertain_below``, default the card's, and on a card with families
    and back-off, the most probable family's probability ``family_score`` too) and
    ``valid_fraction``.
    Attributes ``crs`` (WKT) and ``transform`` (GDAL order) describe the patch grid,
    ``uncertain_below`` the threshold used. Each dask block is one chunk, as
    ``classify_scene`` reads them (``options.chunk_size`` pixels a side, by default
    the same rule). With ``options.tta`` probabilities are averaged over the 8
    dihedral transforms.

    Raises:
        SceneError: If the scene or the options cannot be used with this model.
    """
    card = loaded.card
    plan = plan_scene(scenes, loaded, options)
    # The model the plan runs (on the chosen backend), prepared as a worker would.
    loaded = prepare_model(plan.model, model_device(plan.model.model))
    grid, side, work = plan.grid, plan.chunk_side, plan.work
    prob_rows: list[list[da.Array]] = [[] for _ in range(0, grid.rows, side)]
    valid_rows: list[list[da.Array]] = [[] for _ in range(0, grid.rows, side)]
    for chunk in grid.chunks(side):
        result = delayed(work)(chunk, loaded)
        shape = (chunk.nrows, chunk.ncols)
        row = chunk.row // side
        prob_rows[row].append(_lazy(result.probabilities, (*shape, card.num_classes)))
        valid_rows[row].append(_lazy(result.valid_fraction, shape))
    probability = _mosaic(prob_rows)
    valid = _mosaic(valid_rows)
    transform = grid.output_transform
    half = grid.patch / 2
    xs = [grid.transform.c + (c * grid.stride + half) * grid.transform.a for c in range(grid.cols)]
    ys = [grid.transform.f + (r * grid.stride + half) * grid.transform.e for r in range(grid.rows)]
    data = xr.Dataset(
        {
            "probability": (("y", "x", "class"), probability),
            "valid_fraction": (("y", "x"), valid),
        },
        coords={"y": ys, "x": xs, "class": card.class_names},
        attrs={
            "crs": grid.crs.to_wkt(),
            "transform": transform.to_gdal(),
            "patch_size": grid.patch,
            "uncertain_below": plan.legend.uncertain_below,
        },
    )
    classified = ~data.probability.isnull().any("class")
    data["class_id"] = (
        data.probability.fillna(-1).argmax("class").where(classified, -1).astype(np.int32)
    )
    data["score"] = data.probability.max("class")
    legend = plan.legend
    data["map_value"] = (("y", "x"), _map_values(probability, legend))
    data["uncertain"] = data.map_value == UNCERTAIN_VALUE
    if legend.hierarchical:
        family = xr.DataArray([c.parent for c in card.classes], dims="class", name="family")
        data["family_score"] = data.probability.groupby(family).sum("class").max("family")
        data["family_score"] = data.family_score.where(classified)
    return data


def _map_values(probability: da.Array, legend: Legend) -> da.Array:
    """What the GeoTIFF's class band says per patch, block by block (``Legend.label``)."""

    def values(block: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        return legend.label(block).values.astype(np.uint8)

    mapped = da.map_blocks(values, probability, drop_axis=2, dtype=np.uint8)  # type: ignore[no-untyped-call]
    return mapped  # type: ignore[no-any-return]


def _lazy(value: object, shape: tuple[int, ...]) -> da.Array:
    return da.from_delayed(value, shape, np.float32)  # type: ignore[no-untyped-call,no-any-return]


def _mosaic(blocks: list[list[da.Array]]) -> da.Array:
    """Blocks laid out like the chunks: rows of chunks along y, chunks along x."""
    rows = [da.concatenate(row, axis=1) for row in blocks]  # type: ignore[no-untyped-call]
    return da.concatenate(rows, axis=0)  # type: ignore[no-untyped-call,no-any-return]
