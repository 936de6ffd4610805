"""The paper's published figures (Risojević & Stojnić 2021), shipped as data.

``published.csv`` holds one row per figure: table, dataset (the paper's name), task,
metric, training fraction (empty when the source does not state it), protocol, init
(scratch, imagenet, swav), value in percent, and ``source``: ``confirmed`` (checked
against the paper's own results listing) or ``secondary`` (from a secondary summary,
to be checked against the paper). Table 3 (linear evaluation at 20%) is not included:
no figures from it were available when this file was written.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Published:
    """One published figure."""

    table: str
    dataset: str
    task: str
    metric: str
    train_fraction: float | None
    protocol: str
    init: str
    value: float
    source: str
    note: str


def published() -> list[Published]:
    """Every figure in ``published.csv``."""
    text = resources.files("rsscgeo.experiments").joinpath("published.csv").read_text()
    return [
        Published(
            row["table"],
            row["dataset"],
            row["task"],
            row["metric"],
            float(row["train_fraction"]) if row["train_fraction"] else None,
            row["protocol"],
            row["init"],
            float(row["value"]),
            row["source"],
            row["note"],
        )
        for row in csv.DictReader(text.splitlines())
    ]


def find(
    dataset: str, metric: str, protocol: str, init: str, train_fraction: float
) -> Published | None:
    """The published figure for this setting, if the paper reports one."""
    for row in published():
        if (row.dataset, row.metric, row.protocol, row.init) != (dataset, metric, protocol, init):
            continue
        if row.train_fraction is None or abs(row.train_fraction - train_fraction) < 1e-9:
            return row
    return None
