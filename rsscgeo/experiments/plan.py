"""Expanding an experiment into training runs (cells), each with its RunConfig."""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rsscgeo.data.catalog import write_manifest
from rsscgeo.data.layouts import open_catalog
from rsscgeo.errors import ConfigError
from rsscgeo.experiments.config import ExperimentConfig, RunSpec, _listed
from rsscgeo.training.config import RunConfig, parse_config
from rsscgeo.training.run import MODEL_FILE


@dataclass(frozen=True)
class Cell:
    """One training run of the experiment: a run's matrix cell at one seed."""

    run: str
    dataset: str
    protocol: str
    init: str
    train_fraction: float
    seed: int
    report: bool
    config: RunConfig

    @property
    def out_dir(self) -> Path:
        """Where the run writes (its metrics.json marks it finished)."""
        return self.config.out_dir

    @property
    def model_path(self) -> Path:
        """The model file the run writes (dapt: the target stage's)."""
        stage = self.out_dir / "target" if self.protocol == "dapt" else self.out_dir
        return stage / MODEL_FILE

    @property
    def metrics_path(self) -> Path:
        """The run's held-out metrics; present once the run finished."""
        return self.model_path.parent / "metrics.json"


def plan_experiment(experiment: ExperimentConfig) -> list[Cell]:
    """Every cell of every run, in run order then matrix order then seed order.

    Writes the class-split manifests (``out_dir/datasets``) when the experiment has one.

    Raises:
        ConfigError: If a run's settings do not make a valid training config.
    """
    parts = write_class_split(experiment) if experiment.class_split else {}
    cells: list[Cell] = []
    for spec in experiment.runs:
        combos = list(
            itertools.product(
                _listed(spec.dataset),
                _listed(spec.protocol),
                _listed(spec.init),
                _listed(spec.train_fraction) or [None],
            )
        )
        for dataset, protocol, init, fraction in combos:
            suffix = f"{dataset}-{protocol}-{init}-f{fraction}" if len(combos) > 1 else ""
            for seed in spec.seeds or experiment.seeds:
                folder = experiment.out_dir / spec.name / suffix / f"seed-{seed}"
                raw = _run_config(experiment, spec, parts, (dataset, protocol, init))
                raw.update(seed=seed, out_dir=str(folder))
                if fraction is not None:
                    raw["data"]["train_fraction"] = fraction
                origin = f"experiment {experiment.name}, run {spec.name}"
                config = parse_config(raw, origin=origin)
                cells.append(
                    Cell(
                        spec.name,
                        dataset,
                        protocol,
                        init,
                        config.data.train_fraction,
                        seed,
                        spec.report,
                        config,
                    )
                )
    return resolve_run_inits(cells)


def _run_config(
    experiment: ExperimentConfig,
    spec: RunSpec,
    parts: dict[str, Path],
    cell: tuple[str, str, str],
) -> dict[str, Any]:
    dataset, protocol, init_name = cell
    raw = copy.deepcopy(experiment.base)
    raw.update(name=f"{experiment.name}-{spec.name}", protocol=protocol)
    raw["data"] = {**raw.get("data", {}), **_data(experiment, dataset, parts)}
    model = raw.setdefault("model", {})
    model["init"] = _init(experiment, init_name)
    if protocol == "dapt":
        if spec.source_dataset is None:
            raise ConfigError(f"run {spec.name!r}: protocol dapt needs a source_dataset.")
        source_data = _data(experiment, spec.source_dataset, parts)
        raw["source"] = {"data": source_data, "optim": copy.deepcopy(raw.get("optim", {}))}
    return _merged(raw, spec.overrides)


def _data(experiment: ExperimentConfig, name: str, parts: dict[str, Path]) -> dict[str, Any]:
    spec = experiment.datasets[name]
    path = spec.path
    if path.startswith("@"):
        if path[1:] not in parts:
            raise ConfigError(f"dataset {name!r}: {path} is not a part of class_split.")
        path = str(parts[path[1:]])
    data: dict[str, Any] = {"path": path, "train_fraction": spec.train_fraction}
    if spec.layout is not None:
        data["layout"] = spec.layout
    return data


def _init(experiment: ExperimentConfig, name: str) -> dict[str, Any]:
    ref = experiment.inits[name]
    if ref.run is None:
        return {"kind": ref.kind, **({"path": str(ref.path)} if ref.path else {})}
    # A placeholder until every cell is planned (see resolve_run_inits).
    return {"kind": "rsscgeo", "path": f"@run:{ref.run}"}


def resolve_run_inits(cells: list[Cell]) -> list[Cell]:
    """Point ``@run:NAME`` inits at that run's model file for the same seed.

    A run with a single cell (one seed) serves every seed.

    Raises:
        ConfigError: If the referenced run has no cell or several for the seed.
    """
    resolved = []
    for cell in cells:
        init = cell.config.model.init
        if init.path is not None and str(init.path).startswith("@run:"):
            source = str(init.path)[len("@run:") :]
            matches = [c for c in cells if c.run == source]
            if len(matches) > 1:
                matches = [c for c in matches if c.seed == cell.seed]
            if len(matches) != 1:
                raise ConfigError(
                    f"run {cell.run!r} (seed {cell.seed}) starts from run {source!r}, which has "
                    f"{len(matches)} models for that seed; give it one cell per seed or one in all."
                )
            new_init = init.model_copy(update={"path": matches[0].model_path})
            model = cell.config.model.model_copy(update={"init": new_init})
            cell = replace(cell, config=cell.config.model_copy(update={"model": model}))
        resolved.append(cell)
    return resolved


def write_class_split(experiment: ExperimentConfig) -> dict[str, Path]:
    """Manifests of the seeded class subsets, and ``class_split.json`` naming them.

    Raises:
        ConfigError: If the parts ask for more classes than the dataset has.
    """
    split = experiment.class_split
    assert split is not None
    catalog = open_catalog(split.path)
    wanted = sum(split.parts.values())
    if wanted > len(catalog.classes):
        raise ConfigError(
            f"class_split asks for {wanted} classes but {split.path} has "
            f"{len(catalog.classes)}; lower the part sizes."
        )
    order = list(catalog.classes)
    random.Random(split.seed).shuffle(order)
    folder = experiment.out_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    paths, chosen, start = {}, {}, 0
    for part, size in split.parts.items():
        classes = sorted(order[start : start + size])
        start += size
        rows = [
            (str(item.path.resolve()), catalog.label_names(item))
            for item in catalog.items
            if catalog.classes[item.labels[0]] in classes
        ]
        paths[part] = folder / f"{part}.csv"
        # Atomic: a running experiment may be reading the same (identical) manifest.
        partial = paths[part].with_suffix(".csv.partial")
        write_manifest(partial, rows)
        os.replace(partial, paths[part])
        chosen[part] = classes
    (folder / "class_split.json").write_text(
        json.dumps({"dataset": str(split.path), "seed": split.seed, "parts": chosen}, indent=2)
    )
    return paths


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out
