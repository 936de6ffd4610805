"""Training on several labelled sources at once, fast enough for a CPU.

The loop (:class:`MultiSourceTask` under Lightning) reads decoded uint8 tiles from the
cache (``data.cache``), draws batches balanced across sources, augments whole batches
on their device (``batch_augment``), runs the network channels-last (under bf16
autocast with ``trainer.precision: bf16-mixed``) and trains every row towards the set
of classes it may be with the partial-label loss ``-log sum_{c in S} p_c``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, WeightedRandomSampler

from rsscgeo.inits import InitSpec, build_network
from rsscgeo.networks import as_timm
from rsscgeo.stopping import STOP
from rsscgeo.training.batch_augment import BatchAugment
from rsscgeo.training.config import RunConfig
from rsscgeo.training.mixing import Mixing
from rsscgeo.training.sources import Rows, batch_of

EVAL_BATCH = 128


def partial_label_loss(
    logits: torch.Tensor, allowed: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Mean over rows of ``-log sum_{c in S} softmax(logits)_c`` (``S``: ``allowed``).

    With one allowed class it is cross-entropy. ``smoothing`` mixes in the mean
    ``-log p`` over all classes, as label smoothing does for cross-entropy.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    in_set = torch.logsumexp(log_p.masked_fill(~allowed, -math.inf), dim=1)
    loss = -in_set
    if smoothing:
        loss = (1 - smoothing) * loss - smoothing * log_p.mean(dim=1)
    return loss.mean()


def set_accuracy(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per row: whether the top-1 class is one the row may be."""
    return allowed.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


def augment_for(config: RunConfig) -> BatchAugment:
    """The batched augmentation a run's ``train_transform`` describes.

    Evaluation sees whole cached tiles (``data.cache_size``), as the card's
    ``eval_resize`` tells ``classify`` to.
    """
    augment = config.train_transform.augment
    size = config.train_transform.crop or config.train_transform.resize or config.data.cache_size
    return BatchAugment(
        size=size,
        mean=tuple(config.model.mean),
        std=tuple(config.model.std),
        eval_size=config.data.cache_size,
        scale=augment.scale or (1.0, 1.0),
        brightness=augment.brightness,
        contrast=augment.contrast,
        saturation=augment.saturation,
        gamma=augment.gamma,
        noise=augment.noise,
        blur=augment.blur,
        blur_sigma=augment.blur_sigma,
    )


class MultiSourceTask(L.LightningModule):
    """A network trained with the partial-label loss on batched augmentations.

    Args:
        architecture: timm architecture name.
        num_classes: Classes of the taxonomy.
        sources: Source names, by source index (for per-source validation accuracy).
        augment: The batch augmentation (its ``eval`` prepares validation batches).
        init_kind: Initial weights (see ``inits``).
        init_path: Their file, where the kind needs one.
        lr: Peak learning rate of the backbone.
        head_lr: Peak learning rate of the classifier.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: Linear warm-up, then cosine decay to 0 (or step decay).
        schedule: ``cosine`` or ``step``.
        milestones: Epochs of step decay.
        gamma: Step decay factor.
        label_smoothing: Smoothing of the partial-label loss.
        in_channels: Bands.
        mixup: Mixup's Beta alpha (0: off); see ``mixing``.
        cutmix: CutMix's Beta alpha (0: off).
    """

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        sources: Sequence[str],
        augment: BatchAugment,
        init_kind: str = "imagenet-offline",
        init_path: str | None = None,
        lr: float = 1e-4,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_epochs: float = 0.5,
        schedule: str = "cosine",
        milestones: Sequence[float] = (),
        gamma: float = 0.2,
        label_smoothing: float = 0.0,
        in_channels: int = 3,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        """Build the network with its initial weights."""
        super().__init__()
        self.save_hyperparameters(ignore=["augment"])
        self.augment = augment
        self.mixing = Mixing(mixup=mixup, cutmix=cutmix)
        init = InitSpec(kind=init_kind, path=Path(init_path) if init_path else None)  # type: ignore[arg-type]
        self.model = build_network(architecture, num_classes, in_channels, init).to(
            memory_format=torch.channels_last
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images."""
        logits: torch.Tensor = self.model(x)
        return logits

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training) or resize and normalise (validation) on the batch's device."""
        tiles = batch["tiles"]
        batch["image"] = self.augment.train(tiles) if self.training else self.augment.eval(tiles)
        return batch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Partial-label loss of one augmented (and maybe mixed) batch.

        The training accuracy of a mixed batch is against the label that weighs more.
        """
        targets, smoothing = batch["targets"], self.hparams["label_smoothing"]
        if not self.mixing.enabled:
            logits = self(batch["image"])
            loss = partial_label_loss(logits, targets, smoothing)
        else:
            mixed = self.mixing(batch["image"])
            logits = self(mixed.images)
            partners = targets[mixed.partner]
            loss = mixed.own * partial_label_loss(logits, targets, smoothing) + (
                1 - mixed.own
            ) * partial_label_loss(logits, partners, smoothing)
            targets = targets if mixed.own >= 0.5 else partners
        accuracy = set_accuracy(logits.detach(), targets).float().mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        self.log("train_accuracy", accuracy, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Collect whether each row's top-1 class is allowed, by source."""
        logits = self(batch["image"])
        self._val.append((set_accuracy(logits, batch["targets"]).cpu(), batch["source"].cpu()))

    def on_validation_epoch_end(self) -> None:
        """Log the validation accuracy of every source and their mean."""
        if not self._val:
            return
        correct = torch.cat([c for c, _ in self._val]).float()
        source = torch.cat([s for _, s in self._val])
        self._val.clear()
        means = []
        for index, name in enumerate(self.hparams["sources"]):
            mine = correct[source == index]
            if len(mine):
                means.append(mine.mean())
                self.log(f"val_accuracy_{name}", means[-1], sync_dist=True)
        self.log("val_accuracy", torch.stack(means).mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """AdamW: the classifier at ``head_lr``, the rest at ``lr``; warm-up then decay."""
        hp = self.hparams
        head = list(as_timm(self.model).get_classifier().parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in self.model.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": body, "lr": hp["lr"]},
                {"params": head, "lr": hp["head_lr"] or hp["lr"]},
            ],
            weight_decay=hp["weight_decay"],
        )
        trainer = self.trainer
        epochs = max(trainer.max_epochs or 1, 1)
        steps_per_epoch = max(int(trainer.estimated_stepping_batches) // epochs, 1)

        def factor(step: int) -> float:
            epoch = step / steps_per_epoch
            if epoch < hp["warmup_epochs"]:
                return float((epoch + 1 / steps_per_epoch) / hp["warmup_epochs"])
            if hp["schedule"] == "step":
                return float(hp["gamma"] ** sum(epoch >= m for m in hp["milestones"]))
            done = (epoch - hp["warmup_epochs"]) / max(epochs - hp["warmup_epochs"], 1e-9)
            return float(0.5 * (1 + math.cos(math.pi * min(done, 1.0))))

        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, factor), "interval": "step"},
        }


