"""Bad input: one-line errors naming the file/key and the fix, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_line_error, write_config

pytestmark = pytest.mark.real_data


def test_missing_dataset_folder(tmp_path: Path, run_cli) -> None:
    config = write_config(tmp_path / "c.yaml", tmp_path / "nowhere")
    assert_one_line_error(run_cli("train", "--config", config), "nowhere", "does not exist")
    assert not (tmp_path / "run-finetune" / "model.safetensors").exists()


def test_empty_class_folder(tmp_path: Path, aid_subset, run_cli) -> None:
    data = aid_subset()
    (data / "Empty").mkdir()
    config = write_config(tmp_path / "c.yaml", data)
    assert_one_line_error(run_cli("train", "--config", config), "Empty", "has no images")


def test_corrupt_image(tmp_path: Path, aid_subset, run_cli) -> None:
    data = aid_subset()
    bad = data / "Beach" / "zz_truncated.jpg"
    good = next((data / "Forest").iterdir()).read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    config = write_config(
        tmp_path / "c.yaml", data, trainer={"limit_train_batches": None, "limit_val_batches": None}
    )
    assert_one_line_error(
        run_cli("train", "--config", config), "zz_truncated.jpg", "replace or remove"
    )
    assert not (tmp_path / "run-finetune" / "model.safetensors").exists()


def test_unknown_label_in_manifest(tmp_path: Path, multilabel_manifest: Path, run_cli) -> None:
    from rsscgeo.data.catalog import read_manifest
    from rsscgeo.errors import DatasetError

    with pytest.raises(DatasetError, match="unknown label 'water'"):
        read_manifest(multilabel_manifest, ["Beach", "Forest", "River", "vegetation"])


def test_manifest_missing_image_and_bad_header(tmp_path: Path, run_cli) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels\nghost.png,a\n")
    config = write_config(tmp_path / "c.yaml", manifest)
    assert_one_line_error(run_cli("train", "--config", config), "m.csv:2", "ghost.png")
    manifest.write_text("file,class\nx.png,a\n")
    assert_one_line_error(run_cli("train", "--config", config), "path,labels")


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"optim": {"learning_rate": 0.1}}, "optim.learning_rate: unknown key"),
        ({"optim": {"epochs": "many"}}, "optim.epochs"),
        ({"protocl": "linear"}, "protocl: unknown key"),
        ({"protocol": "magic"}, "protocol"),
        ({"model": {"init": {"kind": "file"}}}, "needs a path"),
    ],
)
def test_bad_config_key_or_value(tmp_path: Path, run_cli, sections: dict, needle: str) -> None:
    config = write_config(tmp_path / "c.yaml", tmp_path, **sections)
    assert_one_line_error(run_cli("train", "--config", config), "c.yaml", needle)


def test_bad_override_and_missing_or_invalid_config(tmp_path: Path, run_cli) -> None:
    config = write_config(tmp_path / "c.yaml", tmp_path)
    assert_one_line_error(
        run_cli("train", "--config", config, "--set", "optim.epochs"), "key.subkey=value"
    )
    assert_one_line_error(
        run_cli("train", "--config", tmp_path / "none.yaml"), "none.yaml", "check the path"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("protocol: [unclosed\n")
    assert_one_line_error(run_cli("train", "--config", broken), "not valid YAML")


def test_evaluate_with_unknown_architecture_init(tmp_path: Path, aid_subset, run_cli) -> None:
    config = write_config(tmp_path / "c.yaml", aid_subset(), model={"architecture": "resnet9000"})
    assert_one_line_error(run_cli("train", "--config", config), "resnet9000", "timm")


def test_evaluate_missing_model(tmp_path: Path, aid_subset, run_cli) -> None:
    assert_one_line_error(
        run_cli("evaluate", tmp_path / "absent.safetensors", aid_subset()),
        "absent.safetensors",
        "does not exist",
    )


def test_every_classify_option_has_a_flag_and_change_leaves_out_probabilities(run_cli) -> None:
    import dataclasses

    from rsscgeo.cli.options import _CLASSIFY_OPTIONS
    from rsscgeo.scene.options import ClassifyOptions

    fields = [f.name for f in dataclasses.fields(ClassifyOptions)]
    assert sorted(name for name, _ in _CLASSIFY_OPTIONS) == sorted(fields)
    assert "--probabilities" in run_cli("classify", "--help").output
    assert "--probabilities" not in run_cli("change", "--help").output
