"""Shared fixtures: real data from ../shared/data and tiny datasets written per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner, Result
from PIL import Image

from rsscgeo.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RSSCGEO_SHARED_DATA", REPO.parent / "shared" / "data"))
AID = SHARED_DATA / "aid150"
BIGEARTHNET_S2 = SHARED_DATA / "bigearthnet" / "BigEarthNet-S2-Example"
SCENES = SHARED_DATA / "scenes"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not AID.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
        for item in items:
            if "real_data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def aid_subset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a class-folder dataset of real AID images (symlinks), few per class."""

    def make(classes: tuple[str, ...] = ("Beach", "Forest", "Port"), per_class: int = 6) -> Path:
        root = tmp_path / f"aid_{len(classes)}x{per_class}"
        for name in classes:
            folder = root / name
            folder.mkdir(parents=True)
            for image in sorted((AID / name).glob("*.jpg"))[:per_class]:
                (folder / image.name).symlink_to(image)
        return root

    return make


@pytest.fixture
def multilabel_manifest(tmp_path: Path) -> Path:
    """A CSV manifest of tiny PNG tiles with ';'-separated labels, cut from real AID images."""
    folder = tmp_path / "ml"
    folder.mkdir()
    sources = {
        "Beach": sorted((AID / "Beach").glob("*.jpg"))[:4],
        "Forest": sorted((AID / "Forest").glob("*.jpg"))[:4],
        "River": sorted((AID / "River").glob("*.jpg"))[:4],
    }
    lines = ["path,labels"]
    for name, files in sources.items():
        for i, src in enumerate(files):
            out = folder / f"{name.lower()}_{i}.png"
            Image.open(src).resize((64, 64)).save(out)
            extra = ";water" if name in ("Beach", "River") else ";vegetation"
            lines.append(f"{out.name},{name}{extra}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def write_image() -> Callable[[Path, int], Path]:
    """Factory: a random RGB JPEG of the given size."""

    def make(path: Path, size: int = 32) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        return path

    return make


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


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Invoke the ``rsscgeo`` CLI in-process."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)

    return invoke


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
