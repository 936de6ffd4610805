"""The ONNX Runtime backend: agreement with PyTorch, its cache, fallbacks, export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import assert_one_line_error

import rsscgeo.backends as backends
from rsscgeo import load_model
from rsscgeo.backends import OnnxNetwork, cached_export, choose_backend, export_onnx
from rsscgeo.errors import ModelFileError
from rsscgeo.modelfile import BUNDLED_MODEL, CARD_KEY, LoadedModel, ModelCard

pytestmark = pytest.mark.real_data

SCENES = {  # (path under the shared scenes folder or the repo, extra options)
    "naip_demo_5m": ("examples/scenes/naip_2020_rgbn.tif", ("--gsd", "5", "--stride", "75")),
    "landsat7_striped": ("rasterio/RGB.byte.tif", ()),
    "cog_3857": ("rasterio/cogeo.tif", ()),
}


@pytest.fixture(scope="module")
def bundled() -> LoadedModel:
    return load_model(BUNDLED_MODEL)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_onnx_and_torch_agree_on_real_scenes(
    tmp_path: Path, run_cli, name: str, scenes_dir: Path, repo_root: Path
) -> None:
    relative, extra = SCENES[name]
    scene = repo_root / relative if relative.startswith("examples") else scenes_dir / relative
    rasters = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.tif"
        args = ("--out", out, "--probabilities", "--backend", backend, *extra)
        result = run_cli("classify", scene, *args)
        assert result.exit_code == 0, result.output
        assert ("ONNX Runtime" in result.output) == (backend == "onnx"), result.output
        with rasterio.open(out) as src:
            rasters[backend] = src.read()
    torch_run, onnx_run = rasters["torch"], rasters["onnx"]
    np.testing.assert_array_equal(torch_run[0], onnx_run[0])  # classes, Uncertain, nodata
    classified = torch_run[0] != 255
    assert classified.sum() >= 4
    difference = np.abs(torch_run[1:, classified] - onnx_run[1:, classified]).max()
    assert difference <= 1e-4, difference


def test_the_export_is_cached_and_keyed_by_the_model(
    bundled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached_export(bundled)
    assert first.exists() and first.parent == backends.onnx_cache_dir()
    created = first.stat().st_mtime_ns

    def no_second_export(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("exported again")

    monkeypatch.setattr(backends, "export_onnx", no_second_export)
    choice = choose_backend(load_model(BUNDLED_MODEL), "onnx", gpu=False)
    assert choice.backend == "onnx" and first.stat().st_mtime_ns == created
    monkeypatch.undo()

    # Another model (here: one weight changed) gets an export of its own.
    changed = load_model(BUNDLED_MODEL)
    with torch.no_grad():
        next(changed.model.parameters()).view(-1)[0] += 1
    second = cached_export(changed)
    assert second != first and second.exists()


def test_auto_is_onnx_on_cpu_and_torch_on_a_gpu(bundled: LoadedModel) -> None:
    assert choose_backend(bundled, "auto", gpu=False).backend == "onnx"
    assert choose_backend(bundled, "auto", gpu=True).backend == "torch"
    onnx = choose_backend(bundled, "auto", gpu=False).loaded
    assert isinstance(onnx.model, OnnxNetwork)
    assert onnx.identity == bundled.identity  # same weights: same journal, same workers


def test_without_onnxruntime_torch_runs_with_a_note(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, repo_root: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if missing
    choice = choose_backend(load_model(BUNDLED_MODEL), "auto", gpu=False)
    assert choice.backend == "torch"
    assert "onnxruntime is not installed" in choice.note
    scene = repo_root / SCENES["naip_demo_5m"][0]
    result = run_cli("classify", scene, "--out", tmp_path / "o.gpkg", "--gsd", "5")
    assert result.exit_code == 0, result.output
    assert "backend: PyTorch, not ONNX Runtime: onnxruntime is not installed" in result.output


def test_an_export_that_disagrees_falls_back_to_torch(
    bundled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "MAX_PROBABILITY_DIFFERENCE", -1.0)
    choice = choose_backend(bundled, "onnx", gpu=False)
    assert choice.backend == "torch" and choice.loaded is bundled
    assert "differs from PyTorch" in choice.note


def test_an_export_that_fails_its_check_batch_falls_back(bundled: LoadedModel) -> None:
    class TracedToAConstant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Through NumPy the tracer records a constant: the export "works", wrongly.
            return torch.from_numpy(x.numpy().mean(axis=(2, 3))).repeat(1, 10)

    loaded = LoadedModel(TracedToAConstant(), bundled.card)
    for backend in ("auto", "onnx"):
        choice = choose_backend(loaded, backend, gpu=False)  # type: ignore[arg-type]
        assert choice.backend == "torch" and "not ONNX Runtime" in choice.note, choice.note


def test_a_network_that_cannot_be_exported(
    bundled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", fails)
    changed = load_model(BUNDLED_MODEL)  # a model not exported yet in this session
    with torch.no_grad():
        next(changed.model.parameters()).view(-1)[1] += 1
    choice = choose_backend(changed, "auto", gpu=False)
    assert choice.backend == "torch" and "unsupported operator" in choice.note
    with pytest.raises(ModelFileError, match="cannot be exported to ONNX"):
        choose_backend(changed, "onnx", gpu=False)


def test_models_export_round_trips_with_the_card(
    tmp_path: Path, run_cli, bundled: LoadedModel
) -> None:
    import onnx
    import onnxruntime as ort

    out = tmp_path / "bundled.onnx"
    result = run_cli("models", "export", BUNDLED_MODEL, "--onnx", out)
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out))
    metadata = {p.key: p.value for p in proto.metadata_props}
    card = ModelCard.model_validate_json(metadata[CARD_KEY])
    assert card == bundled.card
    batch = backends.check_batch(bundled)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": batch.numpy()})
    with torch.inference_mode():
        expected = bundled.model(batch).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert_one_line_error(run_cli("models", "export", BUNDLED_MODEL, "--onnx", out), "--overwrite")
    assert export_onnx(bundled)  # without the card: what the cache holds
