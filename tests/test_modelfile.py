from __future__ import annotations

import copy
import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import timm
import torch
from helpers import assert_one_line_error
from safetensors.torch import save_file

from rsscgeo import load_model
from rsscgeo.errors import ModelFileError
from rsscgeo.exemplars import Exemplars, choose
from rsscgeo.modelfile import (
    BUNDLED_MODEL,
    CARD_KEY,
    ClassInfo,
    ExemplarInfo,
    LoadedModel,
    ModelCard,
    Provenance,
    model_identity,
    read_card,
    read_exemplars,
    read_weights,
    save_model,
)


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


def _smooth_tiles(count: int, bands: int, side: int) -> torch.Tensor:
    """Tiles with imagery-like gradients (JPEG keeps them within a few levels)."""
    ramp = torch.linspace(0, 1, side)
    base = ramp.view(1, 1, 1, side) * ramp.view(1, 1, side, 1)
    level = torch.arange(count * bands).view(count, bands, 1, 1) % 7 / 7
    return ((base * 0.5 + level * 0.5) * 255).round().to(torch.uint8)


def test_exemplars_travel_in_the_file_beside_the_weights(
    tmp_path: Path, model_file: tuple[Path, torch.nn.Module]
) -> None:
    path, net = model_file
    assert read_exemplars(path) is None and load_model(path).exemplars() is None
    tiles = _smooth_tiles(5, 4, 32)  # any band count: each band is its own JPEG
    exemplars = Exemplars(tiles, torch.tensor([0, 0, 1, 2, 2]))
    info = ExemplarInfo(count=5, per_class=2, drawn_from="fixture")
    out = save_model(tmp_path / "with.safetensors", net, _card(exemplars=info), exemplars=exemplars)
    back = load_model(out).exemplars()  # what adapt rehearses
    assert back is not None and back.tiles.shape == tiles.shape
    assert back.classes.tolist() == [0, 0, 1, 2, 2]
    assert (back.tiles.int() - tiles.int()).abs().float().mean() < 2
    # The weights alone load; the exemplars count in no identity of the network.
    weights, card = read_weights(out)
    assert not [k for k in weights if k.startswith("exemplars.")]
    assert card.exemplars == info
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(out).model(x), net(x))
    # Remapping drops the classes a -1 names and renumbers the rest.
    kept = back.remapped([1, -1, 0])
    assert kept.classes.tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match=r"card\.exemplars"):
        save_model(tmp_path / "bad.safetensors", net, _card(), exemplars=exemplars)


def test_exemplars_are_drawn_per_class_among_rows_of_one_class() -> None:
    targets = torch.zeros((40, 3), dtype=torch.bool)
    targets[:20, 0] = True
    targets[20:23, 1] = True
    targets[23:, [1, 2]] = True  # a coarse label: class 1 or 2, never an exemplar
    rows, classes = choose(targets.numpy(), 5, seed=3)
    assert (classes == 0).sum() == 5 and (classes == 1).sum() == 3 and (classes == 2).sum() == 0
    assert len(set(rows.tolist())) == len(rows)
    assert all(targets[r].sum() == 1 and targets[r, c] for r, c in zip(rows, classes, strict=True))
    again, _ = choose(targets.numpy(), 5, seed=3)
    assert again.tolist() == rows.tolist()


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


# --- identity -------------------------------------------------------------------------------


def test_identity_is_the_same_for_two_loads_of_the_bundled_model() -> None:
    first, second = load_model(BUNDLED_MODEL), load_model(BUNDLED_MODEL)
    assert first.model is not second.model
    assert first.identity == second.identity
    assert len(first.identity) == 64 and int(first.identity, 16) >= 0
    # Built in memory from the same weights and card: the same identity.
    assert model_identity(first.model, first.card) == first.identity


def test_identity_changes_with_one_weight() -> None:
    loaded = load_model(BUNDLED_MODEL)
    before = loaded.identity
    net = copy.deepcopy(loaded.model)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    assert LoadedModel(model=net, card=loaded.card).identity != before
    assert loaded.identity == before  # the original is untouched


def test_identity_changes_with_the_card() -> None:
    loaded = load_model(BUNDLED_MODEL)
    assert loaded.card.calibration is not None
    calibration = loaded.card.calibration.model_copy(
        update={"temperature": loaded.card.temperature * 1.01}
    )
    card = loaded.card.model_copy(update={"calibration": calibration})
    assert LoadedModel(model=loaded.model, card=card).identity != loaded.identity


def test_identity_matches_between_memory_and_file(tmp_path: Path) -> None:
    net, card = timm.create_model("resnet18", num_classes=3).eval(), _card()
    path = save_model(tmp_path / "m.safetensors", net, card)
    assert model_identity(net, card) == load_model(path).identity
    assert model_identity(net, _card(gsd=3.0)) != load_model(path).identity


# --- cards that must be refused -------------------------------------------------------------

SCENE = ("rasterio", "RGB.byte.tif")  # in the scenes_dir fixture


def _bad_card_file(tmp_path: Path, **changes: object) -> Path:
    """The bundled model with ``changes`` written into its card (JSON, NaN allowed)."""
    weights, _ = read_weights(BUNDLED_MODEL)
    card = json.loads(read_card(BUNDLED_MODEL).model_dump_json())
    card.update(changes)
    path = tmp_path / "bad card.safetensors"
    save_file(weights, str(path), metadata={CARD_KEY: json.dumps(card)})
    return path


BAD_CARDS = {
    "std-nan": ({"std": [math.nan, 0.5, 0.5]}, ("std.0", "finite number")),
    "std-inf": ({"std": [0.5, math.inf, 0.5]}, ("std.1", "finite number")),
    "std-zero": ({"std": [0.5, 0.0, 0.5]}, ("std.1", "greater than 0")),
    "mean-nan": ({"mean": [0.5, 0.5, math.nan]}, ("mean.2", "finite number")),
    "classes-empty": ({"classes": []}, ("classes", "class list is empty", "at least 2")),
}


@pytest.mark.parametrize("name", sorted(BAD_CARDS))
def test_bad_card_values_are_refused(tmp_path: Path, name: str, run_cli, scenes_dir: Path) -> None:
    changes, needles = BAD_CARDS[name]
    path = _bad_card_file(tmp_path, **changes)
    with pytest.raises(ModelFileError, match="invalid model card"):
        read_card(path)
    out = tmp_path / "x.gpkg"
    for args in (
        ("models", "inspect", path),
        ("classify", scenes_dir.joinpath(*SCENE), "--model", path, "--out", out),
    ):
        result = run_cli(*args)
        assert result.exit_code == 1, result.output
        assert_one_line_error(result, "bad card.safetensors", "invalid model card", *needles)
        assert "\n" not in result.output.strip(), result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad card.safetensors"]
