"""``classify --suggest N``: the patches of a scene most worth a label from the user.

Two criteria, in this order:

1. **Uncertainty.** While the map is written, a pool of the ``POOL_PER_PICK`` x N most
   uncertain classified patches is kept: uncertainty is one minus the margin between
   the two most probable classes (calibrated), so a patch torn between two classes
   ranks first, whatever the threshold.
2. **Diversity.** Among the pool, greedy k-centre on the model's penultimate features
   (L2-normalised): the first pick is the most uncertain patch, each next one the
   patch farthest from every pick so far. Near-duplicates (the same field cut into ten
   patches) are so picked once, and the picks cover the kinds of doubt in the scene.

The picks become the layer ``to_label`` of the run's GeoPackage (see
``suggest_frame``), styled for labelling in QGIS (``to_label_qml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
import torch

from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import PatchGrid
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.patches import embed, read_cells
from rsscgeo.scene.plan import ScenePlan
from rsscgeo.scene.style import LabelFields

TO_LABEL_LAYER = "to_label"
# Candidates kept per pick: enough doubt to choose diverse picks from, few enough that
# every pick stays among the scene's most uncertain patches.
POOL_PER_PICK = 4


@dataclass
class CandidatePool:
    """The ``size`` most uncertain classified patches seen so far (ties: seeded order)."""

    size: int
    seed: int = 0
    rows: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    cols: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    uncertainty: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    probabilities: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.empty((0, 0), np.float32)
    )
    _tiebreak: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    def add(self, result: ChunkResult) -> None:
        """Offer a chunk's classified patches to the pool."""
        chunk = result.chunk
        probs = result.probabilities.reshape(-1, result.probabilities.shape[-1])
        rows, cols = np.divmod(np.arange(len(probs)), chunk.ncols)
        keep = result.classified.reshape(-1)
        probs = probs[keep]
        if not len(probs):
            return
        top2 = -np.sort(-probs, axis=1)[:, :2] if probs.shape[1] > 1 else np.c_[probs, probs * 0]
        # Seeded per chunk, so the order of arrival (resumed runs) changes nothing.
        noise = np.random.default_rng([self.seed, chunk.index]).random(len(probs))
        self._merge(
            rows[keep] + chunk.row,
            cols[keep] + chunk.col,
            1.0 - (top2[:, 0] - top2[:, 1]).astype(np.float64),
            probs.astype(np.float32),
            noise,
        )

    def _merge(
        self,
        rows: npt.NDArray[np.int64],
        cols: npt.NDArray[np.int64],
        uncertainty: npt.NDArray[np.float64],
        probabilities: npt.NDArray[np.float32],
        tiebreak: npt.NDArray[np.float64],
    ) -> None:
        if not len(self.rows):
            self.probabilities = np.empty((0, probabilities.shape[1]), np.float32)
        rows = np.concatenate([self.rows, rows])
        cols = np.concatenate([self.cols, cols])
        uncertainty = np.concatenate([self.uncertainty, uncertainty])
        probabilities = np.concatenate([self.probabilities, probabilities])
        tiebreak = np.concatenate([self._tiebreak, tiebreak])
        order = np.lexsort((tiebreak, -uncertainty))[: self.size]
        self.rows, self.cols = rows[order], cols[order]
        self.uncertainty, self.probabilities = uncertainty[order], probabilities[order]
        self._tiebreak = tiebreak[order]


def k_centre(features: torch.Tensor, count: int) -> list[int]:
    """Greedy k-centre: row 0 first, then each time the row farthest from the picks.

    Rows are candidates in order of preference (ties in distance go to the earlier
    row). Returns at most ``count`` distinct row indices.
    """
    n = len(features)
    if n == 0 or count <= 0:
        return []
    picks = [0]
    distance = torch.cdist(features, features[:1]).squeeze(1)
    distance[0] = -1.0
    while len(picks) < min(count, n):
        best = int(torch.argmax(distance))  # the first maximum: the earliest row
        picks.append(best)
        distance = torch.minimum(distance, torch.cdist(features, features[best : best + 1])[:, 0])
        distance[picks] = -1.0
    return picks


@dataclass(frozen=True)
class Suggestions:
    """The patches picked for labelling, most uncertain first."""

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    predicted: list[str]
    score: npt.NDArray[np.float32]
    uncertainty: npt.NDArray[np.float64]


def suggest(pool: CandidatePool, count: int, plan: ScenePlan, network: LoadedModel) -> Suggestions:
    """Pick ``count`` patches of the pool by k-centre on ``network``'s features.

    ``network`` is the model as a PyTorch module (its features); an ONNX Runtime model
    has none, so its calibrated probabilities stand in for them.

    Raises:
        RunInterrupted: If a stop is requested while the candidates are read.
    """
    if isinstance(network.model, torch.nn.Module) and hasattr(network.model, "forward_features"):
        patches, _ = read_cells(plan, pool.rows.tolist(), pool.cols.tolist())
        features = embed(network, plan, patches)
    else:
        features = torch.nn.functional.normalize(torch.from_numpy(pool.probabilities), dim=1)
    chosen = k_centre(features, count)
    chosen.sort(key=lambda i: (-pool.uncertainty[i], i))
    names = plan.model.card.class_names
    best = pool.probabilities[chosen].argmax(axis=1) if chosen else np.empty(0, int)
    return Suggestions(
        pool.rows[chosen],
        pool.cols[chosen],
        [names[int(b)] for b in best],
        pool.probabilities[chosen].max(axis=1) if chosen else np.empty(0, np.float32),
        pool.uncertainty[chosen],
    )


def suggest_frame(suggestions: Suggestions, grid: PatchGrid) -> gpd.GeoDataFrame:
    """The ``to_label`` layer: one patch polygon per pick, its label fields left empty.

    Fields: ``label`` and ``new_class`` (for the user, see ``LabelFields``),
    ``predicted`` (the model's most probable class), ``score`` (its calibrated
    probability), ``row``, ``col`` (the patch on the grid).
    """
    fields = LabelFields()
    empty = pd.Series([None] * len(suggestions.rows), dtype="string")
    boxes = [
        grid.patch_bounds(int(r), int(c))
        for r, c in zip(suggestions.rows, suggestions.cols, strict=True)
    ]
    geometry = shapely.box(*np.array(boxes).T) if boxes else []
    frame = pd.DataFrame(
        {
            fields.label: empty,
            fields.new_class: empty,
            fields.predicted: pd.Series(suggestions.predicted, dtype="string"),
            "score": suggestions.score.astype(np.float32),
            "row": suggestions.rows.astype(np.int32),
            "col": suggestions.cols.astype(np.int32),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=geometry, crs=grid.crs)
