"""``classify --suggest N``: the patches of a scene most worth a label from the user.

Two criteria, in this order:

1. **Uncertainty.** While the map is written, a pool of the most uncertain classified
   patches is kept (``pool_size``: ``POOL_PER_PICK`` x N, at least ``MIN_POOL``).
   Uncertainty is one minus the margin between the two most probable classes
   (calibrated), so a patch torn between two classes ranks first, whatever the
   threshold.
2. **Diversity.** The pool is cut into N clusters by k-means on the model's
   penultimate features (L2-normalised), and the most uncertain patch of each cluster
   is picked (as Cluster-Margin, Citovsky et al. 2021). Near-duplicates (the same field
   cut into ten patches) share a cluster and are so picked once; k-means puts its
   clusters where the patches are, so the picks cover the common kinds of doubt in
   proportion, not the odd ones. On UC Merced at 1 and 3 labels per class, greedy
   k-centre (each pick the farthest from the others) chose outliers and did worse than
   random picks; these clusters did better (``examples/adapt``).

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
# ...but never fewer than this: with few picks, 4 x N candidates are one or two kinds of
# doubt (on UC Merced, 10 picks from 40 candidates missed whole classes).
MIN_POOL = 512


def pool_size(picks: int) -> int:
    """How many uncertain candidates ``picks`` patches are chosen from."""
    return max(POOL_PER_PICK * picks, MIN_POOL)


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


def k_means(features: torch.Tensor, count: int, seed: int, iterations: int = 50) -> torch.Tensor:
    """A cluster (0..count-1) per row: Lloyd's k-means from a seeded k-means++ start."""
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(len(features), (1,), generator=generator))
    centres = features[first : first + 1]
    nearest = torch.cdist(features, centres).squeeze(1) ** 2
    while len(centres) < count:
        # k-means++: the next centre drawn in proportion to the squared distance.
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        new = int(torch.multinomial(weights, 1, generator=generator))
        centres = torch.cat([centres, features[new : new + 1]])
        nearest = torch.minimum(nearest, torch.cdist(features, features[new : new + 1])[:, 0] ** 2)
    cluster = torch.cdist(features, centres).argmin(1)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, cluster, features)
        sizes = torch.bincount(cluster, minlength=count).unsqueeze(1)
        centres = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)
        moved = torch.cdist(features, centres).argmin(1)
        if torch.equal(moved, cluster):
            break
        cluster = moved
    return cluster


def uncertain_per_cluster(
    features: torch.Tensor, uncertainty: npt.NDArray[np.float64], count: int, seed: int
) -> list[int]:
    """The most uncertain row of each of ``count`` k-means clusters of ``features``.

    Ties in uncertainty go to the earlier row. Returns ``min(count, len(features))``
    distinct rows: should clusters come out empty (identical rows), the most uncertain
    rows not yet picked fill in.
    """
    if len(features) <= count:
        return list(range(len(features)))
    if count <= 0:
        return []
    cluster = k_means(features, count, seed).numpy()
    picks = []
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        picks.append(int(members[np.argmax(uncertainty[members])]))  # the first maximum
    taken = set(picks)
    rest = [int(i) for i in np.argsort(-uncertainty, kind="stable") if int(i) not in taken]
    return picks + rest[: count - len(picks)]


@dataclass(frozen=True)
class Suggestions:
    """The patches picked for labelling, most uncertain first."""

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    predicted: list[str]
    score: npt.NDArray[np.float32]
    uncertainty: npt.NDArray[np.float64]


def suggest(pool: CandidatePool, count: int, plan: ScenePlan, network: LoadedModel) -> Suggestions:
    """Pick ``count`` patches of the pool: the most uncertain of each cluster of features.

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
    chosen = uncertain_per_cluster(features, pool.uncertainty, count, pool.seed)
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
