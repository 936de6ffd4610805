"""``rsscgeo evaluate`` with a class map, test-time augmentation and coverage figures.

Most tests use a model whose predictions are known in advance: it classifies an image
by its mean colour (class Red, Green or Blue), so tiny single-colour images give exact
accuracies, confusions and confidences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error
from PIL import Image

from rsscgeo.modelfile import (
    BUNDLED_MODEL,
    Calibration,
    ClassInfo,
    LoadedModel,
    ModelCard,
    Provenance,
    load_model,
    save_model,
)

COLOUR_CLASSES = ("Red", "Green", "Blue")
GAIN = 3.0  # logits = GAIN x the normalised mean colour
TEMPERATURE = 2.0
UNCERTAIN_BELOW = 0.75
# folder -> images (RGB colour, width, height); "grass" is not in the class map.
EVAL_IMAGES = {
    "crimson": [((255, 0, 0), 20, 20), ((230, 30, 30), 24, 16), ((180, 60, 60), 16, 16)],
    "lime": [((0, 255, 0), 20, 20), ((40, 200, 40), 18, 22), ((0, 0, 255), 20, 20)],
    "ocean": [((0, 0, 255), 20, 20), ((60, 200, 60), 20, 20)],
    "grass": [((0, 255, 0), 16, 16), ((30, 220, 30), 16, 16)],
}
CLASS_MAP = "crimson: [Red]\nlime: Green\nocean: [Blue, Green]  # green water counts\n"
UCM_CLASS_MAP = Path(__file__).resolve().parents[1] / "configs/class_maps/ucm10_to_aid.yaml"


class MeanColour(torch.nn.Module):
    """Logits from the mean colour: ``swap`` exchanges the Green and Blue outputs."""

    def __init__(self, num_classes: int = 3, swap: bool = False) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes, bias=False)
        weight = GAIN * torch.eye(num_classes, 3)
        if swap:
            weight = weight[[0, 2, 1]]
        self.head.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def patch_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``load_model`` build :class:`MeanColour` for cards with architecture 'mean-colour'."""
    import rsscgeo.networks as networks

    real = networks.create_network

    def create(architecture: str, num_classes: int, in_chans: int) -> torch.nn.Module:
        if architecture == "mean-colour":
            return MeanColour(num_classes)
        return real(architecture, num_classes, in_chans)

    monkeypatch.setattr(networks, "create_network", create)


def colour_card(calibrated: bool = True) -> ModelCard:
    return ModelCard(
        architecture="mean-colour",
        task="multiclass",
        classes=[ClassInfo(name=n, color="#808080") for n in COLOUR_CLASSES],
        bands=["red", "green", "blue"],
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        patch_size=16,
        eval_resize=20,
        calibration=Calibration(
            temperature=TEMPERATURE,
            uncertain_below=UNCERTAIN_BELOW,
            fitted_on="test",
            rule="test",
        )
        if calibrated
        else None,
        provenance=Provenance(
            dataset="colours", protocol="scratch", init="scratch", rsscgeo_version="test"
        ),
    )


