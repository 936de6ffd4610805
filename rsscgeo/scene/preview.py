"""A picture of a classified scene: the imagery beside the class map laid over it.

The pieces are shared by ``classify --preview`` (a PNG, :func:`draw_map`) and the HTML
report (``report``): a decimated quicklook of the scene read through a
:class:`SceneReader` (so mosaics and remote scenes work, and nothing scene-sized is
ever held), the class map coloured in the model card's colours, its extent in the
scene's CRS, and :func:`render_map`, which draws the scene beside the scene under its
class map with a legend of the classes present.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio

from rsscgeo.errors import OptionError
from rsscgeo.modelfile import ModelCard
from rsscgeo.scene.grid import Chunk, PatchGrid
from rsscgeo.scene.legend import Legend, LegendEntry
from rsscgeo.scene.reader import SceneReader, inspect_scenes
from rsscgeo.sources import SceneLike

QUICKLOOK_PIXELS = 1024  # the quicklook's long side, at most
RGB_NAMES = ("red", "green", "blue")
CLASS_ALPHA = 0.6  # opacity of the class map over the scene

# (left, right, bottom, top) in the scene's CRS: matplotlib's ``extent`` order.
Extent = tuple[float, float, float, float]


@dataclass(frozen=True)
class Quicklook:
    """A decimated RGB picture of a scene.

    Attributes:
        image: H x W x 3 in 0..1 (2-98 % stretch per band); nodata is white.
        extent: Where it lies in the scene's CRS.
    """

    image: npt.NDArray[np.float64]
    extent: Extent

    def rgb8(self) -> npt.NDArray[np.uint8]:
        """The image as 8-bit RGB."""
        return np.round(self.image * 255).astype(np.uint8)


def display_bands(card: ModelCard, band_indexes: Sequence[int]) -> tuple[int, int, int]:
    """The scene bands to show as red, green and blue.

    The bands the card names red, green and blue, else the first three the model reads
    (one band is shown in grey).
    """
    names = [b.lower() for b in card.bands]
    if all(n in names for n in RGB_NAMES) and len(band_indexes) == len(names):
        red, green, blue = (band_indexes[names.index(n)] for n in RGB_NAMES)
        return red, green, blue
    first = [*band_indexes[:3]]
    while len(first) < 3:
        first.append(first[-1])
    return first[0], first[1], first[2]


def check_display_bands(scene: SceneLike, bands: Sequence[int]) -> None:
    """Refuse display bands that are not three of the scene's bands, before any work.

    Raises:
        OptionError: Naming the band and the fix.
    """
    if len(bands) != 3:
        raise OptionError(
            f"a picture shows 3 bands as red, green and blue, {len(bands)} were given",
            "give 3, e.g. bands=(4, 1, 2) for near infrared, red, green.",
            cli_fix="give 3, e.g. --preview-bands 4,1,2 for near infrared, red, green.",
        )
    inspect_scenes([scene]).check_band_numbers(bands, "--preview-bands")


def read_quicklook(
    reader: SceneReader, bands: Sequence[int], pixels: int = QUICKLOOK_PIXELS
) -> Quicklook:
    """Read ``bands`` of the reader's mosaic decimated to ``pixels`` on the long side.

    One read at a coarse resolution (GDAL decimates, using overviews where the files
    have them), so memory stays bounded by the quicklook whatever the scene's size.
    16-bit and float scenes are stretched like 8-bit ones (2-98th percentiles per band).
    """
    full = reader.grid(1, 1)
    factor = max(1.0, max(full.width, full.height) / pixels)
    resolution = (reader.resolution[0] * factor, reader.resolution[1] * factor)
    overview = SceneReader(reader.sources, tuple(bands), resolution)
    coarse = overview.grid(1, 1)
    values, valid = overview.read(coarse, Chunk(0, 0, 0, coarse.rows, coarse.cols))
    return Quicklook(_stretch(values, valid), grid_extent(coarse, coarse.width, coarse.height))


def _stretch(
    values: npt.NDArray[np.uint8 | np.float32], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Bands x H x W values to H x W x 3 in 0..1, 2-98 % per band, nodata white."""
    image = np.ones((*valid.shape, len(values)))
    for band, plane in enumerate(values):
        inside = plane[valid].astype(np.float64)
        low, high = np.percentile(inside, [2, 98]) if inside.size else (0.0, 1.0)
        scaled = (plane.astype(np.float64) - low) / max(high - low, 1e-6)
        image[..., band] = np.where(valid, np.clip(scaled, 0, 1), 1.0)
    return image


