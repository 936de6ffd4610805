"""Shared fixtures: real data from ../shared/data and tiny datasets written per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from rsscgeo.cli.main import cli

# Data paths reach tests through the session fixtures below (repo_root, shared_data,
# aid_dir, scenes_dir, bigearthnet_s2), not through imports of these names.
_REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = Path(os.environ.get("RSSCGEO_SHARED_DATA", _REPO.parent / "shared" / "data"))
_AID = _SHARED_DATA / "aid150"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not _AID.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {_SHARED_DATA}")
        for item in items:
            if "real_data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ONNX exports of this session's models, in a folder of its own (not the user's
    cache); the rsscgeo processes the tests start inherit it."""
    folder = tmp_path_factory.mktemp("rsscgeo-cache")
    previous = os.environ.get("RSSCGEO_CACHE_DIR")
    os.environ["RSSCGEO_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("RSSCGEO_CACHE_DIR", None)
    else:
        os.environ["RSSCGEO_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return _REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``../shared/data``, or ``$RSSCGEO_SHARED_DATA``)."""
    return _SHARED_DATA


@pytest.fixture(scope="session")
def aid_dir(shared_data: Path) -> Path:
    """The real AID tiles: one folder of 150x150 JPEGs per class."""
    return shared_data / "aid150"


@pytest.fixture(scope="session")
def scenes_dir(shared_data: Path) -> Path:
    """The real georeferenced scenes (see ``../shared/data/README.md``)."""
    return shared_data / "scenes"


@pytest.fixture(scope="session")
def bigearthnet_s2(shared_data: Path) -> Path:
    """Six real BigEarthNet Sentinel-2 patches with their multi-label annotations."""
    return shared_data / "bigearthnet" / "BigEarthNet-S2-Example"


@pytest.fixture
def aid_subset(tmp_path: Path, aid_dir: Path) -> Callable[..., Path]:
    """Factory: a class-folder dataset of real AID images (symlinks), few per class."""

    def make(classes: tuple[str, ...] = ("Beach", "Forest", "Port"), per_class: int = 6) -> Path:
        root = tmp_path / f"aid_{len(classes)}x{per_class}"
        for name in classes:
            folder = root / name
            folder.mkdir(parents=True)
            for image in sorted((aid_dir / name).glob("*.jpg"))[:per_class]:
                (folder / image.name).symlink_to(image)
        return root

    return make


@pytest.fixture
def multilabel_manifest(tmp_path: Path, aid_dir: Path) -> Path:
    """A CSV manifest of tiny PNG tiles with ';'-separated labels, cut from real AID images."""
    folder = tmp_path / "ml"
    folder.mkdir()
    sources = {
        "Beach": sorted((aid_dir / "Beach").glob("*.jpg"))[:4],
        "Forest": sorted((aid_dir / "Forest").glob("*.jpg"))[:4],
        "River": sorted((aid_dir / "River").glob("*.jpg"))[:4],
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


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Invoke the ``rsscgeo`` CLI in-process."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)

    return invoke


@pytest.fixture(autouse=True)
def no_stop_request() -> Iterator[None]:
    """Each test starts and ends without a stop request (``STOP`` is process-wide)."""
    from rsscgeo.stopping import STOP

    STOP.clear()
    yield
    STOP.clear()
