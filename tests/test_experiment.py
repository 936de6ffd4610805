"""``rsscgeo experiment``: a small real-AID matrix, resumed, reported beside the paper."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from helpers import TINY, assert_one_line_error
from test_evaluate import (
    CLASS_MAP,
    COLOUR_CLASSES,
    patch_networks,
    save_colour_model,
    write_colour_dataset,
)

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


def _eval_experiment(tmp_path: Path, class_map: str, **eval_set: object) -> Path:
    """Runs on a tiny colour dataset, evaluated on another through ``class_map``."""
    train_data = write_colour_dataset(
        tmp_path / "train", {name: [((9, 9, 9), 16, 16)] for name in COLOUR_CLASSES}
    )
    eval_data = write_colour_dataset(tmp_path / "eval")
    (tmp_path / "map.yaml").write_text(class_map)
    spec = {
        "name": "colours",
        "out_dir": str(tmp_path / "exp"),
        "seeds": [0, 1],
        "datasets": {"colours": {"path": str(train_data)}},
        "inits": {"imagenet": {"kind": "imagenet-offline"}},
        "base": {k: v for k, v in TINY.items() if k != "seed"},
        "runs": [
            {"name": "stage", "dataset": "colours", "protocol": "finetune", "init": "imagenet",
             "report": False},
            {"name": "finetune", "dataset": "colours", "protocol": "finetune", "init": "imagenet"},
        ],
        "eval_sets": {"ucm": {"path": str(eval_data), "class_map": str(tmp_path / "map.yaml"),
                              **eval_set}},
    }  # fmt: skip
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fake_train(calls: list[str]):
    """Instead of training: seed 0 writes an exact colour model, seed 1 one that swaps
    the Green and Blue outputs."""

    def train(config) -> None:
        calls.append(f"{config.out_dir}")
        save_colour_model(config.out_dir / "model.safetensors", swap=config.seed == 1)
        metrics = {"task": "multiclass", "overall_accuracy": 0.9, "average_accuracy": 0.9}
        (config.out_dir / "metrics.json").write_text(json.dumps(metrics))

    return train


def test_eval_sets_are_evaluated_once_and_reported_beside_in_domain(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rsscgeo.training.crossdomain as crossdomain
    import rsscgeo.training.run as run_module

    patch_networks(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(run_module, "train", _fake_train(calls))
    config = _eval_experiment(tmp_path, CLASS_MAP)
    result = run_cli("experiment", config)
    assert result.exit_code == 0, result.output
    assert len(calls) == 4
    out = tmp_path / "exp"
    # Seed 0: 7/8 (see test_evaluate). Seed 1 (Green/Blue swapped): crimson 3/3, lime
    # only its blue image (now Green), ocean both (it accepts Blue and Green): 6/8.
    rows = list(csv.DictReader((out / "results.csv").open()))
    cross = {
        (r["run"], r["seed"]): float(r["value"]) for r in rows if r["metric"] == "ucm_accuracy"
    }
    assert cross == {("finetune", "0"): 7 / 8, ("finetune", "1"): 6 / 8}
    metrics = {r["metric"] for r in rows if r["run"] == "finetune"}
    assert {"overall_accuracy", "ucm_accuracy", "ucm_coverage", "ucm_committed_accuracy"} <= metrics
    assert not (out / "stage" / "seed-0" / "eval-ucm.json").exists()  # a stage, not reported
    record = json.loads((out / "finetune" / "seed-0" / "eval-ucm.json").read_text())
    assert record["left_out"][0]["folder"] == "grass"
    table = (out / "results.md").read_text()
    assert "*<set>_accuracy*" in table.splitlines()[2]
    assert table.splitlines()[4].endswith("| diff | ucm_accuracy |")
    row = next(line for line in table.splitlines() if line.startswith("| finetune"))
    assert row.endswith("| 90.00 ± 0.00 | 2 |  |  | 81.25 ± 8.84 (2) |")

    # Nothing is trained or evaluated again while the figures are recorded.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated again")

    evaluate = crossdomain.evaluate_with_class_map
    monkeypatch.setattr(crossdomain, "evaluate_with_class_map", refuse)
    again = run_cli("experiment", config)
    assert again.exit_code == 0, again.output
    assert len(calls) == 4 and "evaluating" not in again.output
    assert list(csv.DictReader((out / "results.csv").open())) == rows

    # A changed class map makes the recorded figures stale: re-evaluated, not retrained.
    monkeypatch.setattr(crossdomain, "evaluate_with_class_map", evaluate)
    _eval_experiment(tmp_path, CLASS_MAP.replace("lime: Green", "lime: [Green, Blue]"))
    third = run_cli("experiment", config)
    assert third.exit_code == 0, third.output
    assert len(calls) == 4 and third.output.count("evaluating finetune") == 2
    assert "| 100.00 ± 0.00 (2) |" in (out / "results.md").read_text()


def test_bad_eval_sets_fail_before_training(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rsscgeo.training.run as run_module

    calls: list[str] = []
    monkeypatch.setattr(run_module, "train", _fake_train(calls))
    # The models will be trained on Red/Green/Blue: Purple can never be predicted.
    config = _eval_experiment(tmp_path, "crimson: [Purple]\n")
    assert_one_line_error(
        run_cli("experiment", config), "eval_sets.ucm:", "'Purple' is not a class of", ".runs"
    )
    config = _eval_experiment(tmp_path, "crimsn: [Red]\n")
    assert_one_line_error(run_cli("experiment", config), "eval_sets.ucm:", "'crimsn'")
    config = _eval_experiment(tmp_path, "crimson: [Red]\n", runs=["nope"])
    assert_one_line_error(run_cli("experiment", config), "unknown run 'nope'")
    assert calls == []
