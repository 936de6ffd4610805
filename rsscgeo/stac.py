"""STAC items as scenes: pick the asset and the bands from the item's metadata.

``rsscgeo classify item.json`` (or an item's URL) classifies one asset of the item.
The asset is the one asked for, else the first data asset whose bands' ``common_name``
values cover the model's bands, else ``visual``, else ``image``. Bands are then chosen
by ``common_name``, so an RGBN item needs no ``--bands``. Several items form a mosaic.
Items are read with ``pystac`` (local files and HTTP URLs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rsscgeo.errors import SceneError, first_line
from rsscgeo.sources import SceneLike, SceneSource, scene_source

# Assets tried, in order, when none carries band names that cover the model's bands.
FALLBACK_ASSETS = ("visual", "image")


@dataclass(frozen=True)
class StacInputs:
    """Scenes resolved from STAC items (and plain scenes passed beside them).

    Attributes:
        sources: The rasters to read, one per item or scene, in the order given.
        bands: 1-based band numbers of the model's bands, from the items' band names
            (``None`` when no item names them).
        metadata: What to record in the outputs: item ids, datetimes and assets.
        notes: The choices made, in words.
    """

    sources: tuple[SceneSource, ...]
    bands: tuple[int, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def is_stac_item(scene: SceneLike) -> bool:
    """True for a ``.json`` file or URL (what a STAC item is stored as)."""
    if isinstance(scene, SceneSource):
        scene = scene.name
    path = urlsplit(os.fspath(scene)).path
    return path.lower().endswith(".json")


def resolve_stac(
    scenes: Sequence[SceneLike], model_bands: Sequence[str], asset: str | None = None
) -> StacInputs:
    """Replace each STAC item in ``scenes`` by the raster asset to classify.

    Args:
        scenes: Rasters and STAC items (``.json`` files or URLs).
        model_bands: The model's band names (its card's ``bands``: common names).
        asset: The asset key to read from every item (``None``: chosen as above).

    Raises:
        SceneError: If an item cannot be read, has no usable asset, or the items'
            assets hold the model's bands in different positions.
    """
    if not any(is_stac_item(scene) for scene in scenes):
        return StacInputs(tuple(scene_source(scene) for scene in scenes))
    sources: list[SceneSource] = []
    band_choices: set[tuple[int, ...] | None] = set()
    ids, datetimes, assets, notes = [], [], [], []
    for scene in scenes:
        if not is_stac_item(scene):
            sources.append(scene_source(scene))
            band_choices.add(None)
            continue
        item = _read_item(str(scene))
        key, bands = _choose_asset(item, model_bands, asset)
        href = item.assets[key].get_absolute_href() or item.assets[key].href
        sources.append(scene_source(href))
        band_choices.add(bands)
        ids.append(item.id)
        datetimes.append(_datetime(item))
        assets.append(key)
        chosen = f"bands {','.join(map(str, bands))}" if bands else "its first bands"
        notes.append(f"STAC item {item.id} ({datetimes[-1]}): asset {key!r}, {chosen}")
    if len(band_choices) > 1:
        raise SceneError(
            "the STAC items hold the model's bands "
            f"({', '.join(model_bands)}) in different band positions",
            "classify them separately.",
        )
    metadata = {
        "stac_item_ids": ",".join(ids),
        "stac_datetimes": ",".join(datetimes),
        "stac_assets": ",".join(assets),
    }
    return StacInputs(tuple(sources), band_choices.pop(), metadata, tuple(notes))


def _read_item(ref: str) -> Any:
    import pystac

    try:
        item = pystac.read_file(ref)
    except FileNotFoundError:
        raise SceneError(f"STAC item {ref} does not exist; check the path or URL.") from None
    except Exception as err:  # pystac raises many types: JSON, schema, HTTP, ...
        raise SceneError(
            f"cannot read STAC item {ref} ({first_line(err)})",
            "pass a STAC Item JSON file or URL.",
        ) from None
    if not isinstance(item, pystac.Item):
        raise SceneError(
            f"{ref} is a STAC {type(item).__name__}, not an Item",
            "pass the item(s) to classify (their JSON files or URLs).",
        )
    return item


def _choose_asset(
    item: Any, model_bands: Sequence[str], asset: str | None
) -> tuple[str, tuple[int, ...] | None]:
    """The asset key and the model's 1-based bands in it (``None``: unnamed bands)."""
    if asset is not None:
        if asset not in item.assets:
            raise SceneError(
                f"STAC item {item.id} has no asset {asset!r} (it has {_keys(item)})",
                "choose one of them with asset=...",
                cli_fix="choose one of them with --asset.",
            )
        return asset, _band_positions(item.assets[asset], model_bands)
    for key, candidate in item.assets.items():
        if not _is_data(candidate):
            continue
        bands = _band_positions(candidate, model_bands)
        if bands is not None:
            return key, bands
    for key in FALLBACK_ASSETS:
        if key in item.assets:
            return key, _band_positions(item.assets[key], model_bands)
    raise SceneError(
        f"STAC item {item.id} has no asset with the model's bands ({', '.join(model_bands)}) "
        f"named in eo:bands, and no {' or '.join(FALLBACK_ASSETS)} asset (it has {_keys(item)})",
        "choose one with asset=...",
        cli_fix="choose one with --asset (and --bands if its bands are not named).",
    )


def _is_data(asset: Any) -> bool:
    roles = asset.roles or []
    media = (asset.media_type or "").lower()
    return "data" in roles or (not roles and ("tiff" in media or not media))


def _band_positions(asset: Any, model_bands: Sequence[str]) -> tuple[int, ...] | None:
    """Where the model's bands are in ``asset``, by common name (STAC 1.0 and 1.1)."""
    fields = asset.extra_fields
    names = [b.get("common_name") for b in fields.get("eo:bands") or []]
    if not any(names):
        names = [b.get("eo:common_name") for b in fields.get("bands") or []]
    names = [str(n).lower() if n else None for n in names]
    if not all(band.lower() in names for band in model_bands):
        return None
    return tuple(names.index(band.lower()) + 1 for band in model_bands)


def _datetime(item: Any) -> str:
    if item.datetime is not None:
        return str(item.datetime.isoformat())
    start = item.properties.get("start_datetime", "")
    end = item.properties.get("end_datetime", "")
    return f"{start}/{end}" if start or end else "unknown"


def _keys(item: Any) -> str:
    return ", ".join(item.assets) or "no assets"
