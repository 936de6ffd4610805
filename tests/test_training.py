"""Each protocol trains for a step on real AID images and writes a complete run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_config

from rsscgeo import load_model
from rsscgeo.training.config import load_config
from rsscgeo.training.run import train

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

RUN_FILES = (
    "model.safetensors",
    "metrics.json",
    "split.csv",
    "config.yaml",
    "confusion.png",
    "curves.png",
)


def _check_run(out: Path, classes: list[str], protocol: str) -> dict[str, object]:
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["overall_accuracy"] <= 1.0
    assert metrics["classes"] == classes
    loaded = load_model(out / "model.safetensors")
    assert loaded.card.class_names == classes
    assert loaded.card.provenance.protocol == protocol
    assert loaded.card.provenance.split_file == "split.csv"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.model(x).shape == (2, len(classes))
    return metrics


@pytest.mark.parametrize("protocol", ["scratch", "finetune"])
def test_protocol_trains_and_writes_run(tmp_path: Path, aid_subset, run_cli, protocol: str) -> None:
    data = aid_subset()
    config = write_config(tmp_path / "c.yaml", data, protocol)
    result = run_cli("train", "--config", config)
    assert result.exit_code == 0, result.output
    out = tmp_path / f"run-{protocol}"
    _check_run(out, ["Beach", "Forest", "Port"], protocol)
    assert "overall accuracy" in result.output


def test_linear_caches_features_and_matches_saved_model(tmp_path: Path, aid_subset) -> None:
    data = aid_subset()
    config = load_config(write_config(tmp_path / "c.yaml", data, "linear"))
    [result] = train(config)
    metrics = _check_run(result.out_dir, ["Beach", "Forest", "Port"], "linear")
    cache = result.out_dir / "features.safetensors"
    assert cache.is_file()
    # The saved full network reproduces the head-on-cached-features accuracy.
    from rsscgeo.data.layouts import open_catalog
    from rsscgeo.data.splits import read_split
    from rsscgeo.training.evaluate import evaluate_model

    test = read_split(result.out_dir / "split.csv", open_catalog(data), "test")
    again = evaluate_model(load_model(result.model_path), test)
    assert again["overall_accuracy"] == pytest.approx(metrics["overall_accuracy"], abs=1e-6)
    # Frozen backbone: identical to the ImageNet weights it started from.
    from rsscgeo.inits import offline_imagenet_state

    saved = load_model(result.model_path).model.state_dict()
    imagenet = offline_imagenet_state("tf_efficientnet_lite0")
    torch.testing.assert_close(saved["conv_stem.weight"], imagenet["conv_stem.weight"])


def test_dapt_runs_both_stages_and_chains_weights(tmp_path: Path, aid_subset) -> None:
    source = aid_subset(("Airport", "Bridge", "Desert", "Meadow"), 5)
    target = aid_subset(("Beach", "Forest", "Port"), 6)
    path = write_config(
        tmp_path / "c.yaml",
        target,
        "dapt",
        source={
            "data": {"path": str(source)},
            "optim": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0},
        },
    )
    first, second = train(load_config(path))
    assert first.out_dir.name == "source" and second.out_dir.name == "target"
    _check_run(first.out_dir, ["Airport", "Bridge", "Desert", "Meadow"], "dapt-source")
    card = _check_run(second.out_dir, ["Beach", "Forest", "Port"], "dapt-target")
    assert card
    target_card = load_model(second.model_path).card
    assert target_card.provenance.init == f"rsscgeo:{first.model_path}"


def test_rerun_resumes_from_last_checkpoint(tmp_path: Path, aid_subset) -> None:
    data = aid_subset()
    path = write_config(tmp_path / "c.yaml", data, "finetune")
    train(load_config(path))
    out = tmp_path / "run-finetune"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    train(load_config(path, ["optim.epochs=2"]))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4  # 2 epochs of 2 batches in all
    # The second fit logged only the missing epoch, beside the first fit's log.
    second = (out / "logs" / "version_1" / "metrics.csv").read_text().splitlines()[1:]
    assert {line.split(",")[0] for line in second} == {"1"}
    assert (out / "logs" / "version_0" / "metrics.csv").is_file()


def test_paper_configs_are_valid_and_follow_the_recipe() -> None:
    root = Path(__file__).resolve().parents[1] / "configs" / "paper"
    configs = {p.stem: load_config(p) for p in sorted(root.glob("*.yaml"))}
    check = configs.pop("gpu_check")  # the recipe's shape, shortened to a few minutes
    assert (check.optim.batch_size, check.trainer.precision) == (100, "16-mixed")
    assert (check.train_transform.resize, check.train_transform.crop) == (292, 256)
    assert check.model.architecture == "resnet50" and check.optim.epochs == 2
    assert set(configs) >= {"scratch", "finetune", "linear", "dapt"}
    for name, config in configs.items():
        assert config.model.architecture == "resnet50"
        assert config.optim.batch_size == 100 and config.optim.epochs == 100
        assert config.optim.milestones == [50, 70, 90] and config.optim.gamma == 0.2
        assert config.optim.warmup_epochs == 5
        assert (config.train_transform.resize, config.train_transform.crop) == (292, 256)
        assert (config.eval_transform.resize, config.eval_transform.crop) == (292, 256)
        if name != "scratch":
            assert config.optim.lr == 1e-4


def test_a_stop_ends_training_at_a_step_and_a_rerun_resumes_from_the_kept_checkpoint(
    tmp_path: Path, aid_subset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from rsscgeo.errors import RunInterrupted
    from rsscgeo.stopping import STOP
    from rsscgeo.training.interrupt import StopAtStep

    at_step = StopAtStep.on_train_batch_start

    def request_after_step_3(self: StopAtStep, trainer, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == 3:  # 3 steps are done, in epoch 2 of 2 batches each
            STOP.request(signal.SIGTERM)  # as the CLI's handler does
        at_step(self, trainer, *args, **kwargs)

    monkeypatch.setattr(StopAtStep, "on_train_batch_start", request_after_step_3)
    path = write_config(tmp_path / "c.yaml", aid_subset(), "finetune", optim={"epochs": 3})
    with pytest.raises(RunInterrupted) as caught:
        train(load_config(path))
    assert caught.value.signum == signal.SIGTERM
    out = tmp_path / "run-finetune"
    last = out / "checkpoints" / "last.ckpt"
    assert f"in epoch 2 at step 3 ({last} of epoch 1 kept)" in str(caught.value)
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 2
    assert not (out / "model.safetensors").exists()

    STOP.clear()
    monkeypatch.setattr(StopAtStep, "on_train_batch_start", at_step)
    [result] = train(load_config(path))
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 6
    assert result.model_path.is_file()
