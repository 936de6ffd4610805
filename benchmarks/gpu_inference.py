"""GPU check of the classify inference path: fp16 autocast + channels-last vs the CPU.

Feeds the same real patches (cut from examples/scenes/naip_2020_rgbn.tif; written by
``--write-patches`` on a machine with rasterio) through
``rsscgeo.scene.inference.classify_patches`` on the CPU (fp32) and on CUDA (fp16
autocast, channels-last), then reports agreement and GPU patches/s::

    .venv/bin/python benchmarks/gpu_inference.py --write-patches patches.npy   # here
    python benchmarks/gpu_inference.py --patches patches.npy                    # on a GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, load_model
from rsscgeo.scene.inference import Preprocess, Scaling, classify_patches

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"


def write_patches(path: Path, patch: int = 150) -> None:
    """Cut every full RGB patch of the bundled scene into one uint8 array."""
    import rasterio

    with rasterio.open(SCENE) as src:
        image = src.read([1, 2, 3])
    rows, cols = image.shape[1] // patch, image.shape[2] // patch
    patches = [
        image[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
        for r in range(rows)
        for c in range(cols)
    ]
    np.save(path, np.stack(patches))
    print(f"wrote {len(patches)} patches to {path}")


def check(path: Path, batch_size: int, repeats: int) -> None:
    """Compare CPU and GPU probabilities and time the GPU."""
    patches = torch.from_numpy(np.load(path))  # uint8, as classify_scene passes them
    cpu = load_model(BUNDLED_MODEL)
    cpu.model.to(memory_format=torch.channels_last)
    scaling = Preprocess.build(
        cpu.card, Scaling.divide_by(cpu.card.input_scale, 3), torch.uint8, channels_last=True
    )
    expected = classify_patches(cpu, patches, scaling, batch_size)
    gpu_model = load_model(BUNDLED_MODEL).model.cuda().to(memory_format=torch.channels_last)
    gpu = LoadedModel(gpu_model, cpu.card)
    actual = classify_patches(gpu, patches, scaling, batch_size)
    agree = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    print(f"{torch.cuda.get_device_name()}: {len(patches)} real patches")
    print(
        f"max |p_gpu - p_cpu| = {(expected - actual).abs().max().item():.4f}, "
        f"top-1 agreement {agree:.3f}"
    )
    many = patches.repeat(repeats, 1, 1, 1)
    classify_patches(gpu, many[:batch_size], scaling, batch_size)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    classify_patches(gpu, many, scaling, batch_size)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"GPU: {len(many)} patches in {seconds:.2f} s = {len(many) / seconds:.0f} patches/s "
        f"(batch {batch_size}, from host tensors)"
    )


def main() -> None:
    """Parse options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-patches", type=Path)
    parser.add_argument("--patches", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    if args.write_patches:
        write_patches(args.write_patches)
    if args.patches:
        check(args.patches, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
