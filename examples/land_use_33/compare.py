"""Score the issue-18 candidate models the same way and draw each one's demo map.

For every model given (default: the candidates under ``runs/land_use_33/`` that
exist, and the bundled model as it was before):

* AID held-out: the test rows of the bundled split (``rsscgeo evaluate --split``);
* the same held-out tiles laid out as one georeferenced mosaic (one tile per patch,
  ``benchmarks/aid_mosaic.py``'s layout) through ``rsscgeo classify``: top-1 of the
  probability bands, and the class band's Uncertain share;
* NWPU12 test: its publisher's test rows, through the training class map;
* UC Merced: all 900 mapped images through ``configs/class_maps/ucm10_to_aid.yaml``
  (never trained on);
* with back-off at the card's threshold: coverage and accuracy at class or family level
  on each of those;
* the demo scene: the share of patches named (by class or family) and the Pond share,
  and a picture (``classify --preview``);
* the demo scene against its own near-infrared band: the open-water answers (Water,
  Pond, River, Lake) on cells with under 10 % open water, and the dry-land answers
  (outside the Water family) on cells with over 50 % (see ``open_water``), and a
  picture of them (``<candidate>_water.png``).

No test-time augmentation anywhere (classify's default). Writes ``results.json``,
``results.md`` and ``<candidate>_map.png`` next to this script.

    .venv/bin/python examples/land_use_33/compare.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.mask import mask

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from aid_mosaic import Mosaic, aid_tiles, map_check, write_mosaic  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
SCENE = ROOT / "examples" / "scenes" / "naip_2020_rgbn.tif"
# The answers that claim open water, and the thresholds of the water check.
OPEN_WATER_ANSWERS = {"Water", "Pond", "River", "Lake"}
SHORE_ANSWERS = {"Wetland", "Island", "Beach"}  # the rest of the Water family: no claim
NDWI_WATER = 0.2
DRY_BELOW, WET_ABOVE = 0.1, 0.5
CANDIDATES = {
    "joint (a)": ROOT / "runs/land_use_33/joint/model.safetensors",
    "dapt (b)": ROOT / "runs/land_use_33/dapt/target/model.safetensors",
    "chain (b2)": ROOT / "runs/land_use_33/chain/model.safetensors",
    "chain176 (b3)": ROOT / "runs/land_use_33/chain176/model.safetensors",
    "aid_only (c)": ROOT / "runs/land_use_33/aid_only/model.safetensors",
    "bundled before": ROOT / "examples/models/aid_efficientnet_lite0/model.safetensors",
}


def evaluate(model: Path, *args: str) -> dict[str, Any]:
    """``rsscgeo evaluate`` without TTA; its JSON metrics."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "m.json"
        command = [
            str(BIN / "rsscgeo"),
            "evaluate",
            str(model),
            *args,
            "--no-tta",
            "--json",
            str(out),
        ]
        subprocess.run(command, check=True, capture_output=True)
        metrics: dict[str, Any] = json.loads(out.read_text())
    return metrics