def grid_extent(grid: PatchGrid, width: int, height: int) -> Extent:
    """The extent of ``width`` x ``height`` cells of ``grid``'s output raster.

    ``grid.cols`` x ``grid.rows`` cells is the class map's extent (one cell per patch);
    for a grid of patch 1 and stride 1, ``grid.width`` x ``grid.height`` is the scene's.
    """
    transform = grid.output_transform
    left, top = transform.c, transform.f
    right, bottom = transform @ (width, height)
    return left, right, bottom, top


def map_extent(grid: PatchGrid) -> Extent:
    """The extent of the class map (one cell per patch, the last ones padded)."""
    return grid_extent(grid, grid.cols, grid.rows)


def class_colors(
    class_map: npt.NDArray[np.uint8], entries: Sequence[LegendEntry], alpha: float = 1.0
) -> npt.NDArray[np.uint8]:
    """The class map as RGBA (rows x cols x 4), transparent where it has no category."""
    lut = np.zeros((256, 4), np.uint8)
    for entry in entries:
        lut[entry.value] = (*entry.rgb, round(255 * alpha))
    return lut[class_map]


def legend_counts(
    class_map: npt.NDArray[np.uint8], entries: Sequence[LegendEntry]
) -> list[tuple[LegendEntry, int]]:
    """The categories present in the class map with their patch counts, most first."""
    counts = np.bincount(class_map.ravel(), minlength=256)
    present = [(e, int(counts[e.value])) for e in entries if counts[e.value]]
    return sorted(present, key=lambda item: -item[1])


def render_map(
    quicklook: Quicklook,
    class_map: npt.NDArray[np.uint8],
    extent: Extent,
    entries: Sequence[LegendEntry],
    *,
    title: str | None = None,
    scene_label: str = "scene",
) -> bytes:
    """A PNG: the scene, and the scene under its class map with a legend.

    Args:
        quicklook: The scene's picture.
        class_map: One value per patch (class ids, Uncertain, nodata).
        extent: Where the class map lies (see :func:`map_extent`).
        entries: The categories the map may hold, in the model card's colours.
        title: A title above both panels.
        scene_label: The title of the scene's panel.

    Returns:
        The PNG's bytes.
    """
    from matplotlib.figure import Figure  # pyplot-free: the caller's backend stays
    from matplotlib.patches import Patch

    figure = Figure(figsize=(12, 5.6), layout="constrained")
    axes = figure.subplots(1, 2)
    left, right, bottom, top = quicklook.extent
    for ax in axes:
        ax.imshow(quicklook.image, extent=quicklook.extent)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title(scene_label)
    axes[1].imshow(
        class_colors(class_map, entries, CLASS_ALPHA), extent=extent, interpolation="nearest"
    )
    axes[1].set_title("class map (one cell per patch)")
    present = legend_counts(class_map, entries)
    total = max(sum(n for _, n in present), 1)
    handles = [Patch(color=e.color, label=f"{e.name} ({n / total:.0%})") for e, n in present]
    axes[1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def draw_map(
    scene: SceneLike,
    labels: Path,
    card: ModelCard,
    out: Path,
    *,
    bands: Sequence[int] = (1, 2, 3),
    title: str | None = None,
) -> Path:
    """Write a PNG: the scene, and the scene under its class map with a legend.

    Args:
        scene: The classified raster (a path, URL or GDAL path).
        labels: The class GeoTIFF written by ``classify`` (band 1: class ids, 254
            Uncertain, 255 skipped).
        card: The model card that names and colours the classes.
        out: The PNG to write.
        bands: Scene bands shown as red, green, blue (e.g. ``(4, 1, 2)``: a scene with
            near infrared in band 4 in false colour, where water is dark and plants red).
        title: A title above both panels.

    Returns:
        The path written.
    """
    info = inspect_scenes([scene])
    shown = tuple(bands)
    quicklook = read_quicklook(SceneReader(info.sources, shown, info.resolution), shown)
    label = "scene" if shown == (1, 2, 3) else f"scene (bands {', '.join(map(str, shown))} as RGB)"
    with rasterio.open(labels) as src:
        class_map = src.read(1)
        left, bottom, right, top = src.bounds
    # Every category classify may write (Uncertain included), in the outputs' colours.
    entries = Legend(card, uncertain_below=1.0, source="drawing").entries
    png = render_map(
        quicklook, class_map, (left, right, bottom, top), entries, title=title, scene_label=label
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out
