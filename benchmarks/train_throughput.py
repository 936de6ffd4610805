"""Training throughput: rsscgeo's Lightning path against a bare PyTorch loop.

Both paths train the config's network (default ``configs/aid_efficientnet_lite0.yaml``)
on the SAME pre-built in-memory batches of real AID tiles, so data loading is out of the
comparison and the difference is framework overhead:

* framework: :class:`rsscgeo.training.task.SceneClassificationTask` driven by
  ``lightning.Trainer.fit``, built with ``rsscgeo.training.run.build_task``/``build_trainer`` as a
  real ``rsscgeo train`` run builds it (CSV logger, checkpoint callback, progress bar,
  per-step training metrics), writing into a temporary folder;
* bare: ``timm.create_model`` + ``torch.optim.Adam`` + ``F.cross_entropy`` in a plain loop.

Timing covers whole step cycles: the clock is read after every step (for Lightning in
``on_train_batch_end``), and the timed span runs from the end of the last warm-up step to
the end of the last timed step. Set-up, validation and the end-of-epoch checkpoint are
outside it. Runs on the CPU with the same torch thread count for both paths; each path is
measured ``--rounds`` times in alternating order so that drift favours neither.

Example::

    .venv/bin/python benchmarks/train_throughput.py --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rsscgeo.data.catalog import Catalog
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.torch_dataset import TileDataset
from rsscgeo.data.transforms import build_transform
from rsscgeo.training.config import RunConfig, load_config
from rsscgeo.training.run import build_task, build_trainer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "aid_efficientnet_lite0.yaml"

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Measurement:
    """Timings of one path over the timed steps."""

    name: str
    step_seconds: list[float]
    batch_size: int

    @property
    def images_per_second(self) -> float:
        """Images trained per second over the whole timed span."""
        return len(self.step_seconds) * self.batch_size / sum(self.step_seconds)

    @property
    def median_step_ms(self) -> float:
        """Median wall time of one step in milliseconds."""
        return 1000.0 * statistics.median(self.step_seconds)


def build_batches(config: RunConfig, num_batches: int, batch_size: int, seed: int) -> list[Batch]:
    """Pre-build training batches from the config's dataset and train transform.

    Args:
        config: The run config (data path, bands, scale, train transform, mean/std).
        num_batches: How many distinct batches to build.
        batch_size: Images per batch.
        seed: Seeds the choice of tiles and the random augmentations.

    Returns:
        Batches as ``{'image': (B, C, H, W) float32, 'label': (B,) int64}``.
    """
    catalog: Catalog = open_catalog(config.data.path)
    mean, std = config.model.mean, config.model.std
    transform = build_transform(config.train_transform, mean, std, train=True)
    dataset = TileDataset(catalog, transform, config.data.input_scale, len(config.data.bands))
    generator = torch.Generator().manual_seed(seed)
    L.seed_everything(seed, verbose=False)  # the transforms draw from the global RNGs
    needed = num_batches * batch_size
    order = torch.randperm(len(dataset), generator=generator)
    indices = order.repeat(needed // len(dataset) + 1)[:needed].tolist()
    batches = []
    for start in range(0, needed, batch_size):
        samples = [dataset[i] for i in indices[start : start + batch_size]]
        batches.append(
            {
                "image": torch.stack([s["image"] for s in samples]).contiguous(),
                "label": torch.stack([s["label"] for s in samples]),
            }
        )
    return batches


def schedule(batches: Sequence[Batch], total: int) -> list[Batch]:
    """The first ``total`` batches of ``batches`` repeated in order (no copies)."""
    return [batches[i % len(batches)] for i in range(total)]


class _StepClock(L.Callback):
    """Reads the clock after every training step and checks the thread count."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.threads: set[int] = set()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Record the time at which a step (forward, backward, optimiser) finished."""
        self.stamps.append(time.perf_counter())
        self.threads.add(torch.get_num_threads())


