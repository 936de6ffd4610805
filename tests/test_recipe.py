"""The robust training recipe: augmentations, calibration, validation hold-out, SSL stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import write_config

from rsscgeo import load_model
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.splits import hold_out_validation, read_split, stratified_split, write_split
from rsscgeo.data.transforms import AugmentConfig, TransformConfig, build_transform
from rsscgeo.errors import ConfigError
from rsscgeo.training.calibration import (
    CalibrationConfig,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    threshold_for_accuracy,
)
from rsscgeo.training.config import load_config, parse_config
from rsscgeo.training.run import train
from rsscgeo.training.ssl import nt_xent

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"


def _overconfident(n: int = 2000, classes: int = 5, seed: int = 0):
    """Logits of a model that is right 70% of the time but always ~99% sure."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    predicted = torch.where(
        torch.rand(n, generator=g) < 0.7, labels, torch.randint(classes, (n,), generator=g)
    )
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), predicted] += 8.0
    return logits, labels


def test_temperature_lowers_the_nll_of_an_overconfident_model() -> None:
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature > 2  # it must soften an overconfident model
    before = F.cross_entropy(logits, labels)
    after = F.cross_entropy(logits / temperature, labels)
    assert after < before - 0.3
    # The fitted temperature is the NLL minimum: nearby values are worse.
    for other in (temperature * 0.8, temperature * 1.25):
        assert F.cross_entropy(logits / other, labels) > after
    probs_before, probs_after = logits.softmax(1), (logits / temperature).softmax(1)
    assert expected_calibration_error(probs_after, labels) < expected_calibration_error(
        probs_before, labels
    )


def test_threshold_reaches_the_target_accuracy_on_committed_images() -> None:
    logits, labels = _overconfident()
    probs = (logits / fit_temperature(logits, labels)).softmax(1)
    threshold, coverage, accuracy = threshold_for_accuracy(probs, labels, 0.9)
    committed = probs.max(1).values >= threshold
    assert accuracy >= 0.9
    assert coverage == pytest.approx(float(committed.float().mean()), abs=1e-3)
    right = probs.argmax(1) == labels
    assert float(right[committed].float().mean()) >= 0.9
    assert 0 < coverage < 1  # 70% accurate overall: some images must be rejected
    # Every image is committed when the target is already met.
    assert threshold_for_accuracy(probs, labels, 0.5)[:2] == (0.0, 1.0)


def test_calibrate_records_its_data_rule_and_metrics() -> None:
    logits, labels = _overconfident()
    calibration = calibrate(logits, labels, CalibrationConfig(target_accuracy=0.9), "fixture")
    assert calibration.fitted_on == "fixture" and "0.90" in calibration.rule
    assert calibration.metrics["val_nll_after"] < calibration.metrics["val_nll_before"]
    assert 0 < calibration.uncertain_below < 1


def test_validation_is_held_out_of_train_and_test_is_unchanged(tmp_path: Path, aid_subset) -> None:
    catalog = open_catalog(aid_subset(per_class=10))
    split = stratified_split(catalog, 0.8, seed=0)
    held = hold_out_validation(split, 0.25, seed=0)
    assert held.test.items == split.test.items
    assert held.val is not None and len(held.val.items) == 6  # 2 of each class's 8
    train, val = {i.path for i in held.train.items}, {i.path for i in held.val.items}
    assert not train & val and train | val == {i.path for i in split.train.items}
    write_split(tmp_path / "split.csv", held)
    assert read_split(tmp_path / "split.csv", catalog, "val").items == held.val.items


def test_augmentations_keep_shape_and_range() -> None:
    augment = AugmentConfig(
        scale=(0.15, 1.0), brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03,
        gamma=(0.75, 1.35), blur=1.0, jpeg=1.0, noise=0.05,
    )  # fmt: skip
    transform = build_transform(
        TransformConfig(resize=64, crop=48, augment=augment), [0.5] * 3, [0.5] * 3, train=True
    )
    image = torch.rand(3, 60, 60)
    outs = torch.stack([transform(image) for _ in range(8)])
    assert outs.shape == (8, 3, 48, 48)
    assert outs.min() >= -1 - 1e-4 and outs.max() <= 1 + 1e-4
    assert not torch.allclose(outs[0], outs[1])  # random


def test_bad_augment_settings_name_the_key(tmp_path: Path) -> None:
    raw = yaml_config(tmp_path)
    raw["train_transform"] = {"augment": {"scale": [0.5, 2.0]}}
    with pytest.raises(ConfigError, match=r"train_transform\.augment"):
        parse_config(raw)


def yaml_config(tmp_path: Path) -> dict:
    import yaml

    return yaml.safe_load(write_config(tmp_path / "c.yaml", tmp_path).read_text())


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.randn(8, 16)
    matched = nt_xent(torch.cat([z, z + 0.01 * torch.randn_like(z)]), 0.2)
    shuffled = nt_xent(torch.cat([z, torch.randn_like(z)]), 0.2)
    assert matched < shuffled


@pytest.mark.real_data
@pytest.mark.slow
def test_robust_recipe_trains_and_calibrates(tmp_path: Path, aid_subset) -> None:
    data = aid_subset(per_class=10)
    path = write_config(
        tmp_path / "c.yaml",
        data,
        "finetune",
        data={"path": str(data), "val_fraction": 0.25},
        train_transform={
            "resize": 64,
            "crop": 56,
            "augment": {"scale": [0.2, 1.0], "brightness": 0.2, "jpeg": 0.5, "noise": 0.02},
        },
        optim={"lr": 1e-3, "warmup_epochs": 0, "milestones": [], "epochs": 1, "batch_size": 4}
        | {"label_smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0},
    )
    [result] = train(load_config(path))
    card = load_model(result.model_path).card
    assert card.calibration is not None
    assert card.calibration.fitted_on.startswith("6 validation images")
    assert card.temperature == card.calibration.temperature > 0
    rows = (result.out_dir / "split.csv").read_text().splitlines()
    assert sum(r.endswith(",val") for r in rows) == 6


@pytest.mark.real_data
@pytest.mark.slow
def test_ssl_stage_runs_a_step_on_real_aid_tiles_and_chains(tmp_path: Path, aid_subset) -> None:
    data = aid_subset(per_class=6)
    path = write_config(
        tmp_path / "c.yaml",
        data,
        "dapt",
        data={"path": str(data), "gsd": 2.0},
        source={
            "data": {"path": str(data), "gsd": 2.0},
            "objective": "ssl",
            "ssl": {"size": 48, "unlabelled_scenes": [str(SCENE)]},
            "optim": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "milestones": []},
        },
    )
    first, second = train(load_config(path))
    metrics = json.loads((first.out_dir / "metrics.json").read_text())
    assert metrics["objective"] == "ssl" and metrics["scene_tiles"] > 0
    assert metrics["final_loss"] > 0
    assert first.model_path.name == "backbone.safetensors"
    from safetensors.torch import load_file

    backbone = load_file(str(first.model_path))
    card = load_model(second.model_path).card
    assert card.provenance.init == f"file:{first.model_path}"
    [stage] = card.provenance.stages
    assert stage.objective.startswith("self-supervised SimCLR") and str(SCENE) in stage.dataset
    # The SSL stage changed the ImageNet backbone, and the target started from it.
    from rsscgeo.inits import offline_imagenet_state

    imagenet = offline_imagenet_state("tf_efficientnet_lite0")
    assert not torch.equal(backbone["conv_stem.weight"], imagenet["conv_stem.weight"])
