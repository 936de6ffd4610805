"""An experiment's extra evaluation sets: every finished model on other datasets.

Each eval set is a class-folder dataset and a class map from its folders to the models'
classes (:mod:`rsscgeo.data.classmap`). Everything that can be checked is checked before
any training starts: the maps, the datasets' folders and the class names of every model
they will score (read from the model's card, or from its training data when the model
does not exist yet). After training, each finished model is evaluated on each set and
the figures are recorded beside it in ``eval-<name>.json``. A record is reused while the
model file, the dataset, the class map and the settings stay the same, so re-running an
experiment evaluates only what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsscgeo.data.catalog import Catalog
from rsscgeo.data.classmap import ClassMap, check_folders, check_model_classes, load_class_map
from rsscgeo.data.layouts import open_catalog
from rsscgeo.errors import ConfigError, RsscgeoError, first_line
from rsscgeo.experiments.config import EvalSet, ExperimentConfig
from rsscgeo.experiments.plan import Cell
from rsscgeo.modelfile import read_card

# Lightning's (and torchrun's) process ranks: only rank 0 evaluates.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


@dataclass(frozen=True)
class PreparedSet:
    """An eval set whose class map and dataset have been read and checked."""

    name: str
    spec: EvalSet
    class_map: ClassMap
    catalog: Catalog

    def applies_to(self, cell: Cell) -> bool:
        """Whether this set evaluates ``cell``'s model (reported runs, or those listed)."""
        return cell.report and (self.spec.runs is None or cell.run in self.spec.runs)

    def record_path(self, cell: Cell) -> Path:
        """Where ``cell``'s figures on this set are recorded."""
        return cell.model_path.parent / f"eval-{self.name}.json"

    def settings(self, cell: Cell) -> dict[str, Any]:
        """What the figures depend on; a record with other settings is evaluated again."""
        return {
            "model_sha256": _sha256(cell.model_path),
            "dataset": str(self.spec.path),
            "class_map": {k: list(v) for k, v in self.class_map.accepted.items()},
            "tta": self.spec.tta,
            "uncertain_below": self.spec.uncertain_below,
        }


def prepare_eval_sets(experiment: ExperimentConfig, cells: list[Cell]) -> list[PreparedSet]:
    """Read and check every eval set against its datasets and the models it will score.

    Raises:
        ConfigError: If a class map is unreadable or invalid, or names a class that a
            model to evaluate does not have.
        DatasetError: If a class map names a folder its dataset does not have.
    """
    prepared = []
    classes_of: dict[tuple[str, str | None], tuple[str, ...]] = {}
    for name, spec in experiment.eval_sets.items():
        try:
            class_map = load_class_map(spec.class_map)
            catalog = open_catalog(spec.path)
            check_folders(class_map, catalog)
        except RsscgeoError as err:
            raise type(err)(f"eval_sets.{name}: {first_line(err)}") from None
        ready = PreparedSet(name, spec, class_map, catalog)
        for cell in filter(ready.applies_to, cells):
            try:
                check_model_classes(class_map, _model_classes(cell, classes_of), _model(cell))
            except ConfigError as err:
                raise ConfigError(
                    f"eval_sets.{name}: {first_line(err)} Or list in eval_sets.{name}.runs "
                    "only runs whose models have these classes."
                ) from None
        prepared.append(ready)
    return prepared


def evaluate_eval_sets(
    sets: list[PreparedSet],
    cells: list[Cell],
    *,
    only: list[str] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """Evaluate each finished cell (of the runs in ``only``) on each set, unless recorded."""
    if not _is_rank_zero():
        return
    from rsscgeo.data.classmap import map_catalog
    from rsscgeo.modelfile import load_model
    from rsscgeo.training.crossdomain import evaluate_with_class_map

    for cell in cells:
        if not cell.metrics_path.exists() or (only and cell.run not in only):
            continue
        for ready in sets:
            if not ready.applies_to(cell) or recorded(ready, cell) is not None:
                continue
            say(f"evaluating {cell.run} (seed {cell.seed}) on {ready.name}")
            loaded = load_model(cell.model_path)
            loaded = dataclasses.replace(loaded, model=loaded.model.to(_device(cell)))
            mapped = map_catalog(
                ready.catalog, ready.class_map, loaded.card.class_names, _model(cell)
            )
            result = evaluate_with_class_map(
                loaded,
                mapped,
                tta=ready.spec.tta,
                uncertain_below=ready.spec.uncertain_below,
                batch_size=cell.config.optim.batch_size,
                num_workers=cell.config.trainer.num_workers,
            )
            record = {"settings": ready.settings(cell), **result.as_dict()}
            path = ready.record_path(cell)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(record, indent=2))
            os.replace(partial, path)


def recorded(ready: PreparedSet, cell: Cell) -> dict[str, Any] | None:
    """The recorded figures of ``cell`` on ``ready``, if recorded with today's settings."""
    path = ready.record_path(cell)
    if not path.is_file() or not cell.model_path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable (e.g. cut short): evaluated again
    return record if record.get("settings") == ready.settings(cell) else None


def _model_classes(
    cell: Cell, cache: dict[tuple[str, str | None], tuple[str, ...]]
) -> tuple[str, ...]:
    """The classes of the cell's model: its card's, or its training data's until it exists."""
    if cell.model_path.is_file():
        return tuple(read_card(cell.model_path).class_names)
    data = cell.config.data
    if data.path is None:  # a sources run: its classes are its taxonomy's
        from rsscgeo.taxonomy import load_taxonomy

        assert data.taxonomy is not None
        return load_taxonomy(data.taxonomy).leaves
    key = (str(data.path), data.layout)
    if key not in cache:
        cache[key] = open_catalog(data.path, layout=data.layout).classes
    return cache[key]


def _model(cell: Cell) -> str:
    return f"the model of run {cell.run!r} (seed {cell.seed})"


def _device(cell: Cell) -> str:
    import torch

    gpu = cell.config.trainer.accelerator in ("auto", "gpu", "cuda")
    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def _is_rank_zero() -> bool:
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
