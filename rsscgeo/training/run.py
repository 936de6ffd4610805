"""Running a training config end to end: data, Lightning fit, evaluation, outputs.

A run directory holds everything needed to trust and reuse the result::

    model.safetensors   weights + model card
    metrics.json        held-out metrics (test split)
    split.csv           the seeded stratified split
    config.yaml         the resolved config
    confusion.png       single-label only
    curves.png          training loss and validation metrics per epoch
    checkpoints/        Lightning checkpoints; a re-run resumes from last.ckpt
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from rsscgeo import __version__
from rsscgeo.backbones import InitSpec, as_timm
from rsscgeo.colors import class_colors
from rsscgeo.data.catalog import Catalog, open_catalog
from rsscgeo.data.dataset import TileDataset
from rsscgeo.data.images import check_images
from rsscgeo.data.splits import Split, read_split, stratified_split, write_split
from rsscgeo.data.transforms import build_transform
from rsscgeo.errors import ConfigError
from rsscgeo.modelfile import ClassInfo, ModelCard, Provenance, save_model
from rsscgeo.training.config import RunConfig, dump_config
from rsscgeo.training.evaluate import score
from rsscgeo.training.features import FeatureDataset, cached_features
from rsscgeo.training.figures import plot_confusion, plot_curves
from rsscgeo.training.task import SceneClassificationTask

MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class RunResult:
    """Where a finished stage put its model and what it scored."""

    out_dir: Path
    model_path: Path
    metrics: dict[str, Any]


def train(config: RunConfig, *, resume: bool = True) -> list[RunResult]:
    """Run every stage of ``config``: one, or source then target for ``dapt``."""
    if config.protocol != "dapt":
        return [_run_stage(config, config.protocol, resume=resume)]
    assert config.source is not None
    source = config.model_copy(
        update={
            "data": config.source.data,
            "optim": config.source.optim,
            "source": None,
            "out_dir": config.out_dir / "source",
        }
    )
    first = _run_stage(source, "dapt-source", resume=resume)
    chained = config.model.model_copy(
        update={"init": InitSpec(kind="rsscgeo", path=first.model_path)}
    )
    target = config.model_copy(
        update={"model": chained, "source": None, "out_dir": config.out_dir / "target"}
    )
    (config.out_dir / "config.yaml").write_text(dump_config(config))
    return [first, _run_stage(target, "dapt-target", resume=resume)]


def _run_stage(config: RunConfig, protocol: str, *, resume: bool) -> RunResult:
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    catalog = open_catalog(config.data.path)
    check_images([item.path for item in catalog.items])
    colors = class_colors(list(catalog.classes), config.data.colors)
    split = _split(config, catalog)
    write_split(out / "split.csv", split)
    (out / "config.yaml").write_text(dump_config(config))

    if protocol == "linear":
        network, logits, labels = _fit_linear(config, catalog, split, resume=resume)
    else:
        network, logits, labels = _fit_network(config, catalog, split, resume=resume)
    metrics = score(catalog.task, logits, labels, list(catalog.classes))
    card = _card(config, catalog, colors, protocol, metrics, out / "split.csv")
    model_path = save_model(out / MODEL_FILE, network, card, half=config.half_precision_file)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if catalog.task == "multiclass":
        plot_confusion(out / "confusion.png", metrics["confusion_matrix"], list(catalog.classes))
    logs = sorted(
        (out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])
    )
    if logs:
        plot_curves(out / "curves.png", logs)
    return RunResult(out, model_path, metrics)


def _split(config: RunConfig, catalog: Catalog) -> Split:
    if config.data.split_file is None:
        return stratified_split(catalog, config.data.train_fraction, config.seed)
    return Split(
        read_split(config.data.split_file, catalog, "train"),
        read_split(config.data.split_file, catalog, "test"),
    )


def build_task(config: RunConfig, catalog: Catalog, **extra: Any) -> SceneClassificationTask:
    """The Lightning task for ``config`` on ``catalog`` (``extra``: task arguments)."""
    optim = config.optim
    return SceneClassificationTask(
        architecture=config.model.architecture,
        task=catalog.task,
        num_outputs=len(catalog.classes),
        in_channels=len(config.data.bands),
        init_kind=config.model.init.kind,
        init_path=str(config.model.init.path) if config.model.init.path else None,
        lr=optim.lr,
        warmup_epochs=optim.warmup_epochs,
        milestones=tuple(optim.milestones),
        gamma=optim.gamma,
        **extra,
    )


def build_trainer(config: RunConfig) -> L.Trainer:
    """The Lightning trainer a run uses: CSV logs and last.ckpt in ``out_dir``."""
    t = config.trainer
    return L.Trainer(
        max_epochs=config.optim.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,  # type: ignore[arg-type]  # validated by Lightning
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        logger=CSVLogger(config.out_dir, name="logs"),  # a version_N per (resumed) fit
        # Only last.ckpt: the run's product is model.safetensors, checkpoints serve resuming.
        callbacks=[
            ModelCheckpoint(dirpath=config.out_dir / "checkpoints", save_last=True, save_top_k=0)
        ],
        log_every_n_steps=10,
        enable_model_summary=False,
    )


def _fit(
    config: RunConfig, task: SceneClassificationTask, train: Any, val: Any, *, resume: bool
) -> None:
    checkpoints = config.out_dir / "checkpoints"
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    last = checkpoints / "last.ckpt"
    # Resuming restores optimizer, scheduler and epoch; loaded without unpickling code.
    ckpt = str(last) if last.exists() else None
    batch = config.optim.batch_size
    workers = config.trainer.num_workers
    train_loader = DataLoader(
        train,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=len(train) > batch,
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(
        val, batch_size=batch, num_workers=workers, persistent_workers=workers > 0
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    build_trainer(config).fit(task, train_loader, val_loader, ckpt_path=ckpt, weights_only=True)


def _fit_network(
    config: RunConfig, catalog: Catalog, split: Split, *, resume: bool
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    mean, std, bands = config.model.mean, config.model.std, len(config.data.bands)
    scale = config.data.input_scale
    train = TileDataset(
        split.train, build_transform(config.train_transform, mean, std, train=True), scale, bands
    )
    test = TileDataset(
        split.test, build_transform(config.eval_transform, mean, std, train=False), scale, bands
    )
    task = build_task(config, catalog)
    _fit(config, task, train, test, resume=resume)
    from rsscgeo.training.evaluate import predict

    network = task.model.cpu().eval()
    logits, labels = predict(
        network, test, batch_size=config.optim.batch_size, num_workers=config.trainer.num_workers
    )
    return network, logits, labels


def _fit_linear(
    config: RunConfig, catalog: Catalog, split: Split, *, resume: bool
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from rsscgeo.backbones import build_network

    backbone = build_network(
        config.model.architecture, len(catalog.classes), len(config.data.bands), config.model.init
    )
    mean, std, bands = config.model.mean, config.model.std, len(config.data.bands)
    scale = config.data.input_scale
    transform = build_transform(config.eval_transform, mean, std, train=False)
    features = cached_features(
        config.out_dir / "features.safetensors",
        backbone,
        {
            name: TileDataset(getattr(split, name), transform, scale, bands)
            for name in ("train", "test")
        },
        batch_size=config.optim.batch_size,
        num_workers=config.trainer.num_workers,
        reuse=resume,
    )
    train_x, train_y = features["train"]
    test_x, test_y = features["test"]
    task = build_task(config, catalog, head_in_features=train_x.shape[1])
    _fit(
        config,
        task,
        FeatureDataset(train_x, train_y),
        FeatureDataset(test_x, test_y),
        resume=resume,
    )
    head = task.model.cpu().eval()
    as_timm(backbone).get_classifier().load_state_dict(head.state_dict())
    with torch.inference_mode():
        logits = head(test_x)
    return backbone.eval(), logits, test_y


def _card(
    config: RunConfig,
    catalog: Catalog,
    colors: list[str],
    protocol: str,
    metrics: dict[str, Any],
    split_file: Path,
) -> ModelCard:
    headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
    try:
        return ModelCard(
            architecture=config.model.architecture,
            task=catalog.task,
            classes=[
                ClassInfo(name=n, color=c) for n, c in zip(catalog.classes, colors, strict=True)
            ],
            bands=config.data.bands,
            mean=config.model.mean,
            std=config.model.std,
            input_scale=config.data.input_scale,
            patch_size=_tile_size(catalog),
            eval_resize=config.eval_transform.resize,
            eval_crop=config.eval_transform.crop,
            gsd=config.data.gsd,
            gsd_note=config.data.gsd_note,
            provenance=Provenance(
                dataset=str(config.data.path),
                split_file=os.path.relpath(split_file, config.out_dir),
                protocol=protocol,
                init=config.model.init.describe(),
                metrics=headline,
                rsscgeo_version=__version__,
            ),
        )
    except ValueError as err:
        raise ConfigError(f"cannot describe the model: {err}") from None


def _tile_size(catalog: Catalog) -> int:
    from rsscgeo.data.images import read_image

    return int(read_image(catalog.items[0].path).shape[-1])


__all__ = ["MODEL_FILE", "RunResult", "build_task", "build_trainer", "train"]
