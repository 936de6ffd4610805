"""Distributed training settings: validated, handed to Lightning, and a real 2-process DDP run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_config
from lightning.pytorch.strategies import DDPStrategy

from rsscgeo import load_model
from rsscgeo.errors import ConfigError
from rsscgeo.training.config import load_config
from rsscgeo.training.run import _is_rank_zero, build_trainer, train

DDP_CPU = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}


def test_distributed_settings_reach_the_trainer(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tmp_path, trainer={**DDP_CPU, "num_nodes": 3})
    config = load_config(path)
    assert (config.trainer.devices, config.trainer.num_nodes) == (2, 3)
    trainer = build_trainer(config)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.num_devices, trainer.num_nodes) == (2, 3)
    # The defaults stay Lightning's: one node, strategy chosen by Lightning.
    default = load_config(write_config(tmp_path / "d.yaml", tmp_path)).trainer
    assert (default.devices, default.num_nodes, default.strategy) == ("auto", 1, "auto")
    assert load_config(path, ["trainer.devices=[0, 1]"]).trainer.devices == [0, 1]


@pytest.mark.parametrize(
    ("env", "zero"),
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False)],
)
def test_rank_zero_is_known_before_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], zero: bool
) -> None:
    # What the run writes before training (split, config) must come from one process only.
    for key in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = write_config(tmp_path / "c.yaml", tmp_path, trainer={**DDP_CPU, "num_nodes": 2})
    assert _is_rank_zero(build_trainer(load_config(path))) is zero


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("trainer.num_nodes=0", "trainer.num_nodes"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=[]", "trainer.devices"),
        ("trainer.devices=[1, 1]", "trainer.devices"),
        ("trainer.devices=two", "trainer.devices"),
        ("trainer.strategy=''", "trainer.strategy"),
    ],
)
def test_nonsense_distributed_settings_are_refused(tmp_path: Path, setting: str, needle: str):
    path = write_config(tmp_path / "c.yaml", tmp_path)
    with pytest.raises(ConfigError, match=needle):
        load_config(path, [setting])


def test_lightning_refusals_become_config_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tmp_path, trainer={**DDP_CPU, "strategy": "ddpp"})
    with pytest.raises(ConfigError, match="ddpp"):
        build_trainer(load_config(path))


def test_linear_refuses_several_processes_before_reading_data(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tmp_path / "nowhere", "linear", trainer=DDP_CPU)
    with pytest.raises(ConfigError, match=r"trainer\.devices: 1"):
        train(load_config(path))


@pytest.mark.real_data
@pytest.mark.slow
def test_two_process_ddp_run_writes_once(tmp_path: Path, aid_subset) -> None:
    data = aid_subset()
    config = write_config(tmp_path / "c.yaml", data, "finetune", trainer=DDP_CPU)
    # Lightning's DDP launcher re-executes sys.argv for rank 1, so this needs its own process.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(key, None)
    cli = Path(sys.executable).with_name("rsscgeo")
    done = subprocess.run(
        [str(cli), "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    # Two processes joined one group (on CPU Lightning's DDP uses the gloo backend).
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log
    # Only rank 0 reports and writes: one result line, one model, one metrics file.
    assert done.stdout.count("(held-out split)") == 1, done.stdout
    out = tmp_path / "run-finetune"
    assert [p.name for p in tmp_path.rglob("*.safetensors")] == ["model.safetensors"]
    assert [p.name for p in tmp_path.rglob("metrics.json")] == ["metrics.json"]
    assert not list(tmp_path.rglob("*.tmp"))
    # Scored once on the whole held-out split: no shard missing, nothing counted twice.
    with (out / "split.csv").open() as f:
        test_rows = sum(row["split"] == "test" for row in csv.DictReader(f))
    assert json.loads((out / "metrics.json").read_text())["num_images"] == test_rows
    loaded = load_model(out / "model.safetensors")
    assert loaded.card.class_names == ["Beach", "Forest", "Port"]
    assert (out / "checkpoints" / "last.ckpt").is_file()
