"""The sources training loop against the model-only train step (issue 18's target: 0.8x).

* **model-only**: the network's train step alone on one pre-augmented, normalised,
  channels-last batch held in memory: forward, partial-label loss, backward, AdamW step.
  No data, no augmentation, no framework: the upper bound of the loop.
* **loop**: what ``rsscgeo train`` runs for a ``data.sources`` config: real AID and
  NWPU12 tiles from the uint8 cache, balanced sampling, batched augmentation
  (``BatchAugment``), ``MultiSourceTask`` under ``lightning.Trainer.fit`` with its
  logger, checkpointing and progress bar.

Both at each precision asked for (``32-true``, ``bf16-mixed``: autocast on the CPU).
Timing covers whole steps after ``--warmup`` steps. Run it on a quiet machine.

    .venv/bin/python benchmarks/train_loop.py --config configs/land_use_33/joint.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rsscgeo.taxonomy import load_taxonomy
from rsscgeo.training import multisource
from rsscgeo.training.config import load_config
from rsscgeo.training.run import build_trainer
from rsscgeo.training.sources import balanced_weights, open_source, rows


class Clock(L.Callback):
    """Reads the clock after every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *_: Any, **__: Any) -> None:
        """Note when a step ended."""
        self.times.append(time.perf_counter())


def model_only(
    task: multisource.MultiSourceTask,
    batch: dict[str, torch.Tensor],
    steps: int,
    warmup: int,
    precision: str,
) -> float:
    """Images/s of the bare train step on one batch."""
    model = task.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = task.augment.train(batch["tiles"])
    targets = batch["targets"]
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    times = []
    for _ in range(warmup + steps):
        with autocast:
            loss = multisource.partial_label_loss(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    return len(x) * steps / (times[-1] - times[warmup - 1])


def loop(config_path: Path, precision: str, steps: int, warmup: int) -> tuple[float, float]:
    """Images/s of the full loop, and of model-only on one of its batches."""
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            config_path,
            [
                f"out_dir={folder}",
                f"trainer.precision={precision}",
                "trainer.limit_val_batches=0",
                f"trainer.limit_train_batches={warmup + steps}",
                "optim.epochs=1",
            ],
        )
        taxonomy = load_taxonomy(config.data.taxonomy)  # type: ignore[arg-type]
        sources = [open_source(s, taxonomy, config.seed) for s in config.data.sources]
        train = rows(sources, "train", len(taxonomy.leaves), config.data.cache_size)
        task = multisource.build_task(
            config, [s.config.name for s in sources], len(taxonomy.leaves)
        )
        weights = balanced_weights(train, [s.config.weight for s in sources])
        train_loader, _ = multisource.loaders(config, train, None, weights)
        clock = Clock()
        trainer = build_trainer(config)
        trainer.callbacks.append(clock)  # type: ignore[attr-defined]
        trainer.fit(task, train_loader)
        batch_size = config.optim.batch_size
        loop_rate = batch_size * steps / (clock.times[-1] - clock.times[warmup - 1])
        batch = train.__getitems__(range(batch_size))
        bare = model_only(task, batch, steps, warmup, precision)
    return loop_rate, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/land_use_33/joint.yaml"))
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"threads {torch.get_num_threads()}, config {args.config}")
    print("| precision | model-only img/s | loop img/s | loop / model-only |")
    print("|---|---|---|---|")
    for precision in args.precision:
        loop_rate, bare = loop(args.config, precision, args.steps, args.warmup)
        print(
            f"| {precision} | {bare:.1f} | {loop_rate:.1f} | {loop_rate / bare:.2f} |", flush=True
        )


if __name__ == "__main__":
    main()
