"""The experiment file: datasets, initialisations and the runs to cross them in.

An experiment file is YAML::

    name: aid-transfer
    out_dir: runs/aid-transfer
    seeds: [0, 1, 2]
    base: {...}                # RunConfig settings every run starts from
    class_split:               # optional: datasets made of disjoint class subsets
      path: ../shared/data/aid150
      seed: 0
      parts: {source: 20, target: 10}
    datasets:                  # DataConfig settings by name (plus paper_name)
      target: {path: "@target", train_fraction: 0.2, paper_name: AID}
    inits:                     # initial weights by name (plus paper_init)
      imagenet: {kind: imagenet-offline, paper_init: imagenet}
      source: {run: source-scratch}   # the model another run of this experiment made
    runs:
      - {name: imagenet-finetune, dataset: target, protocol: finetune, init: imagenet}
    eval_sets:                 # optional: other datasets every finished model is tested on
      ucm10: {path: ../shared/data/ucm10, class_map: configs/class_maps/ucm10_to_aid.yaml}

A run's ``dataset``, ``protocol``, ``init`` and ``train_fraction`` may be lists: the run
is then the cross product (the experiment's matrix), each cell repeated per seed.
``"@<part>"`` as a dataset path names a part of ``class_split``. Each eval set is a
class-folder dataset with a class map (:mod:`rsscgeo.data.classmap`) from its folders to
the models' classes; its accuracy is reported beside the in-domain one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from rsscgeo.errors import ConfigError
from rsscgeo.inits import InitKind
from rsscgeo.training.config import Protocol
from rsscgeo.training.evaluate import DEFAULT_TTA
from rsscgeo.yamlfile import read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassSplit(_Strict):
    """Disjoint, seeded subsets of one class-folder dataset's classes."""

    path: Path
    seed: int = 0
    parts: dict[str, int] = Field(min_length=1, description="Part name → number of classes.")


class DatasetSpec(_Strict):
    """A dataset of the experiment: DataConfig settings and its name in the paper."""

    path: str
    train_fraction: float = Field(default=0.8, gt=0, lt=1)
    layout: str | None = None
    paper_name: str | None = Field(
        default=None, description="The dataset's name in the published tables, if any."
    )


class InitRef(_Strict):
    """Initial weights: a kind (as ``model.init``) or the model of another run."""

    kind: InitKind | None = None
    path: Path | None = None
    run: str | None = Field(default=None, description="Use this run's model (same seed).")
    paper_init: str | None = Field(
        default=None, description="scratch, imagenet or swav: which published column."
    )

    @model_validator(mode="after")
    def _one_source(self) -> InitRef:
        if (self.kind is None) == (self.run is None):
            raise ValueError("give either 'kind' (and 'path' if needed) or 'run'")
        return self


class RunSpec(_Strict):
    """One condition of the experiment (a matrix when fields are lists)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    dataset: str | list[str]
    protocol: Protocol | list[Protocol]
    init: str | list[str]
    train_fraction: float | list[float] | None = None
    source_dataset: str | None = Field(default=None, description="dapt's source dataset.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="RunConfig settings for this run only."
    )
    report: bool = Field(default=True, description="False for stages that only feed others.")
    seeds: list[int] | None = Field(
        default=None,
        min_length=1,
        description="This run's seeds instead of the experiment's (e.g. one shared "
        "pre-training run that every seed of later runs starts from).",
    )


class EvalSet(_Strict):
    """An extra evaluation dataset: class folders and a map to the models' classes."""

    path: Path
    class_map: Path
    runs: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Evaluate only these runs' models (default: every reported run).",
    )
    tta: bool = Field(default=DEFAULT_TTA, description="Average the 8 rotations/flips.")
    uncertain_below: float | None = Field(
        default=None, ge=0, le=1, description="Uncertain threshold; default: each card's."
    )


class ExperimentConfig(_Strict):
    """A whole experiment."""

    name: str
    out_dir: Path
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    class_split: ClassSplit | None = None
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    inits: dict[str, InitRef] = Field(min_length=1)
    runs: list[RunSpec] = Field(min_length=1)
    eval_sets: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$")], EvalSet] = (
        Field(default_factory=dict, description="Name (a results column prefix) → eval set.")
    )

    @model_validator(mode="after")
    def _references(self) -> ExperimentConfig:
        names = [run.name for run in self.runs]
        for index, run in enumerate(self.runs):
            for dataset in [*_listed(run.dataset), *_listed(run.source_dataset)]:
                if dataset not in self.datasets:
                    raise ValueError(f"run {run.name!r}: unknown dataset {dataset!r}")
            for init in _listed(run.init):
                ref = self.inits.get(init)
                if ref is None:
                    raise ValueError(f"run {run.name!r}: unknown init {init!r}")
                if ref.run is not None and ref.run not in names[:index]:
                    raise ValueError(
                        f"run {run.name!r}: init {init!r} uses run {ref.run!r}, which must "
                        "be listed before it"
                    )
        if len(set(names)) != len(names):
            raise ValueError("run names must be unique")
        for set_name, eval_set in self.eval_sets.items():
            for run_name in eval_set.runs or []:
                if run_name not in names:
                    raise ValueError(f"eval set {set_name!r}: unknown run {run_name!r}")
        return self


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file; relative paths stay relative to the cwd.

    Raises:
        ConfigError: If the file is missing or invalid, naming the bad key.
    """
    path = Path(path)
    raw = read_yaml(path, "experiment", "see configs/experiments/")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (name, out_dir, datasets, inits, runs).")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise ConfigError(f"{path}: {key}: {message}; fix the experiment file.") from None
