"""The Lightning task: TorchGeo's ClassificationTask with the paper's optimiser.

TorchGeo supplies the training/validation steps, losses (softmax cross-entropy for
multiclass, sigmoid BCE for multilabel) and freezing; this subclass swaps in rsscgeo's
initialisations, Adam without weight decay with warm-up + step decay, and the paper's
metrics (overall accuracy; micro-/macro-F1 and mAP for multilabel).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MultilabelAveragePrecision
from torchvision.transforms import v2

from rsscgeo._torchgeo import ClassificationTask
from rsscgeo.inits import InitSpec, build_network
from rsscgeo.training.schedule import adam_with_schedule


class SceneClassificationTask(ClassificationTask):
    """Scene classification with the paper's recipe.

    With ``head_in_features`` set the task trains only a linear layer on cached
    pooled features (linear evaluation); batches then carry features as ``image``.
    """

    def __init__(
        self,
        architecture: str,
        task: Literal["multiclass", "multilabel"],
        num_outputs: int,
        in_channels: int = 3,
        init_kind: str = "scratch",
        init_path: str | None = None,
        lr: float = 1e-4,
        warmup_epochs: float = 5,
        milestones: tuple[float, ...] = (50, 70, 90),
        gamma: float = 0.2,
        freeze_backbone: bool = False,
        head_in_features: int | None = None,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        """Initialise the task; arguments are saved as Lightning hyperparameters."""
        super().__init__(
            model=architecture,
            weights=None,
            in_channels=in_channels,
            task=task,
            num_classes=num_outputs if task == "multiclass" else None,
            num_labels=num_outputs if task == "multilabel" else None,
            loss="ce" if task == "multiclass" else "bce",
            lr=lr,
            freeze_backbone=freeze_backbone,
        )

    def configure_models(self) -> None:
        """Build the network (or the linear head alone) with rsscgeo's initialisations."""
        hp = self.hparams
        outputs = hp["num_classes"] or hp["num_labels"]
        if hp["head_in_features"]:
            self.model = torch.nn.Linear(hp["head_in_features"], outputs)
            return
        init = InitSpec(kind=hp["init_kind"], path=hp["init_path"])
        self.model = build_network(hp["model"], outputs, hp["in_channels"], init)
        if hp["freeze_backbone"]:
            for param in self.model.parameters():
                param.requires_grad = False
            for param in self.model.get_classifier().parameters():
                param.requires_grad = True

    def configure_losses(self) -> None:
        """TorchGeo's losses; cross-entropy with the configured label smoothing."""
        super().configure_losses()
        if self.hparams["loss"] == "ce":
            self.criterion = torch.nn.CrossEntropyLoss(
                label_smoothing=self.hparams["label_smoothing"]
            )
        # Mixup/CutMix draw one of the enabled mixes per batch (soft targets).
        hp, mixes = self.hparams, []
        if hp["task"] == "multiclass" and hp["mixup"] > 0:
            mixes.append(v2.MixUp(alpha=hp["mixup"], num_classes=hp["num_classes"]))
        if hp["task"] == "multiclass" and hp["cutmix"] > 0:
            mixes.append(v2.CutMix(alpha=hp["cutmix"], num_classes=hp["num_classes"]))
        self.mix = v2.RandomChoice(mixes) if mixes else None

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """TorchGeo's step, or the loss on mixed images and soft targets with mixup/cutmix.

        Training metrics of mixed batches compare with the dominant original label.
        """
        if self.mix is None:
            return super().training_step(batch, batch_idx, dataloader_idx)
        x, y = batch["image"], batch["label"]
        mixed, soft = self.mix(x, y)
        y_hat = self(mixed)
        self.train_metrics(y_hat, soft.argmax(1))
        self.log_dict(self.train_metrics, batch_size=len(x))
        loss: Tensor = self.criterion(y_hat, soft)
        self.log("train_loss", loss, batch_size=len(x))
        return loss

    def configure_metrics(self) -> None:
        """Overall accuracy for multiclass; micro/macro F1 at 0.5 and mAP for multilabel."""
        hp = self.hparams
        if hp["task"] == "multiclass":
            n = hp["num_classes"]
            metrics = MetricCollection(
                {
                    "OverallAccuracy": Accuracy(task="multiclass", num_classes=n, average="micro"),
                    "AverageAccuracy": Accuracy(task="multiclass", num_classes=n, average="macro"),
                }
            )
        else:
            n = hp["num_labels"]
            metrics = MetricCollection(
                {
                    "MicroF1": F1Score(task="multilabel", num_labels=n, average="micro"),
                    "MacroF1": F1Score(task="multilabel", num_labels=n, average="macro"),
                    "mAP": MultilabelAveragePrecision(num_labels=n, average="macro"),
                }
            )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def configure_optimizers(self) -> Any:
        """Adam (no weight decay) with per-step warm-up and step decay."""
        return adam_with_schedule(self)
