"""Probe ``adapt`` settings at one budget: the "Probes" tables of this folder's README.

Builds a dataset's mosaic as ``measure.py`` does, picks k labels per class (random, or
``classify --suggest``), and for each named variant of ``AdaptOptions`` adapts the
model in this process, reclassifies the mosaic and prints one JSON line: the accuracy
on the unlabelled patches and AID held-out accuracy on the classes no label names.

    .venv/bin/python examples/adapt/probe.py --k 10 default lr3e-4
    .venv/bin/python examples/adapt/probe.py --k 3 --picks suggested default
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
}


def main() -> None:
    """Probe the variants named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--dataset", default="ucm10", choices=sorted(measure.DATASETS))
    parser.add_argument("--k", type=int, default=5, help="labels per class")
    parser.add_argument("--picks", default="random", choices=["random", "suggested"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the random picks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mosaic, classes, base_map = measure.build_mosaic(args.dataset, BUNDLED_MODEL, work)
        if args.picks == "suggested":
            cells = measure.suggested_cells(
                mosaic, BUNDLED_MODEL, args.k * len(classes), work, args.seed
            )
        else:
            cells = measure.random_cells(mosaic, classes, args.k, random.Random(args.seed))
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
                "mosaic": round(measure.score(after, mosaic, set(cells)), 3),
                "aid_unlabelled": round(measure.aid_unlabelled(out, set(mosaic.names.values())), 3),
                "adapt_s": round(seconds),
            }
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
