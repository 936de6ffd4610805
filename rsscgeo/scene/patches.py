"""Reading chosen patches of a planned scene exactly as ``classify`` reads them.

``suggest`` (features of the patches worth labelling) and ``adapt`` (the labelled and
the distilled patches) must see what a classify run of the same plan sees: the same
reader, reading resolution, bands, scaling and preprocessing. Cells are read chunk by
chunk (``plan.chunk_side``): a chunk that holds several wanted cells is read once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from rsscgeo.modelfile import LoadedModel
from rsscgeo.networks import as_timm
from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import cut_patches
from rsscgeo.scene.plan import ScenePlan
from rsscgeo.stopping import STOP

# A chunk holding fewer wanted cells than this is read cell by cell instead.
WHOLE_CHUNK_CELLS = 4


def read_cells(
    plan: ScenePlan, rows: Sequence[int], cols: Sequence[int]
) -> tuple[torch.Tensor, npt.NDArray[np.float32]]:
    """The raw pixels of the patches at (``rows[i]``, ``cols[i]``) and their valid fractions.

    Returns:
        N x C x P x P raw values (uint8 for 8-bit scenes, else float32, before scaling)
        in the order asked, and the N valid fractions (patches past the scene's edge
        are padded, as classify pads them).

    Raises:
        RunInterrupted: If a stop is requested between reads.
    """
    grid, side = plan.grid, plan.chunk_side
    wanted: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (row, col) in enumerate(zip(rows, cols, strict=True)):
        wanted[(row // side, col // side)].append(i)
    patches: list[torch.Tensor | None] = [None] * len(rows)
    fractions = np.zeros(len(rows), np.float32)
    for (chunk_row, chunk_col), members in wanted.items():
        STOP.check()
        if len(members) >= WHOLE_CHUNK_CELLS:
            row0, col0 = chunk_row * side, chunk_col * side
            chunk = Chunk(0, row0, col0, min(side, grid.rows - row0), min(side, grid.cols - col0))
            reads = [(chunk, members)]
        else:
            reads = [(Chunk(0, rows[i], cols[i], 1, 1), [i]) for i in members]
        for chunk, indexes in reads:
            values, valid = plan.reader.read(grid, chunk)
            cut, fraction = cut_patches(values, valid, grid, chunk)
            for i in indexes:
                at = (rows[i] - chunk.row) * chunk.ncols + (cols[i] - chunk.col)
                patches[i] = cut[at].clone()  # the reader's buffer is reused
                fractions[i] = float(fraction[at])
    if not patches:
        shape = (0, len(plan.reader.band_indexes), grid.patch, grid.patch)
        return torch.empty(shape, dtype=torch.uint8), fractions
    return torch.stack([p for p in patches if p is not None]), fractions


@torch.inference_mode()
def embed(
    loaded: LoadedModel, plan: ScenePlan, patches: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Penultimate features (N x D, L2-normalised) of raw patches, preprocessed as classify does.

    ``loaded`` must be a PyTorch (timm) network; an ONNX Runtime model has no features.
    """
    network = as_timm(loaded.model.eval())
    preprocess = plan.work.preprocess
    features = []
    for start in range(0, len(patches), batch_size):
        STOP.check()
        batch = preprocess(patches[start : start + batch_size])
        pooled = network.forward_head(network.forward_features(batch), pre_logits=True)
        features.append(torch.nn.functional.normalize(pooled.float(), dim=1))
    return torch.cat(features) if features else torch.empty(0, 0)