def save_colour_model(path: Path, *, swap: bool = False, calibrated: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(path, MeanColour(swap=swap), colour_card(calibrated))


def write_colour_dataset(root: Path, images: dict[str, list] = EVAL_IMAGES) -> Path:
    """Class folders of single-colour PNGs (lossless, so colours stay exact)."""
    for folder, specs in images.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, (rgb, width, height) in enumerate(specs):
            pixels = np.zeros((height, width, 3), np.uint8) + np.array(rgb, np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{folder}_{i}.png")
    return root


def expected_probabilities(rgb: tuple[int, int, int], swap: bool = False) -> np.ndarray:
    """What the colour model's calibrated softmax must give for a uniform image."""
    logits = GAIN * ((np.array(rgb) / 255 - 0.5) / 0.5)
    if swap:
        logits = logits[[0, 2, 1]]
    e = np.exp(logits / TEMPERATURE)
    return e / e.sum()


@pytest.fixture
def colour_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    patch_networks(monkeypatch)
    model = save_colour_model(tmp_path / "colour.safetensors")
    data = write_colour_dataset(tmp_path / "eval")
    class_map = tmp_path / "map.yaml"
    class_map.write_text(CLASS_MAP)
    return model, data, class_map


def test_class_map_evaluation_gives_the_exact_figures(colour_setup, tmp_path: Path, run_cli):
    model, data, class_map = colour_setup
    out, curve = tmp_path / "m.json", tmp_path / "curve.png"
    result = run_cli(
        "evaluate", model, data, "--class-map", class_map, "--json", out, "--curve", curve
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    # crimson 3/3; lime: its blue image is predicted Blue, not accepted (2/3); ocean: the
    # green image is predicted Green, accepted (2/2). "grass" takes no part.
    assert metrics["num_images"] == 8
    assert metrics["accuracy"] == pytest.approx(7 / 8)
    assert metrics["per_class_accuracy"] == pytest.approx(
        {"crimson": 1.0, "lime": 2 / 3, "ocean": 1.0}
    )
    assert metrics["average_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert metrics["dataset_classes"] == ["crimson", "lime", "ocean"]
    assert metrics["model_classes"] == list(COLOUR_CLASSES)
    assert metrics["confusion_matrix"] == [[3, 0, 0], [0, 2, 1], [0, 1, 1]]
    assert metrics["accepted"]["ocean"] == ["Blue", "Green"]
    assert metrics["left_out"] == [
        {"folder": "grass", "images": 2, "reason": "not in the class map"}
    ]
    assert "left out: grass (not in the class map; 2 images)" in result.output

    # At the card's threshold: (180,60,60) p=0.67 and (60,200,60) p=0.72 are Uncertain;
    # the 6 committed images hold the one error.
    confidences = {rgb: expected_probabilities(rgb).max() for s in EVAL_IMAGES.values()
                   for rgb, _, _ in s}  # fmt: skip
    assert confidences[(180, 60, 60)] < UNCERTAIN_BELOW < confidences[(40, 200, 40)]
    uncertain = metrics["uncertain"]
    assert uncertain["threshold"] == UNCERTAIN_BELOW
    assert uncertain["committed"] == 6 and uncertain["coverage"] == pytest.approx(6 / 8)
    assert uncertain["accuracy"] == pytest.approx(5 / 6)
    assert "coverage 75.0% at p >= 0.75 (6 images), accuracy 0.8333 on them" in result.output

    points = metrics["risk_coverage"]
    assert [p["coverage"] for p in points] == pytest.approx([n / 8 for n in range(1, 9)])
    six = points[5]  # the 6 most confident: the least confident of them is (40,200,40)
    assert six["accuracy"] == pytest.approx(5 / 6)
    assert six["threshold"] == pytest.approx(confidences[(40, 200, 40)], abs=1e-5)
    assert points[-1]["accuracy"] == pytest.approx(7 / 8)
    assert points[-1]["threshold"] == pytest.approx(confidences[(180, 60, 60)], abs=1e-5)
    assert curve.stat().st_size > 1000
    assert metrics["tta"] is True  # evaluate's default


def test_uncertain_below_override_and_uncalibrated_cards(
    colour_setup, tmp_path: Path, run_cli
) -> None:
    model, data, class_map = colour_setup
    out = tmp_path / "m.json"
    args = ("evaluate", model, data, "--class-map", class_map, "--json", out)
    assert run_cli(*args, "--uncertain-below", "0.9").exit_code == 0
    uncertain = json.loads(out.read_text())["uncertain"]
    # Only the four pure colours (p = 0.909) pass 0.9; one of them is lime's blue image.
    assert (uncertain["committed"], uncertain["accuracy"]) == (4, pytest.approx(3 / 4))

    plain = save_colour_model(tmp_path / "plain.safetensors", calibrated=False)
    result = run_cli("evaluate", plain, data, "--class-map", class_map, "--json", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["uncertain"]["coverage"] == 1.0  # threshold 0
    assert "the card has no calibration" in result.output


def test_without_class_map_coverage_is_reported_for_calibrated_cards(
    colour_setup, tmp_path: Path, run_cli
) -> None:
    model, _, _ = colour_setup
    own = write_colour_dataset(
        tmp_path / "own",
        {"Red": [((255, 0, 0), 16, 16), ((180, 60, 60), 16, 16)], "Blue": [((0, 255, 0), 16, 16)]},
    )
    out = tmp_path / "own.json"
    result = run_cli("evaluate", model, own, "--json", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["overall_accuracy"] == pytest.approx(2 / 3)  # the green one is wrong
    assert metrics["uncertain"] == {
        "threshold": UNCERTAIN_BELOW, "coverage": pytest.approx(2 / 3), "committed": 2,
        "accuracy": pytest.approx(1 / 2),
    }  # fmt: skip
    assert "coverage 66.7% at p >= 0.75" in result.output
    assert metrics["tta"] is True and len(metrics["risk_coverage"]) == 3


def test_whole_images_are_resized_to_the_patch_size(colour_setup) -> None:
    from rsscgeo.data.layouts import open_catalog
    from rsscgeo.training.evaluate import patch_dataset

    _, data, _ = colour_setup
    catalog = open_catalog(data)
    dataset = patch_dataset(colour_card(), catalog)
    wide = next(i for i, item in enumerate(catalog.items) if item.path.name == "crimson_1.png")
    image = dataset[wide]["image"]  # 24x16 -> 16x16 (patch) -> 20x20 (eval_resize)
    assert image.shape == (3, 20, 20)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([230, 30, 30]) / 127.5 - 1)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("crimson: [Red]\nlime: [Gren]\n", ["lime: 'Gren' is not a class of", "'Green'"]),
        ("crimsn: [Red]\n", ["'crimsn' is not a class folder of", "did you mean 'crimson'"]),
        ("crimson: []\n", ["crimson: accepts no model class"]),
        ("- crimson\n- lime\n", ["must map dataset folders to model classes"]),
        ("crimson: [Red\n", ["is not a YAML class map file"]),
        ("crimson: [Red, Red]\n", ["listed twice"]),
    ],
)
def test_bad_class_maps_are_one_line_errors(
    colour_setup, tmp_path: Path, run_cli, text: str, needles: list[str]
) -> None:
    model, data, class_map = colour_setup
    class_map.write_text(text)
    result = run_cli("evaluate", model, data, "--class-map", class_map)
    assert_one_line_error(result, *needles)


def test_missing_class_map_is_a_one_line_error(colour_setup, tmp_path: Path, run_cli) -> None:
    model, data, _ = colour_setup
    result = run_cli("evaluate", model, data, "--class-map", tmp_path / "absent.yaml")
    assert_one_line_error(result, "cannot read class map", "check the path")


def _explicit_tta(model: torch.nn.Module, batch: torch.Tensor, temperature: float):
    """The mean calibrated softmax over the 8 rotations/flips, written out by hand."""
    views = []
    for flip in (False, True):
        for turns in range(4):
            view = torch.rot90(batch, turns, dims=(2, 3))
            views.append(torch.flip(view, dims=(3,)) if flip else view)
    with torch.no_grad():
        return torch.stack([F.softmax(model(v) / temperature, dim=1) for v in views]).mean(0)


@pytest.mark.slow
@pytest.mark.real_data
def test_tta_is_the_mean_over_the_8_dihedral_transforms_on_real_images(
    shared_data: Path,
) -> None:
    from rsscgeo.data.classmap import load_class_map, map_catalog
    from rsscgeo.data.images import read_image
    from rsscgeo.data.layouts import open_catalog
    from rsscgeo.training.crossdomain import evaluate_with_class_map
    from rsscgeo.training.evaluate import patch_dataset, predict_probabilities

    loaded = load_model(BUNDLED_MODEL)
    card = loaded.card
    full = open_catalog(shared_data / "ucm10")
    picked = {full.items[i].path for i in (0, 250, 420, 890)}  # 4 of the 10 classes
    mapped = map_catalog(full.subset(picked), load_class_map(UCM_CLASS_MAP), card.class_names)
    dataset = patch_dataset(card, mapped.catalog)
    batch = torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    # The dataset: 256 px UCM tiles resized whole to the 150 px patch, then the card's size.
    raw = torch.from_numpy(read_image(mapped.catalog.items[0].path).astype(np.float32)) / 255
    step = F.interpolate(raw[None], size=(150, 150), mode="bilinear", antialias=True)
    size = (card.eval_resize, card.eval_resize)
    step = F.interpolate(step, size=size, mode="bilinear", antialias=True)
    torch.testing.assert_close(batch[0], ((step[0] - 0.5) / 0.5), atol=1e-4, rtol=0)

    tta, labels = predict_probabilities(loaded, dataset, tta=True, batch_size=2)
    plain, _ = predict_probabilities(loaded, dataset, tta=False, batch_size=2)
    expected = _explicit_tta(loaded.model, batch, card.temperature)
    torch.testing.assert_close(tta, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tta, plain, atol=1e-3)  # the transforms change the answer
    torch.testing.assert_close(tta.sum(1), torch.ones(4))

    result = evaluate_with_class_map(loaded, mapped, tta=True, batch_size=2)
    top = expected.argmax(1)
    correct = [int(top[i]) in mapped.accepted[int(labels[i])] for i in range(4)]
    assert result.accuracy == pytest.approx(sum(correct) / 4)
    assert result.tta and result.num_images == 4


def test_library_evaluation_takes_a_loaded_model(colour_setup) -> None:
    from rsscgeo.data.classmap import load_class_map, map_catalog
    from rsscgeo.data.layouts import open_catalog
    from rsscgeo.training.crossdomain import evaluate_with_class_map

    _, data, class_map = colour_setup
    loaded = LoadedModel(MeanColour(swap=True).eval(), colour_card())
    mapped = map_catalog(open_catalog(data), load_class_map(class_map), COLOUR_CLASSES)
    # Green and Blue swapped: lime keeps only its blue image (predicted Green); ocean
    # accepts both, so stays 2/2.
    result = evaluate_with_class_map(loaded, mapped, uncertain_below=0.0)
    assert result.accuracy == pytest.approx(6 / 8)
    assert [c.accuracy for c in result.classes] == pytest.approx([1.0, 1 / 3, 1.0])
    assert result.uncertain.coverage == 1.0 and math.isclose(result.uncertain.accuracy, 6 / 8)
