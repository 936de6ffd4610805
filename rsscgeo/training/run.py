"""Running a training config end to end: data, Lightning fit, evaluation, outputs.

A run directory holds everything needed to trust and reuse the result::

    model.safetensors   weights + model card
    metrics.json        held-out metrics (test split)
    split.csv           the seeded stratified split
    config.yaml         the resolved config
    confusion.png       single-label only
    curves.png          training loss and validation metrics per epoch
    checkpoints/        Lightning checkpoints; a re-run resumes from last.ckpt

With several processes (``trainer.devices``/``num_nodes``, DDP) every process trains;
global rank 0 alone writes these files and scores the held-out split, so ``out_dir``
must be on a filesystem that every node sees (all of them resume from last.ckpt).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from rsscgeo import __version__
from rsscgeo.colors import class_colors
from rsscgeo.data.catalog import Catalog
from rsscgeo.data.images import check_images
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.splits import Split, split_catalog, write_split
from rsscgeo.data.torch_dataset import TileDataset
from rsscgeo.data.transforms import build_transform
from rsscgeo.errors import ConfigError
from rsscgeo.inits import InitSpec
from rsscgeo.modelfile import (
    Calibration,
    ClassInfo,
    ExemplarInfo,
    ModelCard,
    Provenance,
    StageRecord,
    read_card,
    save_model,
)
from rsscgeo.networks import as_timm
from rsscgeo.training.calibration import calibrate
from rsscgeo.training.config import RunConfig, SSLConfig, StageConfig, dump_config
from rsscgeo.training.evaluate import score
from rsscgeo.training.features import FeatureDataset, cached_features
from rsscgeo.training.figures import plot_confusion, plot_curves
from rsscgeo.training.interrupt import StopAtStep, fit_or_interrupted
from rsscgeo.training.task import SceneClassificationTask

MODEL_FILE = "model.safetensors"
# The backbone a self-supervised stage keeps (plain weights: it has no classes).
BACKBONE_FILE = "backbone.safetensors"


# A trained network with its logits and the labels of the held-out split.
Fitted = tuple[torch.nn.Module, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RunResult:
    """Where a finished stage put its model and what it scored."""

    out_dir: Path
    model_path: Path
    metrics: dict[str, Any]


def train(config: RunConfig, *, resume: bool = True) -> list[RunResult]:
    """Run every stage of ``config``: one, or source then target for ``dapt``.

    In a distributed run only global rank 0 returns the results; the other processes
    train alongside it and return an empty list.

    Raises:
        ConfigError: If the config cannot run (e.g. ``linear`` on several devices).
    """
    if config.protocol != "dapt":
        return _finished(_run_stage(config, config.protocol, resume=resume))
    assert config.source is not None
    source = config.model_copy(
        update={
            "data": config.source.data,
            "optim": config.source.optim,
            "source": None,
            "out_dir": config.out_dir / "source",
        }
    )
    if config.source.objective == "ssl":
        first = _run_ssl_stage(source, config.source.ssl, resume=resume)
        init = InitSpec(kind="file", path=source.out_dir / BACKBONE_FILE)
    else:
        first = _run_stage(source, "dapt-source", resume=resume)
        init = InitSpec(kind="rsscgeo", path=source.out_dir / MODEL_FILE)
    # Every process starts from the file rank 0 wrote (the path is known on all).
    chained = config.model.model_copy(update={"init": init})
    target = config.model_copy(
        update={"model": chained, "source": None, "out_dir": config.out_dir / "target"}
    )
    if first is not None:
        (config.out_dir / "config.yaml").write_text(dump_config(config))
    stage = _stage_record(source, config.source, first)
    return _finished(first, _run_stage(target, "dapt-target", resume=resume, stages=[stage]))


def _stage_record(source: RunConfig, stage: StageConfig, result: RunResult | None) -> StageRecord:
    """The source stage as the target's card records it."""
    metrics = result.metrics if result is not None else {}
    if stage.objective == "ssl":
        objective = (
            f"self-supervised SimCLR (NT-Xent, temperature {stage.ssl.temperature:g}, "
            f"{stage.ssl.size} px views) on unlabelled images"
        )
    else:
        objective = "supervised cross-entropy on the source labels"
    return StageRecord(
        protocol="dapt-source",
        init=source.model.init.describe(),
        dataset=", ".join([source.data.described, *map(str, stage.ssl.unlabelled_scenes)])
        if stage.objective == "ssl"
        else source.data.described,
        objective=objective,
        epochs=source.optim.epochs,
        metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
    )


