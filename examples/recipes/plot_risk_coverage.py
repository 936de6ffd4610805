"""Draw ucm10_risk_coverage.png from the `rsscgeo evaluate --json` files beside it.

.venv/bin/python examples/recipes/plot_risk_coverage.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
RUNS = {
    "ucm10_before.json": "before issue 9",
    "ucm10_bundled.json": "bundled now",
    "ucm10_bundled_tta.json": "bundled now, --tta",
}


def main() -> None:
    """Plot accuracy against coverage for each evaluation."""
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for name, label in RUNS.items():
        curve = json.loads((HERE / name).read_text())["risk_coverage"]
        ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], ".-", label=label)
    ax.axvline(0.7, color="grey", lw=0.8, ls=":")
    ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("coverage (share of UC Merced images committed, most confident first)")
    ax.set_ylabel("accuracy of the committed images")
    ax.set_title("UC Merced (10 classes mapped onto AID)")
    ax.legend()
    fig.savefig(HERE / "ucm10_risk_coverage.png", dpi=100)


if __name__ == "__main__":
    main()
