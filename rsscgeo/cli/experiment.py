"""``rsscgeo experiment``: run a matrix of training runs and report them."""

from __future__ import annotations

from pathlib import Path

import click

from rsscgeo.stopping import STOP


@click.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--run", "only", multiple=True, help="Only train these runs (repeatable).")
@click.option("--plan", "plan_only", is_flag=True, help="List the runs and exit.")
@click.option(
    "--report",
    "report_only",
    is_flag=True,
    help="Only rewrite the results files (no training, no evaluation).",
)
def experiment(config: Path, only: tuple[str, ...], plan_only: bool, report_only: bool) -> None:
    """Train every run of the experiment CONFIG not finished yet, then report.

    Finished models are then evaluated on the experiment's eval_sets (other datasets,
    through a class map) where no figures are recorded yet. Writes results.csv,
    results.md (with the paper's figures where they match, and a column per eval set)
    and results.png into the experiment's out_dir. Re-running continues where it
    stopped; --report neither trains nor evaluates.
    """
    from rsscgeo.experiments.config import load_experiment
    from rsscgeo.experiments.plan import plan_experiment
    from rsscgeo.experiments.report import write_results
    from rsscgeo.experiments.runner import run_experiment

    spec = load_experiment(config)
    if plan_only:
        for cell in plan_experiment(spec):
            state = "done" if cell.metrics_path.exists() else "todo"
            click.echo(f"{state}  {cell.run}  seed {cell.seed}  {cell.out_dir}")
        return
    with STOP.deferred():  # runs stop at a training step or an evaluation batch
        results = run_experiment(
            spec,
            only=list(only),
            train_missing=not report_only,
            say=lambda line: click.echo(line, err=True),
        )
    for path in write_results(spec, results):
        click.echo(f"wrote {path}")
