from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import timm
import torch
from conftest import assert_one_line_error

from rsscgeo import load_model
from rsscgeo.errors import ModelFileError
from rsscgeo.modelfile import CARD_KEY, ClassInfo, ModelCard, Provenance, read_card, save_model


def _card(**changes: object) -> ModelCard:
    fields = {
        "architecture": "resnet18",
        "task": "multiclass",
        "classes": [
            ClassInfo(name=n, color=c)
            for n, c in (("a", "#ff0000"), ("b", "#00ff00"), ("c", "#0000ff"))
        ],
        "bands": ["red", "green", "blue"],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "patch_size": 64,
        "eval_resize": 64,
        "gsd": 2.0,
        "provenance": Provenance(
            dataset="fixture", protocol="scratch", init="scratch", rsscgeo_version="test"
        ),
    }
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    net = timm.create_model("resnet18", num_classes=3).eval()
    return save_model(tmp_path / "m.safetensors", net, _card()), net


def test_round_trip_gives_identical_logits(model_file: tuple[Path, torch.nn.Module]) -> None:
    path, net = model_file
    loaded = load_model(path)
    assert not loaded.model.training
    assert loaded.card.class_names == ["a", "b", "c"]
    assert loaded.card.input_size == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))


def test_half_precision_file_is_smaller_and_close(tmp_path: Path) -> None:
    net = timm.create_model("resnet18", num_classes=3).eval()
    full = save_model(tmp_path / "full.safetensors", net, _card())
    half = save_model(tmp_path / "half.safetensors", net, _card(), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(half).model(x), net(x), atol=0.05, rtol=0.05)


def test_multilabel_card_gets_default_thresholds() -> None:
    assert _card(task="multilabel").thresholds == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="one threshold per class"):
        _card(task="multilabel", thresholds=[0.5])


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/rsscgeo_model_pwned").touch, ())


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickle_model_files_are_refused_without_executing(
    tmp_path: Path, how: str, run_cli
) -> None:
    marker = Path("/tmp/rsscgeo_model_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "model.pt"
    if how == "torch.save":
        torch.save({"x": _Payload()}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(path)
    assert_one_line_error(run_cli("models", "inspect", path), "pickle")
    assert not marker.exists()


def test_corrupt_and_cardless_files_are_refused(tmp_path: Path, run_cli) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("models", "inspect", empty), "empty.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="no rsscgeo model card"):
        read_card(plain)
    assert_one_line_error(
        run_cli("models", "inspect", tmp_path / "missing.safetensors"), "does not exist"
    )


def test_card_with_missing_field_is_refused(tmp_path: Path) -> None:
    card = json.loads(_card().model_dump_json())
    del card["bands"]
    header = json.dumps({"__metadata__": {CARD_KEY: json.dumps(card)}}).encode()
    path = tmp_path / "nobands.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelFileError, match="bands"):
        read_card(path)


def test_models_inspect_prints_the_card(model_file: tuple[Path, torch.nn.Module], run_cli) -> None:
    result = run_cli("models", "inspect", model_file[0])
    assert result.exit_code == 0, result.output
    card = json.loads(result.output)
    assert card["architecture"] == "resnet18"
    assert [c["name"] for c in card["classes"]] == ["a", "b", "c"]
    assert card["gsd"] == 2.0
