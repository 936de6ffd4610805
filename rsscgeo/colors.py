"""Class colours for maps: the config's choices, then a palette of distinct colours."""

from __future__ import annotations

import colorsys
import itertools

import matplotlib.colors as mcolors
from matplotlib import colormaps

from rsscgeo.errors import ConfigError

# tab20, tab20b and tab20c give 60 well-separated colours before any repeat.
_PALETTE = [
    mcolors.to_hex(colormaps[name](i)) for name in ("tab20", "tab20b", "tab20c") for i in range(20)
]


def class_colors(classes: list[str], chosen: dict[str, str]) -> list[str]:
    """One ``#rrggbb`` per class: ``chosen`` where given, else the palette in order.

    Raises:
        ConfigError: If ``chosen`` names an unknown class or an invalid colour.
    """
    unknown = sorted(set(chosen) - set(classes))
    if unknown:
        raise ConfigError(
            f"data.colors: {unknown[0]!r} is not a class of this dataset; fix the name."
        )
    for name, color in chosen.items():
        if not mcolors.is_color_like(color):
            raise ConfigError(f"data.colors.{name}: {color!r} is not a colour; use '#rrggbb'.")
    taken = {mcolors.to_hex(v) for v in chosen.values()}
    spare = itertools.cycle([c for c in _PALETTE if c not in taken] or _PALETTE)
    return [mcolors.to_hex(chosen[name]) if name in chosen else next(spare) for name in classes]


def family_shades(color: str, count: int) -> list[str]:
    """``count`` shades of ``color``'s hue, dark to light, for the classes of one family.

    Lightness spreads over 0.25..0.78 (one class: ``color`` itself) and saturation stays
    that of ``color``, so a map's families read at a glance and classes within one
    still differ.
    """
    if count == 1:
        return [mcolors.to_hex(color)]
    hue, _, saturation = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    lightness = [0.25 + (0.78 - 0.25) * i / (count - 1) for i in range(count)]
    return [mcolors.to_hex(colorsys.hls_to_rgb(hue, value, saturation)) for value in lightness]


def spare_color(used: list[str]) -> str:
    """The first palette colour not in ``used`` (the palette's first if all are)."""
    taken = {mcolors.to_hex(c) for c in used}
    return next((c for c in _PALETTE if c not in taken), _PALETTE[0])