def _run_ssl_stage(config: RunConfig, ssl: SSLConfig, *, resume: bool) -> RunResult | None:
    """Self-supervised continued pre-training; writes ``backbone.safetensors``."""
    from safetensors.torch import save_file

    from rsscgeo.training.ssl import ContrastiveTask, TwoViews, final_loss, scene_tiles
    from rsscgeo.training.ssl import view_transform as ssl_views

    if config.data.path is None:
        raise ConfigError(
            "a self-supervised source stage reads one dataset: set source.data.path, not "
            "source.data.sources."
        )
    out = config.out_dir
    L.seed_everything(config.seed, workers=True, verbose=False)
    trainer = build_trainer(config)
    catalog = open_catalog(config.data.path, layout=config.data.layout)
    check_images([item.path for item in catalog.items])
    # Only training images: a target on the same dataset never sees its test images.
    images = [item.path for item in _split(config, catalog).train.items]
    bands = len(config.data.bands)
    tiles = scene_tiles(ssl.unlabelled_scenes, _tile_size(catalog), config.data.gsd, bands)
    views = ssl_views(ssl, config.model.mean, config.model.std)
    dataset = TwoViews(images, tiles, views, config.data.input_scale, bands)
    if _is_rank_zero(trainer):
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(config))
    optim = config.optim
    task = ContrastiveTask(
        in_channels=bands,
        temperature=ssl.temperature,
        projection_dim=ssl.projection_dim,
        **_network_and_schedule(config),
    )
    _fit(config, trainer, task, dataset, None, resume=resume)
    if not trainer.is_global_zero:
        return None
    backbone_path = out / BACKBONE_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in task.backbone.state_dict().items()}
    save_file(state, str(backbone_path))
    metrics = {
        "objective": "ssl",
        "images": len(images),
        "scene_tiles": len(tiles),
        "epochs": optim.epochs,
        "final_loss": final_loss(trainer),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return RunResult(out, backbone_path, metrics)


def _init_stages(init: InitSpec) -> list[StageRecord]:
    """The stages behind an rsscgeo model a run starts from (``init.kind: rsscgeo``).

    Its own stages, then itself: so a chain's card names every stage, however it was
    started. Other inits (ImageNet, plain weights) are the run's own ``init``.
    """
    if init.kind != "rsscgeo" or init.path is None:
        return []
    provenance = read_card(init.path).provenance
    return [
        *provenance.stages,
        StageRecord(
            protocol=provenance.protocol,
            init=provenance.init,
            dataset=provenance.dataset,
            objective=f"the init model {init.path} (see its own card)",
            metrics=provenance.metrics,
        ),
    ]


def _finished(*results: RunResult | None) -> list[RunResult]:
    return [result for result in results if result is not None]


def _run_stage(
    config: RunConfig, protocol: str, *, resume: bool, stages: Sequence[StageRecord] = ()
) -> RunResult | None:
    """Train, score and write one stage; ``None`` on processes other than global rank 0."""
    if config.data.sources:
        return _run_sources_stage(config, protocol, resume=resume, stages=stages)
    assert config.data.path is not None
    out = config.out_dir
    L.seed_everything(config.seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = build_trainer(config)
    if protocol == "linear" and _world_size(trainer) > 1:
        raise ConfigError(
            "protocol 'linear' runs in one process (it caches features once and trains a "
            f"single layer), not {_world_size(trainer)}; set trainer.devices: 1 and "
            "trainer.num_nodes: 1 for linear evaluation."
        )
    # A later stage (dapt's target) starts from files rank 0 wrote at the end of the
    # previous one; wait for them. A no-op until a fit has formed the process group.
    trainer.strategy.barrier("rsscgeo-stage")
    catalog = open_catalog(config.data.path, layout=config.data.layout)
    check_images([item.path for item in catalog.items])
    colors = class_colors(list(catalog.classes), config.data.colors)
    split = _split(config, catalog)  # seeded: the same on every process
    if _is_rank_zero(trainer):
        out.mkdir(parents=True, exist_ok=True)
        write_split(out / "split.csv", split)
        (out / "config.yaml").write_text(dump_config(config))

    fit = _fit_linear if protocol == "linear" else _fit_network
    fitted = fit(config, trainer, catalog, split, resume=resume)
    if fitted is None:
        return None
    network, logits, labels = fitted
    metrics = score(catalog.task, logits, labels, list(catalog.classes))
    card = _card(config, catalog, colors, protocol, metrics, out / "split.csv")
    card.provenance.stages = list(stages) or _init_stages(config.model.init)
    card = card.model_copy(update={"calibration": _calibrate(config, network, catalog, split)})
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


def _run_sources_stage(
    config: RunConfig, protocol: str, *, resume: bool, stages: Sequence[StageRecord] = ()
) -> RunResult | None:
    """One stage on several sources (``data.sources``) with the fast cached loop."""
    from rsscgeo.taxonomy import load_taxonomy
    from rsscgeo.training import multisource
    from rsscgeo.training.sources import (
        balanced_weights,
        draw_exemplars,
        open_source,
        rows,
        write_splits,
    )

    if protocol == "linear":
        raise ConfigError("protocol 'linear' reads one dataset (data.path), not data.sources.")
    out, data = config.out_dir, config.data
    assert data.taxonomy is not None
    L.seed_everything(config.seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = build_trainer(config)
    trainer.strategy.barrier("rsscgeo-stage")
    taxonomy = load_taxonomy(data.taxonomy)
    sources = [open_source(source, taxonomy, config.seed) for source in data.sources]
    names = [source.config.name for source in sources]
    classes = len(taxonomy.leaves)
    train = rows(sources, "train", classes, data.cache_size)
    val = rows(sources, "val", classes, data.cache_size)
    test = rows(sources, "test", classes, data.cache_size)
    if _is_rank_zero(trainer):
        out.mkdir(parents=True, exist_ok=True)
        write_splits(out / "splits", sources)
        (out / "config.yaml").write_text(dump_config(config))
    task = multisource.build_task(config, names, classes)
    train_loader, val_loader = multisource.loaders(
        config, train, val, balanced_weights(train, [s.config.weight for s in sources])
    )
    _fit_loaders(config, trainer, task, train_loader, val_loader, resume=resume)
    if not trainer.is_global_zero:
        return None
    network = task.model.to(trainer.strategy.root_device)
    test_logits = multisource.predict_rows(network, test, task.augment)
    val_logits = multisource.predict_rows(network, val, task.augment)
    per_source = multisource.source_metrics(test_logits, test, names)
    metrics: dict[str, Any] = {
        "task": "multiclass",
        "overall_accuracy": float(np.mean([m["accuracy"] for m in per_source.values()])),
        "sources": per_source,
        "val_sources": multisource.source_metrics(val_logits, val, names),
        "left_out_folders": {s.config.name: list(s.left_out) for s in sources if s.left_out},
    }
    calibration = calibrate(
        val_logits,
        torch.from_numpy(val.targets),
        config.calibration,
        f"{len(val)} validation images of {', '.join(names)} (each source's own hold-out, "
        f"seed {config.seed}), never trained on",
    )
    headline = {f"test_accuracy_{name}": m["accuracy"] for name, m in per_source.items()}
    card = ModelCard(
        architecture=config.model.architecture,
        task="multiclass",
        classes=taxonomy.classes(),
        parents=taxonomy.parent_infos(),
        bands=data.bands,
        mean=config.model.mean,
        std=config.model.std,
        input_scale=data.input_scale,
        patch_size=_tile_size(sources[0].split.train),
        eval_resize=data.cache_size,
        eval_crop=None,
        gsd=data.gsd,
        gsd_note=data.gsd_note,
        calibration=calibration,
        provenance=Provenance(
            dataset=data.described,
            split_file="splits/",
            protocol=protocol,
            init=config.model.init.describe(),
            metrics=headline | {"overall_accuracy": metrics["overall_accuracy"]},
            rsscgeo_version=__version__,
            notes=f"taxonomy {data.taxonomy}; {len(train)} training images "
            f"({', '.join(f'{s.name} weight {s.weight:g}' for s in data.sources)}); "
            f"{config.optim.epochs} epochs at {task.augment.size} px",
            stages=list(stages) or _init_stages(config.model.init),
        ),
    )
    exemplars = draw_exemplars(train, config.exemplars_per_class, config.seed)
    if exemplars is not None:
        card.exemplars = ExemplarInfo(
            count=len(exemplars),
            per_class=config.exemplars_per_class,
            drawn_from=f"the training rows of {', '.join(names)} (seed {config.seed})",
        )
    model_path = save_model(
        out / MODEL_FILE,
        network.cpu().eval(),
        card,
        half=config.half_precision_file,
        exemplars=exemplars,
    )
    multisource.write_metrics(out / "metrics.json", metrics)
    logs = sorted(
        (out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])
    )
    if logs:
        plot_curves(out / "curves.png", logs)
    return RunResult(out, model_path, metrics)


def _calibrate(
    config: RunConfig, network: torch.nn.Module, catalog: Catalog, split: Split
) -> Calibration | None:
    """Temperature and Uncertain threshold fitted on the validation split, if there is one."""
    if split.val is None or catalog.task != "multiclass":
        return None
    from rsscgeo.training.evaluate import predict

    logits, labels = predict(
        network,
        _tiles(config, split.val, train=False),
        batch_size=config.optim.batch_size,
        num_workers=config.trainer.num_workers,
        description="calibrating",
    )
    fitted_on = (
        f"{len(split.val.items)} validation images: a stratified {config.data.val_fraction:g} "
        f"of the training split (seed {config.seed}), never trained on"
    )
    return calibrate(logits, labels, config.calibration, fitted_on)


def _tiles(config: RunConfig, catalog: Catalog, *, train: bool) -> TileDataset:
    """``catalog`` through the config's train or eval transform and scaling."""
    transform_config = config.train_transform if train else config.eval_transform
    transform = build_transform(transform_config, config.model.mean, config.model.std, train=train)
    return TileDataset(catalog, transform, config.data.input_scale, len(config.data.bands))


def _split(config: RunConfig, catalog: Catalog) -> Split:
    data = config.data
    return split_catalog(
        catalog,
        split_file=data.split_file,
        train_fraction=data.train_fraction,
        val_fraction=data.val_fraction,
        seed=config.seed,
    )


def build_task(config: RunConfig, catalog: Catalog, **extra: Any) -> SceneClassificationTask:
    """The Lightning task for ``config`` on ``catalog`` (``extra``: task arguments)."""
    optim = config.optim
    return SceneClassificationTask(
        task=catalog.task,
        num_outputs=len(catalog.classes),
        in_channels=len(config.data.bands),
        label_smoothing=optim.label_smoothing,
        mixup=optim.mixup,
        cutmix=optim.cutmix,
        **_network_and_schedule(config),
        **extra,
    )


def _network_and_schedule(config: RunConfig) -> dict[str, Any]:
    """The task arguments every stage shares: network, initial weights, optimiser schedule."""
    optim, init = config.optim, config.model.init
    return {
        "architecture": config.model.architecture,
        "init_kind": init.kind,
        "init_path": str(init.path) if init.path else None,
        "lr": optim.lr,
        "warmup_epochs": optim.warmup_epochs,
        "milestones": tuple(optim.milestones),
        "gamma": optim.gamma,
    }


def build_trainer(config: RunConfig) -> L.Trainer:
    """The Lightning trainer a run uses: CSV logs and last.ckpt in ``out_dir``.

    Raises:
        ConfigError: If Lightning refuses the ``trainer`` settings (an unknown strategy,
            more GPUs than the machine has, ...).
    """
    t = config.trainer
    try:
        return L.Trainer(
            max_epochs=config.optim.epochs,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,  # type: ignore[arg-type]  # validated by Lightning
            limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches,
            num_sanity_val_steps=0,
            logger=CSVLogger(config.out_dir, name="logs"),  # a version_N per (resumed) fit
            # Only last.ckpt, rewritten at every epoch's end: the run's product is
            # model.safetensors, checkpoints serve resuming. (save_last with save_top_k=0
            # writes it only when the fit ends, so an interrupted run resumed nothing.)
            callbacks=[
                ModelCheckpoint(
                    dirpath=config.out_dir / "checkpoints",
                    filename="last",
                    save_top_k=1,
                    enable_version_counter=False,
                ),
                StopAtStep(),
            ],
            log_every_n_steps=10,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(
            f"trainer settings rejected by Lightning: {err} (check trainer.accelerator, "
            "devices, num_nodes, strategy and precision)"
        ) from None


def _world_size(trainer: L.Trainer) -> int:
    """How many processes train together; known before ``fit``, unlike ``world_size``."""
    return trainer.num_nodes * trainer.num_devices


def _is_rank_zero(trainer: L.Trainer) -> bool:
    """Whether this process is global rank 0, known before ``fit``.

    Lightning sets ranks inside ``fit``, from node rank and local rank (LOCAL_RANK and
    NODE_RANK, or torchrun's or SLURM's variables); rank 0 is local rank 0 of node 0.
    Files written before training use this so that they are written once.
    """
    return trainer.node_rank == 0 and trainer.local_rank == 0


def _fit(
    config: RunConfig,
    trainer: L.Trainer,
    task: L.LightningModule,
    train: Any,
    val: Any | None,
    *,
    resume: bool,
) -> None:
    batch = config.optim.batch_size
    workers = config.trainer.num_workers
    # Under DDP Lightning gives each process a 1/world share of the training set.
    share = -(-len(train) // _world_size(trainer))
    train_loader = DataLoader(
        train,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=share > batch,
        persistent_workers=workers > 0,
    )
    val_loader = (
        None
        if val is None
        else DataLoader(val, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    )
    _fit_loaders(config, trainer, task, train_loader, val_loader, resume=resume)


def _fit_loaders(
    config: RunConfig,
    trainer: L.Trainer,
    task: L.LightningModule,
    train: DataLoader[Any],
    val: DataLoader[Any] | None,
    *,
    resume: bool,
) -> None:
    """Fit, resuming from the run's last checkpoint unless ``resume`` is off."""
    last = _last_checkpoint(config)
    if not resume:
        # Every process removes them so that all decide alike whether to resume; none
        # writes a checkpoint before all have joined inside fit.
        shutil.rmtree(last.parent, ignore_errors=True)
    # Resuming restores optimizer, scheduler and epoch; loaded without unpickling code.
    ckpt = str(last) if last.exists() else None
    fit_or_interrupted(
        trainer, lambda: trainer.fit(task, train, val, ckpt_path=ckpt, weights_only=True), last
    )


def _last_checkpoint(config: RunConfig) -> Path:
    """Where a run keeps the checkpoint it resumes from."""
    return config.out_dir / "checkpoints" / "last.ckpt"


def _fit_network(
    config: RunConfig, trainer: L.Trainer, catalog: Catalog, split: Split, *, resume: bool
) -> Fitted | None:
    train, test = _tiles(config, split.train, train=True), _tiles(config, split.test, train=False)
    task = build_task(config, catalog)
    _fit(config, trainer, task, train, test, resume=resume)
    if not trainer.is_global_zero:
        return None  # rank 0 alone scores the whole held-out split: nothing counted twice
    from rsscgeo.training.evaluate import predict

    # Lightning hands the model back on the CPU; score it on the training device.
    network = task.model.to(trainer.strategy.root_device).eval()
    logits, labels = predict(
        network, test, batch_size=config.optim.batch_size, num_workers=config.trainer.num_workers
    )
    return network.cpu(), logits, labels


def _fit_linear(
    config: RunConfig, trainer: L.Trainer, catalog: Catalog, split: Split, *, resume: bool
) -> Fitted:
    from rsscgeo.inits import build_network

    backbone = build_network(
        config.model.architecture, len(catalog.classes), len(config.data.bands), config.model.init
    )
    features = cached_features(
        config.out_dir / "features.safetensors",
        backbone,
        {name: _tiles(config, getattr(split, name), train=False) for name in ("train", "test")},
        batch_size=config.optim.batch_size,
        num_workers=config.trainer.num_workers,
        reuse=resume,
    )
    train_x, train_y = features["train"]
    test_x, test_y = features["test"]
    task = build_task(config, catalog, head_in_features=train_x.shape[1])
    _fit(
        config,
        trainer,
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
                dataset=config.data.described,
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