def run_framework(
    config: RunConfig, batches: Sequence[Batch], warmup: int, steps: int, out_dir: Path
) -> tuple[Measurement, set[int]]:
    """Train with rsscgeo's Lightning task and trainer; time the steps after warm-up.

    Args:
        config: The run config; ``out_dir`` and the epoch count are replaced here.
        batches: The pre-built batches.
        warmup: Untimed steps first.
        steps: Timed steps.
        out_dir: Where the run's logger and checkpoints write (a temporary folder).

    Returns:
        The measurement and the torch thread counts seen during training.
    """
    run_config = config.model_copy(
        update={
            "out_dir": out_dir,
            "optim": config.optim.model_copy(update={"epochs": 1}),
            "trainer": config.trainer.model_copy(update={"accelerator": "cpu", "devices": 1}),
        }
    )
    L.seed_everything(config.seed, workers=True, verbose=False)
    catalog = open_catalog(config.data.path)
    task = build_task(run_config, catalog)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # as in a real run
    trainer = build_trainer(run_config)
    clock = _StepClock()
    trainer.callbacks.append(clock)
    # batch_size=None: the loader yields the pre-built dict batches as they are.
    loader = DataLoader(schedule(batches, warmup + steps), batch_size=None, shuffle=False)
    trainer.fit(task, train_dataloaders=loader)
    stamps = clock.stamps
    if len(stamps) != warmup + steps:
        raise RuntimeError(f"Lightning ran {len(stamps)} steps, expected {warmup + steps}.")
    timed = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    return Measurement("rsscgeo (Lightning)", timed, len(batches[0]["label"])), clock.threads


def run_bare(
    config: RunConfig, batches: Sequence[Batch], warmup: int, steps: int, num_classes: int
) -> Measurement:
    """Train the same architecture in a plain PyTorch loop; time the steps after warm-up.

    Args:
        config: The run config (architecture, learning rate, seed).
        batches: The pre-built batches.
        warmup: Untimed steps first.
        steps: Timed steps.
        num_classes: Outputs of the classifier.

    Returns:
        The measurement.
    """
    torch.manual_seed(config.seed)
    model = timm.create_model(config.model.architecture, num_classes=num_classes)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    stamps = []
    for batch in schedule(batches, warmup + steps):
        x, y = batch["image"], batch["label"]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    timed = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    return Measurement("bare PyTorch loop", timed, len(batches[0]["label"]))


def pooled(runs: Sequence[Measurement]) -> Measurement:
    """All timed steps of several measurements of one path as one measurement."""
    steps = [t for m in runs for t in m.step_seconds]
    return Measurement(runs[0].name, steps, runs[0].batch_size)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config YAML")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--num-batches", type=int, default=12, help="distinct pre-built batches")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="tile choice and augmentations")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements per path, order alternating"
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.num_batches, args.rounds) < 1:
        parser.error("--steps, --warmup, --num-batches and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Build the batches, run both paths and print the comparison."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    config = load_config(args.config)
    if not config.data.path.is_absolute():
        # Config paths are relative to the repository root, where `rsscgeo train` runs.
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"path": REPO / config.data.path})}
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batch_size = args.batch_size or config.optim.batch_size
    num_classes = len(open_catalog(config.data.path).classes)

    started = time.perf_counter()
    batches = build_batches(config, args.num_batches, batch_size, args.seed)
    shape = "x".join(str(s) for s in batches[0]["image"].shape)
    print(
        f"config {args.config.name}: {config.model.architecture}, {num_classes} classes; "
        f"{args.num_batches} batches of {shape} built in {time.perf_counter() - started:.1f} s"
    )
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__}; "
        f"torch threads {threads}; warm-up {args.warmup} + timed {args.steps} steps per path"
    )

    bare_runs: list[Measurement] = []
    framework_runs: list[Measurement] = []
    for round_ in range(args.rounds):
        # Alternate the order (bare, framework, framework, bare, ...) so that a slow drift
        # of the machine's speed does not favour one path.
        order = ("bare", "framework") if round_ % 2 == 0 else ("framework", "bare")
        for path in order:
            if path == "bare":
                bare_runs.append(run_bare(config, batches, args.warmup, args.steps, num_classes))
                continue
            with tempfile.TemporaryDirectory(prefix="rsscgeo-bench-") as tmp:
                measured, seen = run_framework(config, batches, args.warmup, args.steps, Path(tmp))
            framework_runs.append(measured)
            if seen != {threads}:
                print(f"WARNING: torch threads changed during the Lightning run: {sorted(seen)}")

    print()
    print(f"{'round':<6} {'path':<22} {'images/s':>9} {'median step ms':>15}")
    for round_, pair in enumerate(zip(bare_runs, framework_runs, strict=True), start=1):
        for m in pair:
            print(f"{round_:<6} {m.name:<22} {m.images_per_second:>9.2f} {m.median_step_ms:>15.1f}")
    bare = pooled(bare_runs)
    framework = pooled(framework_runs)
    if args.rounds > 1:
        for m in (bare, framework):
            print(f"{'all':<6} {m.name:<22} {m.images_per_second:>9.2f} {m.median_step_ms:>15.1f}")
    overhead = (bare.images_per_second - framework.images_per_second) / bare.images_per_second
    print(f"framework overhead: {100 * overhead:.1f} %  ((bare - framework) / bare)")


if __name__ == "__main__":
    main()
