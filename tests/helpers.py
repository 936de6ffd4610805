"""Small builders shared by test modules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from affine import Affine
from click.testing import Result

# The previous bundled model: a flat card (30 AID classes, no families), calibrated. Tests
# of flat behaviour and of the Uncertain class alone use it, whatever is bundled now.
FLAT_MODEL = (
    Path(__file__).resolve().parents[1] / "examples/models/aid_efficientnet_lite0/model.safetensors"
)

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


def write_raster(
    path: Path, pixels: np.ndarray, crs: str | None, transform: Affine, **profile: object
) -> Path:
    """Write a bands x rows x cols array as a GeoTIFF (``profile``: extra creation options)."""
    count, height, width = pixels.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=pixels.dtype.name,
        crs=crs,
        transform=transform,
        **profile,
    ) as dst:
        dst.write(pixels)
    return path


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Non-zero exit, no traceback, and one ``Error:`` line naming ``needles`` at the end.

    Progress bars of work done before the failure may precede the error line.
    """
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    text = result.output.strip()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert text.splitlines()[-1] == errors[0], text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


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


class SlowToUnpickle(SlowMeanColour):
    """A ``SlowMeanColour`` that takes ``RSSCGEO_TEST_UNPICKLE_SECONDS`` to unpickle.

    A Dask worker unpickles the model while the rsscgeo model plugin is being
    registered, so this widens that window for tests that kill a worker inside it.
    With ``RSSCGEO_TEST_MARKERS`` set, each unpickling process writes
    ``unpickling-<pid>`` there as it starts and ``unpickled-<pid>`` when done.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        import os

        markers = os.environ.get("RSSCGEO_TEST_MARKERS")
        if markers:
            (Path(markers) / f"unpickling-{os.getpid()}").touch()
        time.sleep(float(os.environ.get("RSSCGEO_TEST_UNPICKLE_SECONDS", "0")))
        super().__setstate__(state)
        if markers:
            (Path(markers) / f"unpickled-{os.getpid()}").touch()
