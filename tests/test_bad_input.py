"""Bad input across every command: one clean line, a fix, nothing written, no pickle run.

Every case builds its bad input in a workspace whose folder names hold spaces and
non-ASCII letters, runs one command and checks the same contract: non-zero exit, one
``Error:`` line (progress bars of earlier work aside) that names the problem and how
to fix it, no traceback, and the workspace byte-for-byte as it was before the run
(no output, no temporary file beside it, no marker from an executed pickle).
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from helpers import assert_one_line_error, write_config, write_raster
from PIL import Image
from rasterio.transform import from_origin
from safetensors.torch import save_file
from shapely.geometry import box

from rsscgeo import RsscgeoError, load_model
from rsscgeo.modelfile import BUNDLED_MODEL, CARD_KEY, read_card

# The bundled model reads 150 px patches at 2 m/px: a 150 px scene is one patch.
ORIGIN_X, ORIGIN_Y, RES, SIDE = 500000.0, 4200000.0, 2.0, 150
CRS = "EPSG:32633"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Workspace:
    """Folders of one case: inputs, an empty output folder, the pickle marker."""

    root: Path
    inputs: Path
    out: Path
    marker: Path

    def input(self, name: str) -> Path:
        return self.inputs / name


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "bad input ü"
    inputs, out = root / "in put é", root / "out dir ü"
    inputs.mkdir(parents=True)
    out.mkdir()
    return Workspace(root, inputs, out, root / "PWNED")


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its permission bits, and size and mtime of files."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        size, mtime = (info.st_size, info.st_mtime_ns) if path.is_file() else (-1, -1)
        state[str(path.relative_to(root))] = (info.st_mode, size, mtime)
    return state


PROGRESS = "%|"  # tqdm's bar; progress of work before the failure may precede the error


def assert_clean_failure(output: str, exit_code: int, needles: Sequence[str]) -> None:
    """The common contract, on the text of one run."""
    assert exit_code not in (0, None), output
    assert "Traceback" not in output, output
    lines = [ln for ln in output.strip().splitlines() if ln.strip() and PROGRESS not in ln]
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith("Error: "), line
    assert "\n" not in line
    # "<what is wrong>; <what to do>": the fix comes after the problem.
    assert ";" in line, line
    for needle in needles:
        assert needle in line, (needle, line)


# --- inputs ---------------------------------------------------------------------------------


def rgb_scene(
    path: Path, bands: int = 3, dtype: str = "uint8", fill: float | None = None, **profile: object
) -> Path:
    """A north-up one-patch scene of random pixels (or ``fill``)."""
    rng = np.random.default_rng(0)
    if fill is None:
        pixels = rng.integers(1, 255, (bands, SIDE, SIDE)).astype(dtype)
    else:
        pixels = np.full((bands, SIDE, SIDE), fill, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_raster(path, pixels, CRS, from_origin(ORIGIN_X, ORIGIN_Y, RES, RES), **profile)


def truncated_scene(path: Path) -> Path:
    """A scene cut after 60% of its bytes: the header is whole, the last rows are not."""
    rgb_scene(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    with rasterio.open(path) as src:  # still opens: only reading the pixels can tell
        assert src.shape == (SIDE, SIDE)
    return path


def huge_header_scene(path: Path, side: int = 10**6) -> Path:
    """A GeoTIFF of a few hundred bytes whose header declares ``side`` x ``side`` pixels."""
    write_raster(path, np.full((3, 1, 1), 7, np.uint8), CRS, from_origin(ORIGIN_X, ORIGIN_Y, 2, 2))
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"  # classic little-endian TIFF, as GDAL writes small files
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for i in range(entries):
        at = ifd + 2 + 12 * i
        (tag,) = struct.unpack_from("<H", data, at)
        if tag in (256, 257, 278):  # ImageWidth, ImageLength, RowsPerStrip as LONG
            struct.pack_into("<HHII", data, at, tag, 4, 1, side)
    path.write_bytes(bytes(data))
    return path


def rotated_scene(path: Path) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (3, SIDE, SIDE)).astype(np.uint8)
    rotated = Affine(RES, 0.5, ORIGIN_X, 0.5, -RES, ORIGIN_Y)
    return write_raster(path, pixels, CRS, rotated)


def no_crs_scene(path: Path) -> Path:
    pixels = np.full((3, SIDE, SIDE), 9, np.uint8)
    return write_raster(path, pixels, None, from_origin(0, SIDE, 1, 1))


def text_file(path: Path) -> Path:
    path.write_text("not a raster, just notes\n")
    return path


def empty_file(path: Path) -> Path:
    return binary_file(path, b"")


def binary_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def labels_layer(ws: Workspace) -> Path:
    """Polygons over the left and right halves of any test scene."""
    half = ORIGIN_X + SIDE * RES / 2
    bottom = ORIGIN_Y - SIDE * RES
    frame = gpd.GeoDataFrame(
        {"class": ["forest", "water"]},
        geometry=[
            box(ORIGIN_X, bottom, half, ORIGIN_Y),
            box(half, bottom, ORIGIN_X + SIDE * RES, ORIGIN_Y),
        ],
        crs=CRS,
    )
    path = ws.input("labels ü.gpkg")
    frame.to_file(path)
    return path


# A safetensors header length of 2**50 bytes in a 10-byte file.
HUGE_SAFETENSORS_HEADER = struct.pack("<Q", 2**50) + b"{}"


def bundled_card() -> dict[str, object]:
    card: dict[str, object] = json.loads(read_card(BUNDLED_MODEL).model_dump_json())
    return card


def model_file(path: Path, card: str | None) -> Path:
    """A safetensors file with one tensor and ``card`` (None: no card) in its metadata."""
    metadata = None if card is None else {CARD_KEY: card}
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    return path


def card_without(ws: Workspace, field: str) -> Path:
    card = bundled_card()
    del card[field]
    return model_file(ws.input(f"no {field} ü.safetensors"), json.dumps(card))


def card_not_json(ws: Workspace) -> Path:
    return model_file(ws.input("card ü.safetensors"), "{'architecture': tf_efficientnet_lite0")


def cardless(ws: Workspace) -> Path:
    return model_file(ws.input("weights only ü.safetensors"), None)


class Exploit:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def pickle_model(ws: Workspace, how: str) -> Path:
    """A model file that would create the marker if anything unpickled it."""
    path = ws.input(f"model {how} ü.safetensors")
    payload = {"state_dict": Exploit(ws.marker)}
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how.removeprefix("pickle-p"))))
    return path


def image_dataset(ws: Workspace, bad: Callable[[Path], Path] | None = None) -> Path:
    """Class folders named after bundled-model classes, 3 tiny PNGs each (+ one bad file)."""
    root = ws.input("data set ü")
    rng = np.random.default_rng(0)
    for name in ("Beach", "Forest"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name.lower()} {i}.png")
    if bad is not None:
        bad(root / "Beach" / "zz bad ü.tif")
    return root


def tif_dataset(ws: Workspace, bands: int) -> Path:
    """Class folders of small GeoTIFF tiles with ``bands`` bands."""
    root = ws.input("tiles ü")
    for name in ("Beach", "Forest"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((bands, 32, 32), 40 * i, np.uint8)
            write_raster(root / name / f"t{i}.tif", pixels, CRS, from_origin(0, 32, 1, 1))
    return root


def nan_tile(path: Path) -> Path:
    pixels = np.full((3, 32, 32), np.nan, np.float32)
    return write_raster(path, pixels, CRS, from_origin(0, 32, 1, 1))


def blocked_folder(ws: Workspace) -> Path:
    """A folder nothing can be written into: read-only, or (as root) a regular file."""
    if IS_ROOT:  # root ignores permission bits; a file in the path stops root too
        blocker = ws.input("a file ü")
        blocker.write_text("in the way")
        return blocker / "sub dir"
    folder = ws.input("read only ü")
    folder.mkdir()
    folder.chmod(0o500)
    return folder


BLOCKED = "is a file, not a folder" if IS_ROOT else "is not writable"


def config(ws: Workspace, dataset: Path | None = None, **sections: object) -> Path:
    """A tiny training config writing into the output folder (``sections`` override)."""
    data = dataset if dataset is not None else image_dataset(ws)
    sections = {"out_dir": str(ws.out / "run ü"), **sections}
    return write_config(ws.input("config ü.yaml"), data, **sections)


# --- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: the command line it builds, what the error must say."""

    id: str
    args: Callable[[Workspace], list[object]]
    needles: tuple[str, ...]


