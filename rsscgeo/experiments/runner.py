"""Running an experiment: train every cell not finished yet, evaluate, then report.

A cell is finished when its ``metrics.json`` exists, so an interrupted experiment
continues where it stopped (a cell interrupted mid-training resumes from its own
Lightning checkpoint). Finished cells are then evaluated on the experiment's eval sets
(:mod:`rsscgeo.experiments.evalsets`), again only where no figures are recorded yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rsscgeo.experiments.config import ExperimentConfig
from rsscgeo.experiments.evalsets import evaluate_eval_sets, prepare_eval_sets, recorded
from rsscgeo.experiments.plan import Cell, plan_experiment


@dataclass(frozen=True)
class CellResult:
    """A finished cell, its held-out metrics and its figures on each eval set."""

    cell: Cell
    metrics: dict[str, Any]
    eval_sets: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_experiment(
    experiment: ExperimentConfig,
    *,
    only: list[str] | None = None,
    train_missing: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> list[CellResult]:
    """Train the unfinished cells of ``experiment`` (of the runs in ``only``, if given).

    With ``train_missing`` the finished cells are also evaluated on the eval sets where
    their figures are not recorded yet; without it nothing is trained or evaluated.

    Returns:
        Every finished cell's result, in plan order.

    Raises:
        ConfigError: If an eval set cannot score a model it is meant for (checked
            before any training).
        DatasetError: If an eval set's class map names a folder its dataset lacks.
    """
    from rsscgeo.training.run import train

    cells = plan_experiment(experiment)
    sets = prepare_eval_sets(experiment, cells)
    todo = [c for c in cells if not c.metrics_path.exists() and (not only or c.run in only)]
    if not train_missing:
        todo = []
    say(f"{len(cells)} runs planned, {len(cells) - len(todo)} already finished")
    for number, cell in enumerate(todo, 1):
        say(f"[{number}/{len(todo)}] {_describe(cell)}")
        train(cell.config)
    if train_missing:
        evaluate_eval_sets(sets, cells, only=only, say=say)
    results = []
    for cell in cells:
        if not cell.metrics_path.exists():
            continue
        figures = {s.name: recorded(s, cell) for s in sets if s.applies_to(cell)}
        missing = sorted(name for name, record in figures.items() if record is None)
        if missing:
            say(f"{cell.run} (seed {cell.seed}): no figures yet on {', '.join(missing)}")
        found = {name: record for name, record in figures.items() if record is not None}
        results.append(CellResult(cell, json.loads(cell.metrics_path.read_text()), found))
    return results


def _describe(cell: Cell) -> str:
    return (
        f"{cell.run}: {cell.protocol} from {cell.init} on {cell.dataset} "
        f"({cell.train_fraction:.0%} training), seed {cell.seed} -> {cell.out_dir}"
    )
