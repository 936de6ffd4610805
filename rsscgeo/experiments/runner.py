"""Running an experiment: train every cell not finished yet, then report.

A cell is finished when its ``metrics.json`` exists, so an interrupted experiment
continues where it stopped (a cell interrupted mid-training resumes from its own
Lightning checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rsscgeo.experiments.config import ExperimentConfig
from rsscgeo.experiments.plan import Cell, plan_experiment


@dataclass(frozen=True)
class CellResult:
    """A finished cell and its held-out metrics."""

    cell: Cell
    metrics: dict[str, Any]


def run_experiment(
    experiment: ExperimentConfig,
    *,
    only: list[str] | None = None,
    train_missing: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> list[CellResult]:
    """Train the unfinished cells of ``experiment`` (of the runs in ``only``, if given).

    Returns:
        Every finished cell's result, in plan order.
    """
    from rsscgeo.training.run import train

    cells = plan_experiment(experiment)
    todo = [c for c in cells if not c.metrics_path.exists() and (not only or c.run in only)]
    if not train_missing:
        todo = []
    say(f"{len(cells)} runs planned, {len(cells) - len(todo)} already finished")
    for number, cell in enumerate(todo, 1):
        say(f"[{number}/{len(todo)}] {_describe(cell)}")
        train(cell.config)
    return [
        CellResult(c, json.loads(c.metrics_path.read_text()))
        for c in cells
        if c.metrics_path.exists()
    ]


def _describe(cell: Cell) -> str:
    return (
        f"{cell.run}: {cell.protocol} from {cell.init} on {cell.dataset} "
        f"({cell.train_fraction:.0%} training), seed {cell.seed} -> {cell.out_dir}"
    )
