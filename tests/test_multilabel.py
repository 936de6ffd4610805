"""Multi-label training on a CSV manifest fixture and on real BigEarthNet patches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_config

from rsscgeo import load_model
from rsscgeo.data.layouts import open_catalog
from rsscgeo.training.config import load_config
from rsscgeo.training.run import train

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_manifest_multilabel_trains_and_evaluates(
    tmp_path: Path, multilabel_manifest: Path, run_cli
) -> None:
    catalog = open_catalog(multilabel_manifest)
    assert catalog.task == "multilabel"
    assert catalog.classes == ("Beach", "Forest", "River", "vegetation", "water")
    [result] = train(load_config(write_config(tmp_path / "c.yaml", multilabel_manifest)))
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert {"micro_f1", "macro_f1", "mAP"} <= metrics.keys()
    assert 0 <= metrics["micro_f1"] <= 1 and 0 <= metrics["mAP"] <= 1
    card = load_model(result.model_path).card
    assert card.task == "multilabel" and card.thresholds == [0.5] * 5
    assert not (result.out_dir / "confusion.png").exists()
    out = tmp_path / "eval.json"
    cli = run_cli("evaluate", result.model_path, multilabel_manifest, "--json", out)
    assert cli.exit_code == 0, cli.output
    assert "micro-F1" in cli.output
    assert json.loads(out.read_text())["micro_f1"] == pytest.approx(
        _evaluate_all(result.model_path, multilabel_manifest)
    )


def _evaluate_all(model: Path, manifest: Path) -> float:
    from rsscgeo.training.evaluate import evaluate_model

    return float(evaluate_model(load_model(model), open_catalog(manifest))["micro_f1"])


def test_bigearthnet_rgb_multilabel(tmp_path: Path, bigearthnet_s2: Path) -> None:
    catalog = open_catalog(bigearthnet_s2)
    assert catalog.task == "multilabel" and len(catalog.items) == 6
    assert all(1 <= len(item.labels) <= 5 for item in catalog.items)
    config = write_config(
        tmp_path / "c.yaml",
        bigearthnet_s2,
        # Sentinel-2 L2A reflectance is stored x10000; true colour rarely exceeds 0.3.
        data={
            "path": str(bigearthnet_s2),
            "input_scale": 3000.0,
            "gsd": 10.0,
            "train_fraction": 0.5,
        },
        optim={"epochs": 1, "batch_size": 2, "warmup_epochs": 0, "milestones": [], "lr": 1e-3},
    )
    [result] = train(load_config(config))
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    assert metrics["classes"] == list(catalog.classes)
    card = load_model(result.model_path).card
    assert card.gsd == 10.0 and card.input_scale == 3000.0 and card.patch_size == 120
