"""A picture of a classified scene: the imagery beside the class map laid over it.

Reads a decimated quicklook of the scene (never the whole raster) and the
one-pixel-per-patch GeoTIFF that ``classify`` writes, and draws both in the scene's
CRS with a legend of the classes present, in the model card's colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import Resampling

from rsscgeo.modelfile import ModelCard
from rsscgeo.scene.legend import Legend

QUICKLOOK_PIXELS = 1024


def _quicklook(
    scene: str | Path, bands: Sequence[int]
) -> tuple[npt.NDArray[np.float64], list[float]]:
    """RGB quicklook (H x W x 3, 0..1, 2-98 % stretch per band) and its extent."""
    with rasterio.open(scene) as src:
        factor = max(1.0, max(src.width, src.height) / QUICKLOOK_PIXELS)
        shape = (len(bands), round(src.height / factor), round(src.width / factor))
        pixels = src.read(list(bands), out_shape=shape, resampling=Resampling.average, masked=True)
        left, bottom, right, top = src.bounds
    rgb = np.ma.masked_array(pixels, dtype=np.float64)
    for band in rgb:
        low, high = np.percentile(band.compressed(), [2, 98]) if band.count() else (0, 1)
        band[...] = (band - low) / max(high - low, 1e-6)
    image = np.ma.clip(rgb, 0, 1).filled(1.0).transpose(1, 2, 0)
    return image, [left, right, bottom, top]


def draw_map(
    scene: str | Path,
    labels: Path,
    card: ModelCard,
    out: Path,
    *,
    bands: Sequence[int] = (1, 2, 3),
    title: str | None = None,
) -> Path:
    """Write a PNG: the scene, and the scene under its class map with a legend.

    Args:
        scene: The classified raster (a path or what ``rasterio.open`` reads).
        labels: The class GeoTIFF written by ``classify`` (band 1: class ids, 254
            Uncertain, 255 skipped).
        card: The model card that names and colours the classes.
        out: The PNG to write.
        bands: Scene bands shown as red, green, blue.
        title: A title above both panels.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgba
    from matplotlib.patches import Patch

    image, extent = _quicklook(scene, bands)
    with rasterio.open(labels) as src:
        ids = src.read(1)
        left, bottom, right, top = src.bounds
    # Every category classify may write (Uncertain included), in the outputs' colours.
    entries = Legend(card, uncertain_below=1.0, source="drawing").entries
    colors = {e.value: e.color for e in entries}
    names = {e.value: e.name for e in entries}
    present = [int(v) for v in np.unique(ids) if int(v) in colors]
    counts = {v: int((ids == v).sum()) for v in present}
    lut = np.zeros((256, 4))
    for value, color in colors.items():
        lut[value] = to_rgba(color, 0.6)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    for ax in axes:
        ax.imshow(image, extent=extent)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("scene")
    axes[1].imshow(
        ids,
        extent=[left, right, bottom, top],
        cmap=ListedColormap(lut),
        vmin=0,
        vmax=255,
        interpolation="nearest",
    )
    axes[1].set_title("class map (one cell per patch)")
    total = max(sum(counts.values()), 1)
    handles = [
        Patch(color=colors[v], label=f"{names[v]} ({counts[v] / total:.0%})")
        for v in sorted(present, key=lambda v: -counts[v])
    ]
    axes[1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    if title:
        figure.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
