"""Simulated users adapting the bundled model: suggested against random labels (issue 19).

For each labelled dataset that the model never trained on as a scene:

* **UC Merced** (``../shared/data/ucm10``, 10 classes x 100 images), and
* **NWPU12 test rows** (``../shared/data/nwpu12``, 12 classes x 150 images; the bundled
  model trained on NWPU12's train rows, so this is the easier case),

the images are laid out as one georeferenced mosaic, one image per patch of the model
(resized to its patch side, at its GSD; seeded order), so the truth of every patch is
known. Then, for each budget of k labels per class (1, 3, 5, 10, 20):

1. **suggested**: ``rsscgeo classify MOSAIC --out map.gpkg --suggest k*C`` (C classes), the
   picks labelled from the truth; **random**: k patches per class drawn at random;
2. ``rsscgeo adapt MODEL MOSAIC --labels picks.gpkg --out adapted.safetensors``;
3. ``rsscgeo classify MOSAIC --model adapted.safetensors``, scored on the patches not
   labelled: the top-1 class must be the user's label for that class (or one of its
   classes, when the user named a family);
4. ``rsscgeo evaluate adapted.safetensors`` on the AID held-out split: accuracy on the AID
   classes that no label named, against the base model's on the same images.

The simulated user names a patch the way the QGIS drop-down invites: the model's class
when the dataset's class has exactly one counterpart in the model (the class maps of
``configs/class_maps``), else the dataset's own name, which ``adapt`` adds as a new class.

Writes ``results.json``, ``results.md`` and ``accuracy.png`` next to this script::

    .venv/bin/python examples/adapt/measure.py [--datasets ucm10,nwpu12] [--budgets 1,3,5,10,20]
        [--seeds 3] [--first-seed 0]

With ``--seeds S`` every figure is the mean of S simulated users (seeds 0..S-1, or S
from ``--first-seed``, for the random draws, the suggestion's k-means and ``adapt``),
shown with its spread.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import yaml
from affine import Affine
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from rsscgeo.modelfile import BUNDLED_MODEL, ModelCard, read_card  # noqa: E402

BUDGETS = (1, 3, 5, 10, 20)
ORIGIN = (500_000.0, 4_500_000.0)  # EPSG:32633, any place: the mosaic is synthetic
DATASETS = {
    "ucm10": (DATA / "ucm10", ROOT / "configs/class_maps/ucm10_to_aid.yaml", None),
    "nwpu12": (
        DATA / "nwpu12",
        ROOT / "configs/class_maps/nwpu12_to_land_use_33.yaml",
        DATA / "nwpu12/splits.csv",
    ),
}


@dataclass
class Mosaic:
    """A written mosaic and the dataset class under each patch (rows x cols)."""

    path: Path
    truth: np.ndarray  # dataset class names, rows x cols
    names: dict[str, str]  # dataset class -> the name the simulated user gives
    # The model's classes whose top-1 answer is the user's name: the class itself, or
    # every class of the family when the name is a family (NWPU12's residential).
    right: dict[str, set[str]]


def right_answers(names: dict[str, str], card: ModelCard) -> dict[str, set[str]]:
    """For each user name, the top-1 classes that count as that name (see ``Mosaic``)."""
    return {
        name: {name} | {c.name for c in card.classes if c.parent == name} for name in names.values()
    }


def user_names(class_map: Path, classes: list[str], model_classes: list[str]) -> dict[str, str]:
    """The label a user picks for each dataset class (see the module docstring)."""
    mapping = yaml.safe_load(class_map.read_text()) or {}
    names = {}
    for name in classes:
        target = mapping.get(name)
        targets = [target] if isinstance(target, str) else list(target or [])
        single = len(targets) == 1 and targets[0] in model_classes
        names[name] = targets[0] if single else name.replace("_", " ").title().replace(" ", "")
    return names


def images(folder: Path, split_csv: Path | None) -> list[tuple[Path, str]]:
    """Every ``<class>/*`` image (only the ``test`` rows when a split is given)."""
    test: set[str] | None = None
    if split_csv is not None:
        rows = [line.split(",") for line in split_csv.read_text().splitlines()[1:]]
        test = {path for path, split in rows if split.strip() == "test"}
    found = []
    for path in sorted(folder.glob("*/*")):
        key = f"{path.parent.name}/{path.name}"
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif") and (
            test is None or key in test
        ):
            found.append((path, path.parent.name))
    return found


