"""Small builders shared by test modules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

TINY = {
    "seed": 0,
    "model": {
        "architecture": "tf_efficientnet_lite0",
        "init": {"kind": "imagenet-offline"},
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
    "train_transform": {"resize": 64, "crop": 56},
    "eval_transform": {"resize": 64, "crop": None},
    "optim": {"lr": 1e-3, "warmup_epochs": 0.5, "milestones": [1], "epochs": 1, "batch_size": 4},
    "trainer": {"num_workers": 0, "limit_train_batches": 2, "limit_val_batches": 1},
}


def write_config(
    path: Path, dataset: Path | str, protocol: str = "finetune", **sections: Any
) -> Path:
    """A tiny, fast training config for ``dataset`` (deep-merged ``sections``)."""
    config: dict[str, Any] = {
        "name": f"test-{protocol}",
        "protocol": protocol,
        "out_dir": str(path.parent / f"run-{protocol}"),
        "data": {"path": str(dataset)},
        **{k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()},
    }
    if protocol == "scratch":
        config["model"] = {**config["model"], "init": {"kind": "scratch"}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


class SlowMeanColour(torch.nn.Module):
    """Mean colour + linear layer that sleeps per batch, so a run lasts long enough to be
    interrupted. Lives here (not in a test module) so Dask worker processes started with
    ``tests/`` on their PYTHONPATH can unpickle it."""

    def __init__(self, seconds: float = 0.05, classes: int = 30) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3, classes)
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.head(x.mean(dim=(2, 3)))