def build_task(config: RunConfig, sources: Sequence[str], classes: int) -> MultiSourceTask:
    """The task a sources run trains."""
    optim, init = config.optim, config.model.init
    return MultiSourceTask(
        architecture=config.model.architecture,
        num_classes=classes,
        sources=list(sources),
        augment=augment_for(config),
        init_kind=init.kind,
        init_path=str(init.path) if init.path else None,
        lr=optim.lr,
        head_lr=optim.head_lr,
        weight_decay=optim.weight_decay,
        warmup_epochs=optim.warmup_epochs,
        schedule=optim.schedule,
        milestones=list(optim.milestones),
        gamma=optim.gamma,
        label_smoothing=optim.label_smoothing,
        in_channels=len(config.data.bands),
        mixup=optim.mixup,
        cutmix=optim.cutmix,
    )


def loaders(
    config: RunConfig, train: Rows, val: Rows | None, weights: torch.Tensor
) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
    """Balanced training batches, and sequential validation batches.

    An epoch draws as many rows as the sources hold; whole batches are gathered from
    the cache at once.
    """
    sampler = WeightedRandomSampler(
        weights.tolist(),
        num_samples=len(train),
        replacement=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    batch = config.optim.batch_size
    train_loader: DataLoader[Any] = DataLoader(
        train, batch_size=batch, sampler=sampler, collate_fn=batch_of, drop_last=len(train) > batch
    )
    if val is None:
        return train_loader, None
    return train_loader, DataLoader(val, batch_size=EVAL_BATCH, collate_fn=batch_of)


@torch.inference_mode()
def predict_rows(network: torch.nn.Module, rows: Rows, augment: BatchAugment) -> torch.Tensor:
    """Logits of every row (eval transform), in order."""
    network.eval()
    device = next(network.parameters()).device
    outputs = []
    for start in range(0, len(rows), EVAL_BATCH):
        STOP.check("interrupted")
        batch = rows.__getitems__(range(start, min(start + EVAL_BATCH, len(rows))))
        outputs.append(network(augment.eval(batch["tiles"].to(device))).float().cpu())
    return torch.cat(outputs)


def source_metrics(
    logits: torch.Tensor, rows: Rows, sources: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Top-1 accuracy (the top class is one the row may be) and row count, per source."""
    correct = set_accuracy(logits, torch.from_numpy(rows.targets)).numpy()
    metrics = {}
    for index, name in enumerate(sources):
        mine = rows.source == index
        if mine.any():
            metrics[name] = {"accuracy": float(correct[mine].mean()), "images": int(mine.sum())}
    return metrics


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write metrics as JSON (numpy values as plain numbers)."""
    path.write_text(json.dumps(metrics, indent=2, default=lambda v: np.asarray(v).tolist()))