def write_mosaic(path: Path, tiles: list[tuple[Path, str]], patch: int, gsd: float) -> np.ndarray:
    """The tiles in seeded order on a ``ceil(sqrt(N))``-column grid; the truth grid."""
    order = list(range(len(tiles)))
    random.Random(0).shuffle(order)
    count = len(tiles)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    truth = np.full((rows, cols), "", dtype=object)
    pixels = np.zeros((3, rows * patch, cols * patch), np.uint8)
    for i, index in enumerate(order):
        tile_path, name = tiles[index]
        r, c = divmod(i, cols)
        with Image.open(tile_path) as image:
            rgb = image.convert("RGB").resize((patch, patch), Image.Resampling.BILINEAR)
        pixels[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = np.asarray(
            rgb
        ).transpose(2, 0, 1)
        truth[r, c] = name
    profile = {
        "driver": "GTiff",
        "width": cols * patch,
        "height": rows * patch,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1]),
        "tiled": True,
        "compress": "deflate",
        "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        mask = np.zeros((rows * patch, cols * patch), np.uint8)
        for i in range(count):
            r, c = divmod(i, cols)
            mask[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 255
        dst.write_mask(mask)  # cells past the last tile are nodata, never classified
    return truth


def run(*args: Any) -> None:
    """An ``rsscgeo`` command; its last output lines on failure."""
    result = subprocess.run([str(BIN / "rsscgeo"), *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"rsscgeo {args[0]} failed:\n{result.stderr[-2000:]}")


def classified(gpkg: Path) -> gpd.GeoDataFrame:
    """The map layer of a classify GeoPackage (named after the file)."""
    return gpd.read_file(gpkg, layer=gpkg.stem)


def labelled_layer(folder: Path, mosaic: Mosaic, cells: list[tuple[int, int]], crs: Any) -> Path:
    """The picked patches as points at their centres, labelled from the truth as the user would."""
    with rasterio.open(mosaic.path) as src:
        transform, side = src.transform, src.width / mosaic.truth.shape[1]
    points = [transform * ((c + 0.5) * side, (r + 0.5) * side) for r, c in cells]
    frame = gpd.GeoDataFrame(
        {"label": [mosaic.names[mosaic.truth[r, c]] for r, c in cells]},
        geometry=gpd.points_from_xy([p[0] for p in points], [p[1] for p in points]),
        crs=crs,
    )
    path = folder / "labels.gpkg"
    frame.to_file(path, layer="labels", driver="GPKG")
    return path


def score(
    gpkg: Path, mosaic: Mosaic, labelled: set[tuple[int, int]], among: set[str] | None = None
) -> float:
    """Share of the unlabelled patches whose top-1 class is the user's name for them.

    ``among``: only the patches of these dataset classes (default: all).
    """
    frame = classified(gpkg)
    hits = [
        top in mosaic.right[mosaic.names[mosaic.truth[r, c]]]
        for r, c, top in frame[["row", "col", "top1"]].to_numpy()
        if (r, c) not in labelled
        and mosaic.truth[r, c]
        and (among is None or mosaic.truth[r, c] in among)
    ]
    return float(np.mean(hits))


def aid_unlabelled(model: Path, names: set[str]) -> float:
    """Accuracy on the AID held-out images of classes no label named."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "m.json"
        split = ROOT / "examples/models/aid_efficientnet_lite0/split.csv"
        run("evaluate", model, DATA / "aid150", "--split", split, "--no-tta", "--json", out)
        metrics = json.loads(out.read_text())
    confusion = np.asarray(metrics["confusion_matrix"])  # rows: true class
    keep = [i for i, c in enumerate(metrics["classes"]) if c not in names and confusion[i].sum()]
    return float(confusion[keep, keep].sum() / confusion[keep].sum())


def build_mosaic(name: str, model: Path, work: Path) -> tuple[Mosaic, list[str], Path]:
    """Dataset ``name``'s mosaic for ``model``, its classes, and the base model's map of it."""
    folder, class_map, split = DATASETS[name]
    card = read_card(model)
    tiles = images(folder, split)
    classes = sorted({c for _, c in tiles})
    mosaic_path = work / f"{name}.tif"
    truth = write_mosaic(mosaic_path, tiles, card.patch_size, card.gsd or 1.0)
    names = user_names(class_map, classes, card.class_names)
    mosaic = Mosaic(mosaic_path, truth, names, right_answers(names, card))
    base_map = work / "base.gpkg"
    run("classify", mosaic_path, "--model", model, "--out", base_map, "--overwrite")
    return mosaic, classes, base_map


def suggested_cells(
    mosaic: Mosaic, model: Path, count: int, folder: Path, seed: int
) -> list[tuple[int, int]]:
    """The patches ``classify --suggest count`` picks on the mosaic."""
    picks_map = folder / "map.gpkg"
    run("classify", mosaic.path, "--model", model, "--out", picks_map, "--suggest", count,
        "--seed", seed)  # fmt: skip
    picks = gpd.read_file(picks_map, layer="to_label")
    return list(zip(picks["row"], picks["col"], strict=True))


def random_cells(
    mosaic: Mosaic, classes: list[str], k: int, rng: random.Random
) -> list[tuple[int, int]]:
    """``k`` patches of each class, drawn at random (the truth decides the class)."""
    by_class: dict[str, list[tuple[int, int]]] = {}
    for (r, c), truth_name in np.ndenumerate(mosaic.truth):
        if truth_name:
            by_class.setdefault(truth_name, []).append((r, c))
    return [cell for cls in classes for cell in rng.sample(by_class[cls], k)]


def one_user(
    mosaic: Mosaic, model: Path, cells_for: Any, crs: Any, run_dir: Path, seed: int
) -> dict[str, Any]:
    """Pick (``cells_for``), label from the truth, adapt, reclassify and score, once."""
    started = time.perf_counter()
    run_dir.mkdir()
    cells = cells_for(run_dir)
    labels = labelled_layer(run_dir, mosaic, cells, crs)
    adapted = run_dir / "adapted.safetensors"
    run("adapt", model, mosaic.path, "--labels", labels, "--out", adapted, "--seed", seed)
    seconds = time.perf_counter() - started
    after = run_dir / "after.gpkg"
    run("classify", mosaic.path, "--model", adapted, "--out", after)
    return {
        "accuracy": score(after, mosaic, set(cells)),
        "labels": len(cells),
        "aid_unlabelled_classes": aid_unlabelled(adapted, set(mosaic.names.values())),
        "seconds_suggest_and_adapt": seconds,
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over seeded runs, with the runs themselves."""
    figures = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    figures["accuracy_std"] = float(np.std([r["accuracy"] for r in runs]))
    figures["runs"] = runs
    return figures


def measure(name: str, model: Path, budgets: list[int], work: Path, seeds: range) -> dict[str, Any]:
    """Every figure of one dataset, each the mean of the simulated users ``seeds``."""
    mosaic, classes, base_map = build_mosaic(name, model, work)
    crs = classified(base_map).crs
    results: dict[str, Any] = {"names": mosaic.names, "base": score(base_map, mosaic, set())}
    results["aid_base"] = aid_unlabelled(model, set(mosaic.names.values()))
    results["seeds"] = len(seeds)
    if seeds.start:
        results["first_seed"] = seeds.start
    rngs = {seed: random.Random(seed) for seed in seeds}
    for k in budgets:
        for strategy in ("suggested", "random"):
            runs = []
            for seed in seeds:
                if strategy == "suggested":
                    count = k * len(classes)

                    def cells_for(folder: Path, count: int = count, seed: int = seed) -> Any:
                        return suggested_cells(mosaic, model, count, folder, seed)
                else:

                    def cells_for(folder: Path, k: int = k, seed: int = seed) -> Any:
                        return random_cells(mosaic, classes, k, rngs[seed])

                run_dir = work / f"{name}-{k}-{strategy}-{seed}"
                runs.append(one_user(mosaic, model, cells_for, crs, run_dir, seed))
                print(name, k, strategy, seed, runs[-1], flush=True)
            results.setdefault(strategy, {})[str(k)] = pooled(runs)
    return results


def spread(figures: dict[str, Any]) -> str:
    """Accuracy, with its spread over seeds when there were several."""
    if len(figures.get("runs", [])) > 1:
        return f"{figures['accuracy']:.3f} ± {figures['accuracy_std']:.3f}"
    return f"{figures['accuracy']:.3f}"


def write_outputs(results: dict[str, Any]) -> None:
    """results.json, results.md (a table) and accuracy.png (a chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    earlier = HERE / "results.json"
    if earlier.exists():  # keep the datasets measured by earlier runs
        results = json.loads(earlier.read_text()) | results
    earlier.write_text(json.dumps(results, indent=2))
    lines = []
    for name, r in results.items():
        lines += [
            f"**{name}**: base model {r['base']:.3f} (top-1 = the user's name); AID held-out "
            f"on the classes no label names: base {r['aid_base']:.3f}; mean of "
            f"{r.get('seeds', 1)} seeded users (± their standard deviation)",
            "",
            "| labels per class | suggested | random | AID (not labelled), suggested / random |",
            "|---|---|---|---|",
        ]
        for k in sorted(map(int, r["suggested"])):
            s, q = r["suggested"][str(k)], r["random"][str(k)]
            lines.append(
                f"| {k} | {spread(s)} | {spread(q)} "
                f"| {s['aid_unlabelled_classes']:.3f} / {q['aid_unlabelled_classes']:.3f} |"
            )
        lines.append("")
    (HERE / "results.md").write_text("\n".join(lines))
    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for axis, (name, r) in zip(axes[0], results.items(), strict=True):
        budgets = sorted(map(int, r["suggested"]))
        for strategy, style in (("suggested", "o-"), ("random", "s--")):
            axis.plot(budgets, [r[strategy][str(k)]["accuracy"] for k in budgets], style,
                      label=strategy)  # fmt: skip
        axis.axhline(r["base"], color="grey", lw=1, label="base model")
        axis.set(title=name, xlabel="labels per class", ylabel="accuracy (unlabelled patches)",
                 xscale="log", xticks=budgets, xticklabels=budgets)  # fmt: skip
        axis.legend()
    figure.tight_layout()
    figure.savefig(HERE / "accuracy.png", dpi=120)


def main() -> None:
    """Measure the datasets asked for and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ucm10,nwpu12")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--seeds", type=int, default=1, help="simulated users per figure")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first user's seed (more users later)"
    )
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.datasets.split(","):
            folder = Path(work) / name
            folder.mkdir()
            results[name] = measure(name, args.model, budgets, folder, seeds)
    write_outputs(results)


if __name__ == "__main__":
    main()
