"""Training configuration: YAML files validated into typed objects.

Unknown keys and wrong types are refused with the key's dotted path, so a typo never
silently falls back to a default. Command-line overrides use the same dotted paths
(``optim.epochs=3``), values parsed as YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from rsscgeo.data.transforms import TransformConfig
from rsscgeo.errors import ConfigError
from rsscgeo.exemplars import PER_CLASS
from rsscgeo.inits import InitSpec
from rsscgeo.training.calibration import CalibrationConfig

Protocol = Literal["scratch", "finetune", "linear", "dapt"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """One labelled dataset of a multi-source run, mapped onto the run's taxonomy.

    ``class_map`` (a YAML file like ``configs/class_maps/nwpu12_to_land_use_33.yaml``)
    sends each class folder to one class, a set of classes (the image is one of them:
    trained with the partial-label loss) or a family (any of its classes); without one,
    the folder names must be the taxonomy's classes.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Short name for reports.")
    path: Path
    layout: str | None = None
    class_map: Path | None = None
    weight: float = Field(
        default=1.0, gt=0, description="Share of training batches drawn from this source."
    )
    split_file: Path | None = Field(
        default=None, description="Its split CSV (path,split rows); else a seeded split."
    )
    train_fraction: float = Field(default=0.8, gt=0, lt=1)
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of its training rows held out to calibrate."
    )

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str | None) -> str | None:
        return _check_layout(value)


def _check_layout(value: str | None) -> str | None:
    # Checked at load time, naming the key, rather than when the run opens the data.
    from rsscgeo.data.layouts import LAYOUTS

    if value is not None and value not in LAYOUTS:
        raise ValueError(f"unknown dataset layout; use one of {', '.join(LAYOUTS)}")
    return value


class DataConfig(_Strict):
    """The labelled tiles and how to split and scale them.

    Either ``path`` (one dataset; its class folders are the classes) or ``sources``
    (several, each mapped onto ``taxonomy``; trained with the fast cached loop).
    """

    path: Path | None = None
    sources: list[SourceConfig] = Field(default_factory=list)
    taxonomy: Path | None = Field(
        default=None, description="Classes and their families (configs/taxonomy/*.yaml)."
    )
    cache_size: int = Field(
        default=128, gt=0, description="Side of the decoded uint8 tiles of a sources run."
    )
    layout: str | None = Field(
        default=None,
        description="A published dataset layout, e.g. 'ucmerced' (rsscgeo datasets list); "
        "None detects class folders, a manifest or BigEarthNet.",
    )
    train_fraction: float = Field(default=0.8, gt=0, lt=1)
    val_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of the training items held out to fit calibration (temperature "
        "and the Uncertain threshold); 0 skips calibration.",
    )
    split_file: Path | None = Field(
        default=None, description="Reuse this split CSV instead of drawing a new one."
    )
    input_scale: float = Field(default=255.0, gt=0)
    bands: list[str] = Field(default_factory=lambda: ["red", "green", "blue"], min_length=1)
    gsd: float | None = Field(default=None, gt=0, description="m/px of the tiles.")
    gsd_note: str | None = None
    colors: dict[str, str] = Field(default_factory=dict, description="Class name → #rrggbb.")

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str | None) -> str | None:
        return _check_layout(value)

    @model_validator(mode="after")
    def _one_kind(self) -> DataConfig:
        if (self.path is None) == (not self.sources):
            raise ValueError("give either path (one dataset) or sources (several)")
        if self.sources and self.taxonomy is None:
            raise ValueError("sources need a taxonomy (e.g. configs/taxonomy/land_use_33.yaml)")
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError("every source needs its own name")
        return self

    @property
    def described(self) -> str:
        """The data in words: the path, or the sources with their class maps."""
        if self.path is not None:
            return str(self.path)
        return " + ".join(
            f"{s.name} ({s.path}" + (f", {s.class_map})" if s.class_map else ")")
            for s in self.sources
        )


