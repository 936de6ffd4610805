"""Classify a few image tiles with the bundled model and print the top-3 classes.

    .venv/bin/python examples/classify_images.py ../shared/data/aid150/Beach/beach_1.jpg ...

With no arguments it takes one real AID image from each of five classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import rsscgeo
from rsscgeo.data.images import read_image
from rsscgeo.modelfile import BUNDLED_MODEL
from rsscgeo.predict import card_transform

AID = Path(__file__).resolve().parents[2] / "shared" / "data" / "aid150"


def main(paths: list[Path]) -> None:
    """Print the model's top-3 classes and probabilities for each image."""
    loaded = rsscgeo.load_model(BUNDLED_MODEL)
    card = loaded.card
    # The card says how the model saw held-out tiles: scale, resize/crop, mean/std.
    transform = card_transform(card)
    batch = torch.stack(
        [transform(torch.from_numpy(read_image(p)).float() / card.input_scale) for p in paths]
    )
    with torch.inference_mode():
        probabilities = loaded.model(batch).softmax(dim=1)
    for path, probs in zip(paths, probabilities, strict=True):
        top = probs.topk(3)
        ranked = ", ".join(
            f"{card.class_names[i]} {p:.2f}"
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        print(f"{path.parent.name}/{path.name}: {ranked}")


if __name__ == "__main__":
    chosen = [Path(a) for a in sys.argv[1:]] or [
        sorted((AID / name).glob("*.jpg"))[0]
        for name in ("Airport", "Beach", "Forest", "Port", "Stadium")
    ]
    main(chosen)
