"""``rsscgeo experiment``: a small real-AID matrix, resumed, reported beside the paper."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error
from helpers import TINY

from rsscgeo.experiments.published import find, published

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def write_experiment(tmp_path: Path, data: Path, **extra: object) -> Path:
    base = {k: v for k, v in TINY.items() if k != "seed"}
    spec = {
        "name": "tiny",
        "out_dir": str(tmp_path / "exp"),
        "seeds": [0, 1],
        "class_split": {"path": str(data), "seed": 0, "parts": {"source": 2, "target": 2}},
        "datasets": {
            "source": {"path": "@source", "train_fraction": 0.5},
            # Pretend the target is the paper's AID at 80% to exercise the comparison.
            "target": {"path": "@target", "train_fraction": 0.8, "paper_name": "AID"},
        },
        "inits": {
            "scratch": {"kind": "scratch", "paper_init": "scratch"},
            "imagenet": {"kind": "imagenet-offline", "paper_init": "imagenet"},
            "source": {"run": "source-scratch"},
        },
        "base": base,
        "runs": [
            {"name": "source-scratch", "dataset": "source", "protocol": "scratch",
             "init": "scratch", "report": False},
            {"name": "finetune", "dataset": "target", "protocol": "finetune", "init": "imagenet"},
            {"name": "source-linear", "dataset": "target", "protocol": "linear", "init": "source"},
            {"name": "dapt", "dataset": "target", "protocol": "dapt", "init": "imagenet",
             "source_dataset": "source"},
        ],
        **extra,
    }  # fmt: skip
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_experiment_runs_resumes_and_reports(
    tmp_path: Path, aid_subset, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = aid_subset(("Beach", "Forest", "Port", "Desert"), per_class=6)
    config = write_experiment(tmp_path, data)
    result = run_cli("experiment", config)
    assert result.exit_code == 0, result.output
    out = tmp_path / "exp"
    split = json.loads((out / "datasets" / "class_split.json").read_text())
    source, target = split["parts"]["source"], split["parts"]["target"]
    assert sorted(source + target) == ["Beach", "Desert", "Forest", "Port"]

    rows = list(csv.DictReader((out / "results.csv").open()))
    cells = {(r["run"], r["seed"]) for r in rows}
    assert cells == {(run, seed) for run in ("source-scratch", "finetune", "source-linear",
                     "dapt") for seed in ("0", "1")}  # fmt: skip
    # The linear run started from the source run's model of the same seed.
    linear = yaml.safe_load((out / "source-linear" / "seed-1" / "config.yaml").read_text())
    assert linear["model"]["init"]["path"].endswith("source-scratch/seed-1/model.safetensors")
    card_classes = json.loads((out / "finetune" / "seed-0" / "metrics.json").read_text())
    assert sorted(card_classes["per_class_accuracy"]) == sorted(target)

    table = (out / "results.md").read_text()
    assert "source-scratch" not in table  # a stage, not a result
    finetune_row = next(line for line in table.splitlines() if line.startswith("| finetune"))
    assert "97.30 (secondary)" in finetune_row  # AID, 80%, ImageNet fine-tune: Table 2
    assert (out / "results.png").stat().st_size > 1000

    # A second invocation trains nothing and rewrites the same results.
    import rsscgeo.training.run as run_module

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_module, "train", no_training)
    again = run_cli("experiment", config)
    assert again.exit_code == 0, again.output
    assert "8 runs planned, 8 already finished" in again.output
    assert list(csv.DictReader((out / "results.csv").open())) == rows


def test_experiment_errors_are_one_line(tmp_path: Path, aid_subset, run_cli) -> None:
    data = aid_subset()
    bad_init = write_experiment(tmp_path, data, inits={"imagenet": {"run": "later"}})
    assert_one_line_error(run_cli("experiment", bad_init), "unknown init", "fix the experiment")
    missing = run_cli("experiment", tmp_path / "nope.yaml")
    assert_one_line_error(missing, "cannot read experiment", "check the path")


def test_published_figures_are_marked_by_source() -> None:
    figures = published()
    confirmed = {(f.dataset, f.init, f.value) for f in figures if f.source == "confirmed"}
    assert confirmed == {("MLRSNet", "scratch", 91.83), ("MLRSNet", "imagenet", 92.41)}
    assert {f.source for f in figures} == {"confirmed", "secondary"}
    assert find("UC Merced", "overall_accuracy", "finetune", "imagenet", 0.2).value == 94.64
    assert find("UC Merced", "overall_accuracy", "finetune", "imagenet", 0.8) is None
    assert find("AID", "overall_accuracy", "dapt", "imagenet", 0.5).value == 96.09


def test_a_single_seed_run_serves_every_seed_of_later_runs(tmp_path: Path, aid_subset) -> None:
    from rsscgeo.experiments.config import load_experiment
    from rsscgeo.experiments.plan import plan_experiment

    data = aid_subset(("Beach", "Forest", "Port", "Desert"), per_class=2)
    path = write_experiment(tmp_path, data)
    spec = yaml.safe_load(path.read_text())
    spec["runs"][0]["seeds"] = [7]  # source-scratch: one shared pre-training run
    path.write_text(yaml.safe_dump(spec))
    cells = plan_experiment(load_experiment(path))
    assert [c.seed for c in cells if c.run == "source-scratch"] == [7]
    linear = [c for c in cells if c.run == "source-linear"]
    assert [c.seed for c in linear] == [0, 1]
    shared = tmp_path / "exp" / "source-scratch" / "seed-7" / "model.safetensors"
    assert all(c.config.model.init.path == shared for c in linear)


def test_the_paper_experiment_plans_with_the_recipe() -> None:
    from rsscgeo.experiments.config import load_experiment
    from rsscgeo.experiments.plan import plan_experiment

    root = Path(__file__).resolve().parents[1]
    cells = plan_experiment(load_experiment(root / "configs" / "experiments" / "paper.yaml"))
    counts = {run: sum(c.run == run for c in cells) for run in {c.run for c in cells}}
    assert counts == {"scratch": 12, "finetune": 24, "linear": 5 * 2, "domain-adaptive": 6}
    for cell in cells:
        config = cell.config
        assert config.model.architecture == "resnet50" and config.optim.batch_size == 100
        assert config.trainer.precision == "16-mixed" and config.optim.epochs == 100
    dapt = next(c for c in cells if c.protocol == "dapt")
    assert dapt.config.source is not None and dapt.config.source.data.layout == "mlrsnet-multilabel"
