"""Training on several sources: the partial-label loss, the tile cache, class maps onto a
taxonomy, balanced sampling, the batched augmentation, and a short real run."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rsscgeo import load_model
from rsscgeo.data.cache import cached_tiles
from rsscgeo.errors import ConfigError
from rsscgeo.scene.change import PatchPair
from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.scene.legend import Legend
from rsscgeo.taxonomy import load_taxonomy
from rsscgeo.training.batch_augment import BatchAugment
from rsscgeo.training.calibration import calibrate, fit_temperature
from rsscgeo.training.config import CalibrationConfig, SourceConfig, load_config
from rsscgeo.training.multisource import partial_label_loss
from rsscgeo.training.sources import Rows, balanced_weights, open_source

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = ROOT / "configs" / "taxonomy" / "land_use_33.yaml"
DATA = ROOT.parent / "shared" / "data"


def test_the_partial_label_loss_and_its_gradient_match_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]], requires_grad=True)
    allowed = torch.tensor([[True, True, False, False], [False, False, True, False]])
    loss = partial_label_loss(logits, allowed)
    e = [[math.exp(v) for v in row] for row in logits.tolist()]
    p = [[v / sum(row) for v in row] for row in e]
    by_hand = (-math.log(p[0][0] + p[0][1]) - math.log(p[1][2])) / 2
    assert float(loss.detach()) == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    # d/dz_c of -log sum_S p = p_c - [c in S] p_c / sum_S p, averaged over the 2 rows.
    expected = []
    for row, mask in zip(p, allowed.tolist(), strict=True):
        in_set = sum(v for v, m in zip(row, mask, strict=True) if m)
        expected.append(
            [(v - (v / in_set if m else 0.0)) / 2 for v, m in zip(row, mask, strict=True)]
        )
    torch.testing.assert_close(logits.grad, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # One allowed class: exactly cross-entropy; smoothing mixes in the mean -log p.
    one = torch.tensor([[True, False, False, False], [False, False, True, False]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    assert float(partial_label_loss(logits, one)) == pytest.approx(float(ce), rel=1e-6)
    smooth = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]), label_smoothing=0.1)
    assert float(partial_label_loss(logits, one, 0.1)) == pytest.approx(float(smooth), rel=1e-5)


def test_calibration_accepts_set_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(400, 5) * 3
    labels = logits.argmax(1)
    labels[:100] = torch.randint(0, 5, (100,))
    allowed = torch.nn.functional.one_hot(labels, 5).bool()
    assert fit_temperature(logits, allowed) == pytest.approx(
        fit_temperature(logits, labels), rel=1e-6
    )
    wide = allowed.clone()
    wide[:, :2] = wide[:, :2].any(1, keepdim=True)  # classes 0 and 1 as one set
    calibration = calibrate(logits, wide, CalibrationConfig(target_accuracy=0.9), "fixture")
    assert calibration.metrics["val_accuracy"] >= float(
        (logits.argmax(1) == labels).double().mean()
    )


def _jpeg(path: Path, value: int, side: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(path, quality=95)
    return path


def test_the_tile_cache_is_built_once_and_invalidated_when_a_file_changes(tmp_path: Path) -> None:
    images = [_jpeg(tmp_path / f"i{v}.jpg", v) for v in (10, 200)]
    folder = tmp_path / "cache"
    first = cached_tiles(images, 16, folder=folder, progress=False)
    assert first.shape == (2, 3, 16, 16) and first.dtype == np.uint8
    assert abs(int(first[1].mean()) - 200) <= 2
    assert isinstance(first, np.memmap)
    again = cached_tiles(images, 16, folder=folder, progress=False)
    assert again.filename == first.filename  # reused, not decoded again
    _jpeg(images[1], 60)  # the same name, other pixels (and a later mtime)
    os.utime(images[1], ns=(time.time_ns() + 10**9,) * 2)
    changed = cached_tiles(images, 16, folder=folder, progress=False)
    assert changed.filename != first.filename and abs(int(changed[1].mean()) - 60) <= 2
    assert not list(folder.glob(".*.part"))


def _dataset(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        for i in range(count):
            _jpeg(root / name / f"{name}_{i}.jpg", 20 * i % 255)
    return root


def test_a_source_maps_folders_to_classes_sets_and_families(tmp_path: Path) -> None:
    taxonomy = load_taxonomy(TAXONOMY)
    root = _dataset(tmp_path / "src", {"lake": 4, "residential": 4, "green": 4, "other": 4})
    class_map = tmp_path / "map.yaml"
    class_map.write_text(
        yaml.safe_dump(
            {
                "lake": "Lake",
                "residential": ["DenseResidential", "MediumResidential", "SparseResidential"],
                "green": "Vegetation",
            }
        )
    )
    source = open_source(
        SourceConfig(name="toy", path=root, class_map=class_map, val_fraction=0.25), taxonomy, 0
    )
    folders = ["green", "lake", "other", "residential"]
    allowed = dict(zip(folders, source.allowed, strict=True))
    names = taxonomy.leaves
    assert [names[i] for i in allowed["lake"]] == ["Lake"]
    assert sorted(names[i] for i in allowed["residential"]) == [
        "DenseResidential",
        "MediumResidential",
        "SparseResidential",
    ]
    assert sorted(names[i] for i in allowed["green"]) == ["Farmland", "Forest", "Meadow"]
    assert source.left_out == ("other",)
    parts = [source.part(p) for p in ("train", "val", "test")]
    assert all(p is not None for p in parts)
    assert sum(len(p.items) for p in parts if p) == 12  # 'other' is left out


def test_a_class_map_naming_an_unknown_class_is_one_line(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "src", {"lake": 2, "pond": 2})
    class_map = tmp_path / "map.yaml"
    class_map.write_text("lake: Lakes\npond: Pond\n")
    with pytest.raises(ConfigError) as caught:
        open_source(
            SourceConfig(name="toy", path=root, class_map=class_map), load_taxonomy(TAXONOMY), 0
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "lake: 'Lakes' is neither a class nor a family" in message and "'Lake'" in message


def _sources_config(tmp_path: Path, data: dict[str, object], **sections: object) -> Path:
    """A finetune config of one source (a folder under ``tmp_path``), written to a file."""
    config = tmp_path / "c.yaml"
    source = {"sources": [{"name": "a", "path": str(tmp_path)}]}
    run = {"name": "x", "protocol": "finetune", "out_dir": str(tmp_path)}
    config.write_text(yaml.safe_dump(run | {"data": source | data} | sections))
    return config


def test_a_sources_config_needs_one_kind_of_data_and_a_taxonomy(tmp_path: Path) -> None:
    config = _sources_config(tmp_path, {})
    with pytest.raises(ConfigError, match="sources need a taxonomy"):
        load_config(config)


@pytest.mark.parametrize("step", ["hue", "jpeg"])
def test_an_augmentation_sources_runs_lack_is_refused_not_ignored(
    tmp_path: Path, step: str
) -> None:
    config = _sources_config(
        tmp_path,
        {"taxonomy": "configs/taxonomy/land_use_33.yaml"},
        train_transform={"augment": {step: 0.1}},
    )
    with pytest.raises(
        ConfigError, match=rf"augment\.{step} is not applied in sources runs"
    ) as err:
        load_config(config)
    assert "\n" not in str(err.value)
    load_config(config, [f"train_transform.augment.{step}=0"])  # without it the config loads


def test_sampling_is_balanced_across_sources_by_weight() -> None:
    source = np.array([0] * 900 + [1] * 100)
    rows = Rows(np.zeros((1000, 3, 2, 2), np.uint8), np.ones((1000, 2), bool), source)
    weights = balanced_weights(rows, [1.0, 3.0])
    drawn = torch.multinomial(
        weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    share = float((torch.from_numpy(source)[drawn] == 1).double().mean())
    assert share == pytest.approx(0.75, abs=0.02)


def test_the_batch_augmentation_keeps_content_and_turns_it() -> None:
    tiles = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    tiles[:, 0, :4, :] = 255  # top half red
    plain = BatchAugment(size=8, mean=(0, 0, 0), std=(1, 1, 1), dihedral=False)
    x = plain.train(tiles, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, tiles.float() / 255)  # full crop, no turn: unchanged
    turned = BatchAugment(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    top = torch.zeros((8, 8), dtype=torch.bool)
    top[:4] = True
    halves = {"top": top, "bottom": top.flip(0), "left": top.T, "right": top.T.flip(1)}
    seen = set()
    for seed in range(40):
        red = turned.train(tiles[:1], torch.Generator().manual_seed(seed))[0, 0] > 0.5
        # Rotations and flips move the red half to a side, whole.
        [side] = [name for name, half in halves.items() if torch.equal(red, half)]
        seen.add(side)
    assert seen == set(halves)
    evaluated = plain.eval(tiles)
    torch.testing.assert_close(evaluated, tiles.float() / 255)


def test_training_crops_can_be_smaller_than_the_evaluated_tiles() -> None:
    tiles = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    fixres = BatchAugment(size=12, mean=(0, 0, 0), std=(1, 1, 1), eval_size=16, scale=(0.5, 1))
    assert fixres.train(tiles, torch.Generator().manual_seed(0)).shape == (2, 3, 12, 12)
    # Whole tiles at the cache's side: evaluation is the identity, as classify's resize.
    torch.testing.assert_close(fixres.eval(tiles), tiles.float() / 255)


def test_change_compares_at_the_coarser_level() -> None:
    from test_hierarchy import toy_card

    legend = Legend.for_card(toy_card(0.5))
    chunk = Chunk(0, 0, 0, 1, 4)

    def result(rows: list[list[float]]) -> ChunkResult:
        probs = np.array(rows, np.float32)[None]
        return ChunkResult(chunk, probs, np.ones((1, 4), np.float32))

    before = result(
        [[0.8, 0.1, 0.05, 0.05], [0.8, 0.1, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]
    )
    after = result(
        [
            [0.1, 0.8, 0.05, 0.05],
            [0.3, 0.3, 0.2, 0.2],
            [0.2, 0.1, 0.6, 0.1],
            [0.25, 0.25, 0.25, 0.25],
        ]
    )
    pair = PatchPair.compare(before, after, legend)
    # a1 -> a2: both sure of the class: a change. a1 -> A: the same family: none.
    # A -> b1: families differ: a change. A -> nothing sure (0.5 = threshold: A): none.
    assert pair.changed[0].tolist() == [True, False, True, False]
    assert pair.by_family[0].tolist() == [False, True, True, True]


@pytest.mark.slow
@pytest.mark.real_data
def test_a_two_source_run_trains_writes_a_hierarchical_card_and_resumes(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    aid = tmp_path / "aid"
    nwpu = tmp_path / "nwpu"
    for folder, names in (
        (aid, ["Pond", "Farmland", "DenseResidential"]),
        (nwpu, ["lake", "residential"]),
    ):
        source = DATA / ("aid150" if folder == aid else "nwpu12")
        for name in names:
            (folder / name).mkdir(parents=True)
            for image in sorted((source / name).iterdir())[:8]:
                (folder / name / image.name).symlink_to(image)
    class_map = tmp_path / "map.yaml"
    class_map.write_text(
        "lake: Lake\nresidential: [DenseResidential, MediumResidential, SparseResidential]\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "protocol": "finetune",
                "out_dir": str(tmp_path / "run"),
                "data": {
                    "taxonomy": str(TAXONOMY),
                    "cache_size": 64,
                    "gsd": 2.0,
                    "sources": [
                        {"name": "aid", "path": str(aid), "val_fraction": 0.25},
                        {
                            "name": "nwpu",
                            "path": str(nwpu),
                            "class_map": str(class_map),
                            "weight": 0.5,
                            "val_fraction": 0.25,
                        },
                    ],
                },
                "model": {
                    "architecture": "tf_efficientnet_lite0",
                    "init": {"kind": "imagenet-offline"},
                    "mean": [0.5] * 3,
                    "std": [0.5] * 3,
                },
                "train_transform": {
                    "crop": 64,
                    "augment": {"scale": [0.3, 1.0], "brightness": 0.2},
                },
                "optim": {
                    "lr": 1e-4,
                    "head_lr": 5e-4,
                    "schedule": "cosine",
                    "epochs": 1,
                    "batch_size": 8,
                },
                "trainer": {"num_workers": 0, "precision": "bf16-mixed"},
            }
        )
    )
    monkeypatch.setenv("RSSCGEO_CACHE_DIR", str(tmp_path / "cache"))
    result = run_cli("train", "--config", config)
    assert result.exit_code == 0, result.output
    assert "aid accuracy" in result.output and "nwpu accuracy" in result.output
    card = load_model(tmp_path / "run" / "model.safetensors").card
    assert card.num_classes == 33 and len(card.parents) == 7
    assert card.classes[card.class_names.index("Lake")].parent == "Water"
    assert card.calibration is not None and card.eval_resize == 64
    assert {s.stem for s in (tmp_path / "run" / "splits").iterdir()} == {"aid", "nwpu"}
    assert card.provenance.dataset.startswith("aid (")
    assert any((tmp_path / "cache" / "tiles").glob("*.npy"))
    # A second epoch resumes from the first one's checkpoint.
    again = run_cli("train", "--config", config, "--set", "optim.epochs=2")
    assert again.exit_code == 0, again.output
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 1


def test_the_blur_softens_an_edge_by_its_gaussian_and_keeps_the_rest() -> None:
    tiles = torch.zeros((6, 1, 16, 16), dtype=torch.uint8)
    tiles[:, :, :, 8:] = 255  # a vertical edge
    # Whole tiles, no turn and no stretch: only the blur changes them.
    same = {"size": 16, "mean": (0,), "std": (1,), "dihedral": False, "ratio": (1.0, 1.0)}
    blurred = BatchAugment(**same, blur=1.0, blur_sigma=(1.0, 1.0)).train(
        tiles, torch.Generator().manual_seed(0)
    )
    # Across the edge each row is the step convolved with a unit Gaussian (erf), by hand.
    x = torch.arange(16, dtype=torch.float64) - 7.5
    expected = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    row = blurred[0, 0, 8].double()
    assert torch.allclose(row[4:12], expected[4:12], atol=0.02), row
    assert torch.equal(blurred[:, :, 0], blurred[:, :, 15])  # each row alike: no vertical change
    never = BatchAugment(**same, blur=0.0)
    torch.testing.assert_close(never.train(tiles, torch.Generator()), tiles.float() / 255)


def test_a_run_started_from_an_rsscgeo_model_records_that_models_stages() -> None:
    from rsscgeo.inits import InitSpec
    from rsscgeo.modelfile import read_card
    from rsscgeo.training.run import _init_stages

    flat = Path(__file__).resolve().parents[1] / "examples/models/aid_efficientnet_lite0"
    model = flat / "model.safetensors"
    provenance = read_card(model).provenance
    [stage] = _init_stages(InitSpec(kind="rsscgeo", path=model))
    assert (stage.protocol, stage.init, stage.dataset) == (
        provenance.protocol,
        provenance.init,
        provenance.dataset,
    )
    assert stage.metrics == provenance.metrics and str(model) in stage.objective
    assert _init_stages(InitSpec(kind="imagenet-offline")) == []