def demo(model: Path, name: str) -> dict[str, float]:
    """Classify the demo scene as ``make demo`` does; the map's shares and a picture."""
    picture = HERE / f"{name.split()[0]}_map.png"
    with tempfile.TemporaryDirectory() as folder:
        gpkg, tif = Path(folder) / "demo.gpkg", Path(folder) / "demo.tif"
        subprocess.run(
            [str(BIN / "rsscgeo"), "classify", str(SCENE), "--model", str(model), "--out",
             str(gpkg), "--out", str(tif), "--preview", str(picture), "--overwrite"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        frame = gpd.read_file(gpkg, layer="demo")
    said = frame["class_name"]
    level = frame.get("level")
    named = (said != "Uncertain").mean()
    water = open_water(SCENE, frame)
    dry_cell, wet_cell = water < DRY_BELOW, water > WET_ABOVE
    wet_answer = said.isin(OPEN_WATER_ANSWERS).to_numpy()
    dry_answer = (~said.isin(OPEN_WATER_ANSWERS | SHORE_ANSWERS | {"Uncertain"})).to_numpy()
    wrong_water, wrong_dry = wet_answer & dry_cell, dry_answer & wet_cell
    draw_water_check(frame, wrong_water, wrong_dry, HERE / f"{name.split()[0]}_water.png")
    return {
        "named": float(named),
        "by_family": float((level == "parent").mean()) if level is not None else 0.0,
        "pond": float((said == "Pond").mean()),
        "pond_on_dry_land": int(((said == "Pond").to_numpy() & dry_cell).sum()),
        "water_answers": int(wet_answer.sum()),
        "water_answers_on_dry_land": int(wrong_water.sum()),
        "dry_answers_on_water": int(wrong_dry.sum()),
        "cells": len(said),
        "top": ", ".join(
            f"{k} {v / len(said):.0%}" for k, v in said.value_counts().head(5).items()
        ),
    }


def open_water(scene: Path, cells: gpd.GeoDataFrame) -> np.ndarray:
    """Each cell's share of open-water pixels, from the scene's own near-infrared band.

    NDWI (McFeeters 1996) = (green - NIR) / (green + NIR) above 0.2. The NAIP scene's
    lakes are algae-green and look like crop fields in natural colour, but water
    reflects almost no near infrared, so this is truth independent of any model. 0.2
    rather than 0: the scene's bright bare soil and salt crusts reach NDWI 0.0-0.15,
    its water 0.3-0.7. Bands 2 and 4 are green and NIR (NAIP's RGBN order).
    """
    shares = []
    with rasterio.open(scene) as src:
        for cell in cells.to_crs(src.crs).geometry:
            pixels, _ = mask(src, [cell], crop=True, indexes=[2, 4], filled=False)
            green, nir = pixels.astype("float32")
            ndwi = (green - nir) / np.maximum(green + nir, 1.0)
            wet = (ndwi > NDWI_WATER).compressed()  # the cell's pixels inside the scene
            shares.append(float(wet.mean()) if wet.size else 0.0)
    return np.asarray(shares)


def draw_water_check(
    cells: gpd.GeoDataFrame, wrong_water: np.ndarray, wrong_dry: np.ndarray, picture: Path
) -> None:
    """The scene in natural and NIR false colour, with the cells the water check flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsscgeo.scene.preview import read_quicklook
    from rsscgeo.scene.reader import SceneReader, inspect_scenes

    info = inspect_scenes([SCENE])
    cells = cells.to_crs(info.crs)
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    for axis, bands, title in (
        (axes[0], (1, 2, 3), "natural colour"),
        (axes[1], (4, 1, 2), "near infrared, red, green: water is dark, plants are red"),
    ):
        look = read_quicklook(SceneReader(info.sources, bands, info.resolution), bands)
        axis.imshow(look.image, extent=look.extent)
        axis.set_title(title)
        axis.set_axis_off()
    for flagged, colour, label in (
        (wrong_water, "red", f"water answer, under {DRY_BELOW:.0%} open water"),
        (wrong_dry, "yellow", f"dry-land answer, over {WET_ABOVE:.0%} open water"),
    ):
        if flagged.any():
            cells[flagged].boundary.plot(ax=axes[1], color=colour, linewidth=2, label=label)
    axes[1].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(picture, dpi=80)
    plt.close(figure)


def heldout_mosaic(folder: Path) -> Mosaic:
    """The AID held-out tiles (the bundled split's test rows) as one mosaic, seeded order."""
    from rsscgeo.modelfile import read_card

    names = [c.name for c in read_card(CANDIDATES["bundled before"]).classes]
    split = ROOT / "examples/models/aid_efficientnet_lite0/split.csv"
    tiles = aid_tiles(DATA / "aid150", names, split)
    test = [t for t in tiles if t.split == "test"]
    return write_mosaic(folder / "aid_heldout.tif", test, len(test), seed=0)


def mosaic_check(model: Path, mosaic: Mosaic) -> dict[str, float]:
    """``rsscgeo classify`` (defaults, no TTA) on the held-out mosaic, checked per tile.

    Tile labels are AID class indices; the candidates list AID's 30 classes first, in
    the same order, so the indices agree.
    """
    out = mosaic.path.with_name("map.tif")
    subprocess.run(
        [str(BIN / "rsscgeo"), "classify", str(mosaic.path), "--model", str(model), "--out",
         str(out), "--probabilities", "--overwrite"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return map_check(out, mosaic)


def score(model: Path, name: str, mosaic: Mosaic) -> dict[str, Any]:
    """Every figure of one model."""
    aid = evaluate(
        model,
        str(DATA / "aid150"),
        "--split",
        str(ROOT / "examples/models/aid_efficientnet_lite0/split.csv"),
    )
    nwpu = (
        evaluate(
            model,
            str(DATA / "nwpu12"),
            "--class-map",
            str(ROOT / "configs/class_maps/nwpu12_to_land_use_33.yaml"),
            "--split",
            str(DATA / "nwpu12/splits.csv"),
        )
        if "before" not in name
        else None
    )
    ucm = evaluate(
        model,
        str(DATA / "ucm10"),
        "--class-map",
        str(ROOT / "configs/class_maps/ucm10_to_aid.yaml"),
    )
    return {
        "model": str(model.relative_to(ROOT)),
        "aid_heldout": aid["overall_accuracy"],
        "aid_backoff": aid.get("backoff"),
        "aid_mosaic": mosaic_check(model, mosaic),
        "nwpu12_test": nwpu["accuracy"] if nwpu else None,
        "nwpu12_backoff": nwpu.get("backoff") if nwpu else None,
        "ucm10": ucm["accuracy"],
        "ucm10_uncertain": ucm["uncertain"],
        "ucm10_backoff": ucm.get("backoff"),
        "demo": demo(model, name),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a Markdown table."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def backoff(b: dict[str, Any] | None) -> str:
        return "-" if not b else f"{pct(b['coverage'])} / {pct(b['accuracy'])}"

    lines = [
        "| candidate | AID held-out | AID held-out mosaic: top-1 / Uncertain | NWPU12 test "
        "| UC Merced | UCM back-off coverage / accuracy | AID back-off "
        "| demo: named / by family / Pond | demo: water answers on dry land / Pond among "
        "them / dry answers on open water | demo's largest |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d, m = r["demo"], r["aid_mosaic"]
        lines.append(
            f"| {name} | {pct(r['aid_heldout'])} | {m['top1']:.3f} / {m['uncertain']:.1%} "
            f"| {pct(r['nwpu12_test'])} | {pct(r['ucm10'])} "
            f"| {backoff(r['ucm10_backoff'])} | {backoff(r['aid_backoff'])} "
            f"| {d['named']:.0%} / {d['by_family']:.0%} / {d['pond']:.0%} | {water_check(d)} "
            f"| {d['top']} |"
        )
    return "\n".join(lines) + "\n"


def water_check(demo: dict[str, Any]) -> str:
    """The demo's water check as table text ("-" for runs scored before it existed)."""
    if "water_answers" not in demo:
        return "-"
    return (
        f"{demo['water_answers_on_dry_land']} of {demo['water_answers']} / "
        f"{demo['pond_on_dry_land']} / {demo['dry_answers_on_water']} of {demo['cells']} cells"
    )


def main() -> None:
    """Score the models given (or the candidates) and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="name=path pairs [default: the candidates]")
    args = parser.parse_args()
    chosen = dict(m.split("=", 1) for m in args.models) if args.models else CANDIDATES
    # Candidates scored before (other sessions) stay in the tables; those given are rescored.
    saved = HERE / "results.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    with tempfile.TemporaryDirectory() as folder:
        mosaic = heldout_mosaic(Path(folder))
        for name, path in chosen.items():
            path = Path(path).resolve()
            if path.is_file():
                print(f"scoring {name}: {path}", flush=True)
                results[name] = score(path, name, mosaic)
    saved.write_text(json.dumps(results, indent=2))
    (HERE / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
