"""Scale policy for imagery finer or coarser than the model (issue 9, section 6).

UC Merced (0.3 m) scored three ways with a model trained on AID tiles (nominal 2 m):

* ``whole``: each 256 px image resized whole to the card's patch size (0.51 m/px), as
  ``rsscgeo evaluate`` does; the image covers 77 m, a quarter of an AID tile's width.
* ``model-gsd``: decimated to the card's GSD first (256 px x 0.3 m / 2 m = 38 px), then
  to the network input: the ground scale the model was trained at, with less detail.
* ``two-scales``: the mean of both probabilities.

    .venv/bin/python examples/scale_policy/measure.py MODEL [MODEL ...] --out examples/scale_policy

Writes ``results.csv`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from torchvision.transforms import v2

from rsscgeo.data.classmap import load_class_map, map_catalog
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.torch_dataset import TileDataset
from rsscgeo.modelfile import load_model
from rsscgeo.predict import card_transform
from rsscgeo.training.crossdomain import score_mapped
from rsscgeo.training.evaluate import predict_probabilities

UCM = Path("../shared/data/ucm10")
UCM_GSD = 0.3048
CLASS_MAP = Path("configs/class_maps/ucm10_to_aid.yaml")


def main() -> None:
    """Score each model under the three policies and write results.csv."""
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("examples/scale_policy"))
    args = parser.parse_args()
    rows = []
    for model_path in args.models:
        loaded = load_model(model_path)
        card = loaded.card
        mapped = map_catalog(open_catalog(UCM), load_class_map(CLASS_MAP), card.class_names)
        side_at_gsd = round(256 * UCM_GSD / (card.gsd or UCM_GSD))
        probs = {}
        for name, side in (("whole", card.patch_size), ("model-gsd", side_at_gsd)):
            transform = v2.Compose([v2.Resize((side, side), antialias=True), card_transform(card)])
            dataset = TileDataset(mapped.catalog, transform, card.input_scale, len(card.bands))
            probs[name], labels = predict_probabilities(loaded, dataset, description=name)
        probs["two-scales"] = (probs["whole"] + probs["model-gsd"]) / 2
        for name, p in probs.items():
            result = score_mapped(p, labels, mapped, card.uncertain_below, tta=False)
            rows.append(
                {
                    "model": str(model_path),
                    "policy": name,
                    "accuracy": round(result.accuracy, 4),
                    "average_accuracy": round(result.average_accuracy, 4),
                }
            )
            print(f"{model_path}  {name:10s}  accuracy {result.accuracy:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