class ModelConfig(_Strict):
    """Network, its initial weights and its input normalisation."""

    architecture: str = "resnet50"
    init: InitSpec = Field(default_factory=InitSpec)
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])


class OptimConfig(_Strict):
    """Adam without weight decay, linear warm-up, then step decay (the paper's recipe)."""

    lr: float = Field(default=1e-4, gt=0)
    warmup_epochs: float = Field(default=5, ge=0)
    milestones: list[float] = Field(default_factory=lambda: [50.0, 70.0, 90.0])
    gamma: float = Field(default=0.2, gt=0, le=1)
    epochs: int = Field(default=100, gt=0)
    batch_size: int = Field(default=100, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixup: float = Field(default=0.0, ge=0, description="Mixup's Beta alpha; 0 is off.")
    cutmix: float = Field(default=0.0, ge=0, description="CutMix's Beta alpha; 0 is off.")
    schedule: Literal["step", "cosine"] = Field(
        default="step", description="After warm-up: step decay at milestones, or cosine to 0."
    )
    head_lr: float | None = Field(
        default=None,
        gt=0,
        description="Learning rate of the classifier (sources runs); lr if unset.",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW's (sources runs).")


class TrainerConfig(_Strict):
    """Lightning settings; ``limit_train_batches`` keeps smoke runs short.

    ``devices`` (per node) and ``num_nodes`` set how many processes train together;
    with more than one, Lightning's ``strategy`` (``"auto"`` picks ``"ddp"``) runs
    data-parallel training. ``optim.batch_size`` is then per process.
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = Field(
        default="auto",
        description="Devices per node: a count, -1 or 'auto' (all), or GPU indexes like [0, 1].",
    )
    num_nodes: int = Field(default=1, ge=1, description="Machines taking part in training.")
    strategy: str = Field(
        default="auto",
        min_length=1,
        description="Lightning strategy for several devices, e.g. 'ddp' or "
        "'ddp_find_unused_parameters_true'; 'auto' picks 'ddp' when needed.",
    )
    precision: str = "32-true"
    num_workers: int = Field(default=2, ge=0)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None

    @field_validator("devices", mode="before")
    @classmethod
    def _device_spec(cls, value: object) -> object:
        # Refused at load time, naming the key, before any data is read; Lightning checks
        # the rest (e.g. more devices than the machine has) when the trainer is built.
        if isinstance(value, list) and all(type(i) is int for i in value):
            if not value or min(value) < 0 or len(set(value)) < len(value):
                raise ValueError("a list of devices needs distinct GPU indexes >= 0, e.g. [0, 1]")
        elif type(value) is int:
            if value == 0 or value < -1:
                raise ValueError("must be a device count >= 1, -1 or 'auto' (all devices)")
        elif isinstance(value, str):
            if value != "auto" and not re.fullmatch(r"-1|\d+(,\d+)*,?", value.replace(" ", "")):
                raise ValueError(f"{value!r} is not 'auto', a count or GPU indexes such as '0,1'")
        else:
            raise ValueError("must be 'auto', a device count, -1 (all) or GPU indexes like [0, 1]")
        return value


class SSLConfig(_Strict):
    """Self-supervised (SimCLR) continued pre-training on unlabelled in-domain images.

    Two augmented views of each image are pulled together and pushed away from the
    other images of the batch (NT-Xent loss) through a projection head that is dropped
    afterwards; only the backbone is kept.
    """

    size: int = Field(default=112, gt=0, description="Side of each view (CPU budget).")
    crop_scale: tuple[float, float] = (0.2, 1.0)
    temperature: float = Field(default=0.2, gt=0, description="NT-Xent temperature.")
    projection_dim: int = Field(default=128, gt=0)
    unlabelled_scenes: list[Path] = Field(
        default_factory=list,
        description="8-bit GeoTIFFs cut into unlabelled tiles of the dataset's tile size.",
    )


class StageConfig(_Strict):
    """The source stage of domain-adaptive pre-training.

    ``objective: supervised`` fine-tunes on the source dataset's labels;
    ``objective: ssl`` continues pre-training self-supervised on its images (labels
    unused; only its training split, so a target on the same images keeps its test
    images unseen) plus tiles of ``ssl.unlabelled_scenes``.
    """

    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    objective: Literal["supervised", "ssl"] = "supervised"
    ssl: SSLConfig = Field(default_factory=SSLConfig)


# Augmentations of the per-image transform that sources runs' batched one lacks.
BATCH_AUGMENT_LACKS = ("hue", "jpeg")


class RunConfig(_Strict):
    """One training run (two stages for ``dapt``)."""

    name: str
    protocol: Protocol
    seed: int = 0
    out_dir: Path
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train_transform: TransformConfig = Field(default_factory=TransformConfig)
    eval_transform: TransformConfig = Field(default_factory=TransformConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    source: StageConfig | None = None
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    half_precision_file: bool = Field(
        default=False, description="Store the model file's weights as float16."
    )
    exemplars_per_class: int = Field(
        default=PER_CLASS,
        ge=0,
        description="Training tiles per class stored in the model file, which `rsscgeo "
        "adapt` rehearses so the classes a user's labels do not cover are kept (0: none; "
        "each costs about 5 kB per band).",
    )

    @model_validator(mode="after")
    def _protocol_rules(self) -> RunConfig:
        if self.protocol == "dapt" and self.source is None:
            raise ValueError("protocol 'dapt' needs a 'source' section (the source dataset)")
        if self.protocol != "dapt" and self.source is not None:
            raise ValueError(f"'source' is only used by protocol 'dapt', not {self.protocol!r}")
        if self.protocol == "scratch" and self.model.init.kind != "scratch":
            raise ValueError("protocol 'scratch' needs model.init.kind 'scratch'")
        augment = self.train_transform.augment
        ignored = [name for name in BATCH_AUGMENT_LACKS if getattr(augment, name)]
        if self.data.sources and ignored:
            # Sources runs augment batches of cached uint8 tiles (BatchAugment), which
            # has no such steps: refuse rather than silently train without them.
            raise ValueError(
                f"train_transform.augment.{ignored[0]} is not applied in sources runs "
                "(their batched augmentation lacks it); set it to 0"
            )
        return self


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate.

    Raises:
        ConfigError: If the file is missing or invalid, naming the bad key.
    """
    path = Path(path)
    example = "see configs/finetune.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read config {path} ({err.strerror}); check the path.") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path} is not a text file; pass a YAML training config ({example})."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{path} is not valid YAML ({_one_line(err)}); fix the syntax where it points."
        ) from None
    if raw is None:
        raise ConfigError(f"{path} is empty; write a training config into it ({example}).")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, e.g. 'protocol: finetune'.")
    for override in overrides or []:
        apply_override(raw, override)
    return parse_config(raw, origin=str(path))


def parse_config(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a config mapping.

    Raises:
        ConfigError: Naming the first bad key and what it should be.
    """
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            hint = "unknown key; remove it or check its spelling"
        else:
            hint = _problem(first)
            if key:
                hint += f"; correct it in the config or pass --set {key}=VALUE"
            else:
                hint += "; correct the config"
        raise ConfigError(f"{origin}: {key or '(top level)'}: {hint}.") from None


def _problem(error: ErrorDetails) -> str:
    """Pydantic's message for one error, with the offending value when it is short."""
    if error["type"] == "value_error":  # our validators: their own words, no prefix
        text = str(error["ctx"]["error"])
    else:
        text = error["msg"][:1].lower() + error["msg"][1:]
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= 40:
        text += f" (got {value!r})"
    return text


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping (value parsed as YAML).

    Raises:
        ConfigError: If the override has no ``=``.
    """
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.subkey=value.")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section.")
        node = child
    node[leaf] = yaml.safe_load(value)


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, ready to re-run."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