def classify(scene: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    return lambda ws: ["classify", scene(ws), "--out", ws.out / "labels ü.gpkg"]


def classify_with(model: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    """Classify a good scene with a bad ``--model``."""
    return lambda ws: [
        "classify",
        rgb_scene(ws.input("ok ü.tif")),
        "--out",
        ws.out / "labels ü.gpkg",
        "--model",
        model(ws),
    ]


def tiles(scene: Callable[[Workspace], Path], out: Callable[[Workspace], Path] | None = None):
    def args(ws: Workspace) -> list[object]:
        target = out(ws) if out else ws.out / "tiles ü"
        return [
            "tiles",
            scene(ws),
            labels_layer(ws),
            "--field",
            "class",
            "--size",
            32,
            "--out",
            target,
        ]

    return args


def evaluate(model: Callable[[Workspace], Path], data=image_dataset):
    def args(ws: Workspace) -> list[object]:
        return ["evaluate", model(ws), data(ws), "--json", ws.out / "metrics ü.json"]

    return args


def train(make_config: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    return lambda ws: ["train", "--config", make_config(ws)]


def inspect(model: Callable[[Workspace], Path]) -> Callable[[Workspace], list]:
    return lambda ws: ["models", "inspect", model(ws)]


def bundled(ws: Workspace) -> Path:
    return BUNDLED_MODEL


def classify_into_blocked_folder(ws: Workspace) -> list[object]:
    scene = rgb_scene(ws.input("ok ü.tif"))
    return ["classify", scene, "--out", blocked_folder(ws) / "labels.gpkg"]


def evaluate_into_blocked_folder(ws: Workspace) -> list[object]:
    json_path = blocked_folder(ws) / "metrics.json"
    return ["evaluate", BUNDLED_MODEL, image_dataset(ws), "--json", json_path]


CASES = [
    # classify: the scene
    Case(
        "classify-truncated-geotiff",
        classify(lambda ws: truncated_scene(ws.input("cut ü.tif"))),
        ("cut ü.tif", "truncated or corrupt", "re-download or re-export"),
    ),
    Case(
        "classify-zero-byte-file",
        classify(lambda ws: empty_file(ws.input("empty ü.tif"))),
        ("empty ü.tif", "is empty (0 bytes)", "re-download or re-export"),
    ),
    Case(
        "classify-text-file-named-tif",
        classify(lambda ws: text_file(ws.input("notes ü.tif"))),
        ("notes ü.tif", "not a readable raster", "pass a GeoTIFF"),
    ),
    Case(
        "classify-no-crs",
        classify(lambda ws: no_crs_scene(ws.input("no crs ü.tif"))),
        ("no crs ü.tif", "has no CRS", "gdal_edit.py -a_srs"),
    ),
    Case(
        "classify-rotated-transform",
        classify(lambda ws: rotated_scene(ws.input("rotated ü.tif"))),
        ("rotated ü.tif", "rotated transform", "gdalwarp"),
    ),
    Case(
        "classify-nan-filled-float",
        classify(lambda ws: rgb_scene(ws.input("nan ü.tif"), dtype="float32", fill=np.nan)),
        ("nan ü.tif", "no valid pixels", "NaN", "nodata"),
    ),
    Case(
        "classify-all-nodata",
        classify(lambda ws: rgb_scene(ws.input("blank ü.tif"), fill=0, nodata=0)),
        ("blank ü.tif", "no valid pixels", "nodata value"),
    ),
    Case(
        "classify-one-band-scene-rgb-model",
        classify(lambda ws: rgb_scene(ws.input("grey ü.tif"), bands=1)),
        ("grey ü.tif", "1 band(s), the model needs 3", "--bands"),
    ),
    Case(
        "classify-huge-header-tiny-file",
        classify(lambda ws: huge_header_scene(ws.input("huge ü.tif"))),
        ("huge ü.tif", "1000000x1000000", "truncated or corrupt", "re-download"),
    ),
    Case(
        "classify-unwritable-output-folder",
        classify_into_blocked_folder,
        (BLOCKED,),
    ),
    # classify: the model
    Case(
        "classify-model-is-pickle",
        classify_with(lambda ws: pickle_model(ws, "pickle-p2")),
        ("pickle", "never unpickles", ".safetensors model"),
    ),
    Case(
        "classify-model-card-misses-classes",
        classify_with(lambda ws: card_without(ws, "classes")),
        ("invalid model card", "classes", "re-export"),
    ),
    Case(
        "classify-model-without-card",
        classify_with(cardless),
        ("weights only ü.safetensors", "no rsscgeo model card", "training init"),
    ),
    # tiles
    Case(
        "tiles-truncated-geotiff",
        tiles(lambda ws: truncated_scene(ws.input("cut ü.tif"))),
        ("cut ü.tif", "truncated or corrupt", "re-download or re-export"),
    ),
    Case(
        "tiles-zero-byte-file",
        tiles(lambda ws: empty_file(ws.input("empty ü.tif"))),
        ("empty ü.tif", "is empty (0 bytes)", "re-download or re-export"),
    ),
    Case(
        "tiles-text-file-named-tif",
        tiles(lambda ws: text_file(ws.input("notes ü.tif"))),
        ("notes ü.tif", "not a readable raster", "pass a GeoTIFF"),
    ),
    Case(
        "tiles-no-crs",
        tiles(lambda ws: no_crs_scene(ws.input("no crs ü.tif"))),
        ("no crs ü.tif", "has no CRS", "gdal_edit.py -a_srs"),
    ),
    Case(
        "tiles-rotated-transform",
        tiles(lambda ws: rotated_scene(ws.input("rotated ü.tif"))),
        ("rotated ü.tif", "rotated transform", "gdalwarp"),
    ),
    Case(
        "tiles-nan-filled-float",
        tiles(lambda ws: rgb_scene(ws.input("nan ü.tif"), dtype="float32", fill=np.nan)),
        ("nan ü.tif", "no valid pixels", "NaN"),
    ),
    Case(
        "tiles-all-nodata",
        tiles(lambda ws: rgb_scene(ws.input("blank ü.tif"), fill=0, nodata=0)),
        ("blank ü.tif", "no valid pixels", "nodata value"),
    ),
    Case(
        "tiles-huge-header-tiny-file",
        tiles(lambda ws: huge_header_scene(ws.input("huge ü.tif"))),
        ("huge ü.tif", "1000000x1000000", "truncated or corrupt"),
    ),
    Case(
        "tiles-unwritable-output-folder",
        tiles(lambda ws: rgb_scene(ws.input("ok ü.tif")), out=lambda ws: blocked_folder(ws)),
        ("--out", BLOCKED, "choose another --out"),
    ),
    # train
    Case(
        "train-config-lr-is-a-string",
        train(lambda ws: config(ws, optim={"lr": "fast"})),
        ("config ü.yaml", "optim.lr", "valid number", "'fast'", "--set optim.lr="),
    ),
    Case(
        "train-config-negative-epochs",
        train(lambda ws: config(ws, optim={"epochs": -1})),
        ("optim.epochs", "greater than 0", "(got -1)", "--set optim.epochs="),
    ),
    Case(
        "train-config-unknown-top-level-key",
        train(lambda ws: config(ws, epochs=3)),
        ("epochs: unknown key", "remove it or check its spelling"),
    ),
    Case(
        "train-config-section-is-not-a-mapping",
        train(lambda ws: config(ws, optim="fast")),
        ("optim:", "valid dictionary", "correct it"),
    ),
    Case(
        "train-config-zero-byte",
        train(lambda ws: empty_file(ws.input("config ü.yaml"))),
        ("config ü.yaml", "is empty", "configs/finetune.yaml"),
    ),
    Case(
        "train-config-is-binary",
        train(lambda ws: binary_file(ws.input("config ü.yaml"), b"\x89PNG\r\n\x1a\n\xff\xfe")),
        ("config ü.yaml", "not a text", "YAML"),
    ),
    Case(
        "train-truncated-geotiff-tile",
        train(lambda ws: config(ws, image_dataset(ws, truncated_scene))),
        ("zz bad ü.tif", "replace or remove"),
    ),
    Case(
        "train-text-file-named-tif-tile",
        train(lambda ws: config(ws, image_dataset(ws, text_file))),
        ("zz bad ü.tif", "cannot read image", "replace or remove"),
    ),
    Case(
        "train-nan-filled-tile",
        train(lambda ws: config(ws, image_dataset(ws, nan_tile))),
        ("zz bad ü.tif", "NaN", "replace or remove"),
    ),
    Case(
        "train-unwritable-out-dir",
        train(lambda ws: config(ws, out_dir=str(blocked_folder(ws) / "run"))),
        ("out_dir", BLOCKED, "choose another out_dir"),
    ),
    Case(
        "train-init-model-is-pickle",
        train(
            lambda ws: config(
                ws, model={"init": {"kind": "rsscgeo", "path": str(pickle_model(ws, "pickle-p0"))}}
            )
        ),
        ("pickle", "never unpickles"),
    ),
    # evaluate
    Case(
        "evaluate-model-is-torch-save-pickle",
        evaluate(lambda ws: pickle_model(ws, "torch.save")),
        ("pickle", "never unpickles"),
    ),
    Case(
        "evaluate-model-card-not-json",
        evaluate(card_not_json),
        ("card ü.safetensors", "not valid JSON", "re-export"),
    ),
    Case(
        "evaluate-model-without-card",
        evaluate(cardless),
        ("no rsscgeo model card", "training init"),
    ),
    Case(
        "evaluate-model-zero-byte",
        evaluate(lambda ws: empty_file(ws.input("model ü.safetensors"))),
        ("model ü.safetensors", "is empty (0 bytes)", "re-download or re-export"),
    ),
    Case(
        "evaluate-json-in-unwritable-folder",
        evaluate_into_blocked_folder,
        ("--json", BLOCKED, "choose another --json"),
    ),
    Case(
        "evaluate-truncated-geotiff-tile",
        evaluate(bundled, lambda ws: image_dataset(ws, truncated_scene)),
        ("zz bad ü.tif", "replace or remove"),
    ),
    Case(
        "evaluate-nan-filled-tile",
        evaluate(bundled, lambda ws: image_dataset(ws, nan_tile)),
        ("zz bad ü.tif", "NaN", "replace or remove"),
    ),
    Case(
        "evaluate-one-band-tiles-rgb-model",
        evaluate(bundled, lambda ws: tif_dataset(ws, bands=1)),
        ("has 1 bands, the model needs 3", "model's bands"),
    ),
    # models inspect
    Case(
        "inspect-model-is-protocol-0-pickle",
        inspect(lambda ws: pickle_model(ws, "pickle-p0")),
        ("pickle", "never unpickles"),
    ),
    Case(
        "inspect-model-is-legacy-torch-save",
        inspect(lambda ws: pickle_model(ws, "torch.save-legacy")),
        ("pickle", "never unpickles"),
    ),
    Case(
        "inspect-card-misses-patch-size",
        inspect(lambda ws: card_without(ws, "patch_size")),
        ("patch_size", "Field required", "re-export"),
    ),
    Case(
        "inspect-card-is-a-json-list",
        inspect(lambda ws: model_file(ws.input("list ü.safetensors"), "[1, 2]")),
        ("invalid model card", "valid dictionary", "re-export"),
    ),
    Case(
        "inspect-text-file-as-model",
        inspect(lambda ws: text_file(ws.input("notes ü.safetensors"))),
        ("notes ü.safetensors", "not a readable safetensors", "rsscgeo train"),
    ),
    Case(
        "inspect-header-declares-huge-size",
        inspect(lambda ws: binary_file(ws.input("huge ü.safetensors"), HUGE_SAFETENSORS_HEADER)),
        ("huge ü.safetensors", "not a readable safetensors", "rsscgeo train"),
    ),
]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES],
)
def test_bad_input_fails_cleanly(ws: Workspace, run_cli, case: Case) -> None:
    args = case.args(ws)
    before = snapshot(ws.root)
    try:
        result = run_cli(*args)
        after = snapshot(ws.root)
    finally:
        for path in ws.root.rglob("*"):  # let pytest clean up read-only folders
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
    assert_one_line_error(result, *case.needles)
    assert_clean_failure(result.output, result.exit_code, case.needles)
    assert not ws.marker.exists(), "a pickle was executed"
    assert after == before, "the failed run left files behind"


# --- the Python API ------------------------------------------------------------------------


MODEL_CASES = {
    "pickle-torch-save": (lambda ws: pickle_model(ws, "torch.save"), "never unpickles"),
    "pickle-torch-save-legacy": (lambda ws: pickle_model(ws, "torch.save-legacy"), "pickle"),
    "pickle-protocol-0": (lambda ws: pickle_model(ws, "pickle-p0"), "never unpickles"),
    "pickle-protocol-5": (lambda ws: pickle_model(ws, "pickle-p5"), "never unpickles"),
    "no-card": (cardless, "no rsscgeo model card"),
    "card-not-json": (card_not_json, "not valid JSON"),
    "card-misses-task": (lambda ws: card_without(ws, "task"), "task: Field required"),
    "zero-byte": (lambda ws: empty_file(ws.input("m ü.safetensors")), "is empty (0 bytes)"),
    "weights-do-not-fit-card": (
        lambda ws: model_file(ws.input("m ü.safetensors"), json.dumps(bundled_card())),
        "weights do not fit architecture",
    ),
}


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_load_model_refuses_bad_model_files(ws: Workspace, name: str) -> None:
    build, needle = MODEL_CASES[name]
    path = build(ws)
    before = snapshot(ws.root)
    with pytest.raises(RsscgeoError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and ";" in message, message
    assert needle in message and path.name in message, message
    assert not ws.marker.exists(), "a pickle was executed"
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("how", ["torch.save", "pickle-p0"])
def test_the_pickle_payload_really_executes(ws: Workspace, how: str) -> None:
    """Guards the cases above: unpickling these files does create the marker."""
    path = pickle_model(ws, how)
    with path.open("rb") as f:  # a file object: torch.load reads .safetensors paths itself
        if how == "torch.save":
            torch.load(f, weights_only=False)
        else:
            pickle.load(f)
    assert ws.marker.exists()


def test_model_whose_header_length_starts_with_a_pickle_byte_loads(ws: Workspace) -> None:
    """A safetensors header length whose low byte is 0x80 is not a pickle's PROTO opcode."""
    card = bundled_card()
    path = ws.input("m ü.safetensors")
    for pad in range(256):
        card["gsd_note"] = "x" * pad
        model_file(path, json.dumps(card))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_card(path).architecture == "tf_efficientnet_lite0"


# --- spaces and non-ASCII letters in paths work ---------------------------------------------


def test_paths_with_spaces_and_unicode_work(ws: Workspace, run_cli) -> None:
    scene = rgb_scene(ws.input("scène d'été ✓ 1.tif"))
    gpkg, tif = ws.out / "étiquettes ü 1.gpkg", ws.out / "étiquettes ü 1.tif"
    result = run_cli("classify", scene, "--out", gpkg, "--out", tif, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ws.out.iterdir()) == sorted(
        [
            gpkg.name,
            tif.name,
            "étiquettes ü 1.qml",
            f"{tif.name}.aux.xml",
            "étiquettes ü 1.areas.csv",
        ]
    )
    assert len(gpd.read_file(gpkg)) == 1
    with rasterio.open(tif) as src:
        assert src.shape == (1, 1) and src.read(1)[0, 0] != 255

    tiles_out = ws.out / "tuiles ü"
    result = run_cli(
        "tiles", scene, labels_layer(ws), "--field", "class", "--size", "32", "--out", tiles_out
    )
    assert result.exit_code == 0, result.output
    assert len((tiles_out / "manifest.csv").read_text().splitlines()) == 1 + 4 * 4

    model = ws.input("modèle ü 1.safetensors")
    model.symlink_to(BUNDLED_MODEL)
    result = run_cli("models", "inspect", model)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["architecture"] == "tf_efficientnet_lite0"
