"""Results of an experiment: ``results.csv``, a Markdown table and a bar chart.

The table has one row per reported run cell (seeds pooled: mean ± sample std), and
the paper's figure beside it where the setting matches one (dataset ``paper_name``,
init ``paper_init``, protocol, training fraction, metric) with the difference. Each
eval set adds a column: the same models' accuracy on that dataset through its class map
(``<set>_accuracy`` rows in ``results.csv``, with ``<set>_average_accuracy``,
``<set>_coverage`` and ``<set>_committed_accuracy`` at the Uncertain threshold).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsscgeo.experiments.config import ExperimentConfig
from rsscgeo.experiments.published import find
from rsscgeo.experiments.runner import CellResult

# The headline metric per task, as the paper reports it, then the others we keep.
METRICS = {
    "multiclass": ("overall_accuracy", "average_accuracy"),
    "multilabel": ("micro_f1", "macro_f1", "mean_average_precision"),
}
COLUMNS = (
    "experiment",
    "run",
    "dataset",
    "protocol",
    "init",
    "train_fraction",
    "seed",
    "task",
    "metric",
    "value",
    "model",
)


@dataclass(frozen=True)
class Row:
    """One pooled table row."""

    run: str
    dataset: str
    protocol: str
    init: str
    train_fraction: float
    metric: str
    values: list[float]  # percent, one per seed
    paper: float | None
    paper_source: str | None
    eval_sets: dict[str, list[float]] = field(default_factory=dict)  # percent, per seed

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def write_results(experiment: ExperimentConfig, results: list[CellResult]) -> list[Path]:
    """Write results.csv, results.md and results.png into the experiment's folder."""
    folder = experiment.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "results.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for result in results:
            task = result.metrics["task"]
            figures = [(m, result.metrics[m]) for m in METRICS[task] if m in result.metrics]
            # Eval sets score single-label predictions through a class map.
            extra = [("multiclass", m, v) for m, v in _eval_set_figures(result.eval_sets)]
            for row_task, metric, value in [(task, m, v) for m, v in figures] + extra:
                cell = result.cell
                writer.writerow(
                    [
                        experiment.name,
                        cell.run,
                        cell.dataset,
                        cell.protocol,
                        cell.init,
                        cell.train_fraction,
                        cell.seed,
                        row_task,
                        metric,
                        value,
                        cell.model_path,
                    ]
                )
    rows = pooled_rows(experiment, results)
    md_path = folder / "results.md"
    md_path.write_text(markdown_table(experiment, rows))
    png_path = folder / "results.png"
    bar_chart(experiment, rows, png_path)
    return [csv_path, md_path, png_path]


def pooled_rows(experiment: ExperimentConfig, results: list[CellResult]) -> list[Row]:
    """Reported cells pooled over seeds, headline metric only, with the paper's figure."""
    groups: dict[tuple[str, str, str, str, float, str], list[float]] = defaultdict(list)
    cross: dict[tuple[str, str, str, str, float, str], dict[str, list[float]]] = {}
    for result in results:
        cell = result.cell
        if not cell.report:
            continue
        metric = METRICS[result.metrics["task"]][0]
        key = (cell.run, cell.dataset, cell.protocol, cell.init, cell.train_fraction, metric)
        groups[key].append(100 * float(result.metrics[metric]))
        for name, record in result.eval_sets.items():
            cross.setdefault(key, {}).setdefault(name, []).append(100 * record["accuracy"])
    rows = []
    for key, values in groups.items():
        run, dataset, protocol, init, fraction, metric = key
        paper_name = experiment.datasets[dataset].paper_name
        paper_init = experiment.inits[init].paper_init
        figure = (
            find(paper_name, metric, protocol, paper_init, fraction)
            if paper_name and paper_init
            else None
        )
        rows.append(
            Row(
                run,
                dataset,
                protocol,
                init,
                fraction,
                metric,
                values,
                figure.value if figure else None,
                figure.source if figure else None,
                cross.get(key, {}),
            )
        )
    return rows


def _eval_set_figures(eval_sets: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    """``(<set>_<metric>, value)`` for the results.csv rows of one cell's eval sets."""
    figures = []
    for name, record in eval_sets.items():
        uncertain = record["uncertain"]
        values = {
            "accuracy": record["accuracy"],
            "average_accuracy": record["average_accuracy"],
            "coverage": uncertain["coverage"],
            "committed_accuracy": uncertain["accuracy"],
        }
        figures += [(f"{name}_{k}", float(v)) for k, v in values.items() if v is not None]
    return figures


def markdown_table(experiment: ExperimentConfig, rows: list[Row]) -> str:
    """The pooled rows as a Markdown table (values in percent)."""
    sets = list(experiment.eval_sets)
    about = (
        f"Seeds {', '.join(map(str, experiment.seeds))}; mean ± sample std over seeds, "
        "in percent. *Paper*: Risojević & Stojnić (2021), where the setting matches "
        "(confirmed = checked against the paper's results listing; secondary = from a "
        "secondary summary, unchecked)."
    )
    if sets:
        about += (
            " *<set>_accuracy*: overall accuracy of the same models on that eval set "
            "through its class map (number of models evaluated)."
        )
    header = "| run | dataset | protocol | init | train | metric | ours | n | paper | diff |"
    lines = [
        f"# {experiment.name}",
        "",
        about,
        "",
        header + "".join(f" {name}_accuracy |" for name in sets),
        "|---" * (10 + len(sets)) + "|",
    ]
    for row in rows:
        paper = f"{row.paper:.2f} ({row.paper_source})" if row.paper is not None else ""
        diff = f"{row.mean - row.paper:+.2f}" if row.paper is not None else ""
        cross = "".join(f" {_cross_cell(row.eval_sets.get(name, []))} |" for name in sets)
        lines.append(
            f"| {row.run} | {row.dataset} | {row.protocol} | {row.init} | "
            f"{row.train_fraction:.0%} | {row.metric} | {_mean_std(row.values)} | "
            f"{len(row.values)} | {paper} | {diff} |{cross}"
        )
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    """``mean ± sample std`` (0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def _cross_cell(values: list[float]) -> str:
    """``mean ± std (n)`` of one row's accuracies on an eval set; empty when none."""
    return f"{_mean_std(values)} ({len(values)})" if values else ""


def bar_chart(experiment: ExperimentConfig, rows: list[Row], path: Path) -> None:
    """One bar per pooled row (mean, with the std as an error bar)."""
    from matplotlib.figure import Figure  # pyplot-free: the caller's backend stays

    fig = Figure(figsize=(max(4.0, 1.1 * len(rows) + 1), 4), layout="constrained")
    ax = fig.subplots()
    labels = [row.run for row in rows]
    bars = ax.bar(labels, [r.mean for r in rows], yerr=[r.std for r in rows], capsize=4)
    ax.bar_label(bars, labels=[f"{r.mean:.1f}" for r in rows], padding=2)
    ax.set_ylabel(" / ".join(sorted({r.metric for r in rows})) + " (%)")
    ax.set_title(f"{experiment.name} (mean ± std over {len(experiment.seeds)} seeds)")
    low = min((r.mean - r.std for r in rows), default=0.0)
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.tick_params(axis="x", rotation=30)
    fig.savefig(path, dpi=120)
