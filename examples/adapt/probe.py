"""Probe ``adapt`` settings at one budget: the "Probes" tables of this folder's README.

Builds a dataset's mosaic as ``measure.py`` does, picks k labels per class (random, or
``classify --suggest``), and for each named variant of ``AdaptOptions`` adapts the
model in this process, reclassifies the mosaic and prints one JSON line: the accuracy
on the unlabelled patches and AID held-out accuracy on the classes no label names.

    .venv/bin/python examples/adapt/probe.py --k 10 default lr3e-4
    .venv/bin/python examples/adapt/probe.py --k 3 --picks suggested default
    .venv/bin/python examples/adapt/probe.py --k 10 --label-classes 5 default

With ``--label-classes M`` (random picks), only M of the dataset's classes get labels,
as when a user labels what the map gets wrong and leaves the rest: the line then adds
the accuracy on the scene's patches of the other classes, before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import measure  # this folder's: run as a script, its folder is on sys.path

from rsscgeo.adapt.fit import FitSettings
from rsscgeo.adapt.labels import read_label_rows
from rsscgeo.adapt.run import AdaptOptions, adapt_model
from rsscgeo.modelfile import BUNDLED_MODEL, load_model

VARIANTS = {
    "default": AdaptOptions(),
    "lr3e-4": AdaptOptions(fit=FitSettings(lr=3e-4)),
    "rehearsal-2x1": AdaptOptions(rehearsal_views=2, rehearsal_weight=1.0),
    "rehearsal-2x2": AdaptOptions(rehearsal_views=2, rehearsal_weight=2.0),
    "rehearsal-4x2": AdaptOptions(rehearsal_views=4, rehearsal_weight=2.0),
    "rehearsal-4x3": AdaptOptions(rehearsal_views=4, rehearsal_weight=3.0),
    "rehearsal-4x4": AdaptOptions(rehearsal_views=4, rehearsal_weight=4.0),
    "rehearsal-4x4-lr3e-4": AdaptOptions(
        rehearsal_views=4, rehearsal_weight=4.0, fit=FitSettings(lr=3e-4)
    ),
    "classifier-only": AdaptOptions(blocks=0),
    "no-scene-distillation": AdaptOptions(distill_patches=0),
    "scene-distillation-128": AdaptOptions(distill_patches=128),
    "scene-weight-1": AdaptOptions(scene_weight=1.0),
    "no-scene-distillation-4x3": AdaptOptions(distill_patches=0, rehearsal_weight=3.0),
}


def main() -> None:
    """Probe the variants named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--dataset", default="ucm10", choices=sorted(measure.DATASETS))
    parser.add_argument("--k", type=int, default=5, help="labels per class")
    parser.add_argument("--picks", default="random", choices=["random", "suggested"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the random picks")
    parser.add_argument(
        "--label-classes", type=int, help="label only this many classes (random picks)"
    )
    args = parser.parse_args()
    if args.label_classes is not None and args.picks != "random":
        parser.error("--label-classes needs --picks random")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mosaic, classes, base_map = measure.build_mosaic(args.dataset, BUNDLED_MODEL, work)
        if args.picks == "suggested":
            cells = measure.suggested_cells(
                mosaic, BUNDLED_MODEL, args.k * len(classes), work, args.seed
            )
        else:
            rng = random.Random(args.seed)
            if args.label_classes is not None:
                classes = sorted(rng.sample(classes, args.label_classes))
            cells = measure.random_cells(mosaic, classes, args.k, rng)
        others = {c for c in mosaic.names if c not in classes}
        named = {mosaic.names[c] for c in classes}  # as measure.py: the classes labelled
        crs = measure.classified(base_map).crs
        labels = read_label_rows(measure.labelled_layer(work, mosaic, cells, crs), None, "label")
        loaded = load_model(BUNDLED_MODEL)
        for name in args.variants:
            started = time.perf_counter()
            out = work / f"{name}.safetensors"
            adapt_model(
                loaded, "bundled", [mosaic.path], labels, out, VARIANTS[name], progress=False
            )
            seconds = time.perf_counter() - started
            after = work / f"{name}.gpkg"
            measure.run("classify", mosaic.path, "--model", out, "--out", after, "--overwrite")
            figures = {
                "dataset": args.dataset,
                "k": args.k,
                "picks": args.picks,
                "variant": name,
                "mosaic": round(measure.score(after, mosaic, set(cells), set(classes)), 3),
                "aid_unlabelled": round(measure.aid_unlabelled(out, named), 3),
                "adapt_s": round(seconds),
            }
            if others:
                figures["mosaic_other_classes"] = round(
                    measure.score(after, mosaic, set(cells), others), 3
                )
                figures["base_other_classes"] = round(
                    measure.score(base_map, mosaic, set(cells), others), 3
                )
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
