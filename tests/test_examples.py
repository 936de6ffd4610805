"""The bundled model, the example script and the notebooks work on real data."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import runpy
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from rsscgeo import load_model
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.splits import read_split
from rsscgeo.modelfile import BUNDLED_MODEL
from rsscgeo.taxonomy import load_taxonomy
from rsscgeo.training.evaluate import evaluate_model

pytestmark = pytest.mark.real_data

MODEL = BUNDLED_MODEL
SPLIT = BUNDLED_MODEL.with_name("split.csv")


def test_bundled_model_card(aid_dir: Path, repo_root: Path) -> None:
    assert MODEL.stat().st_size <= 25 * 2**20
    card = load_model(MODEL).card
    assert card.architecture == "tf_efficientnet_lite0" and card.task == "multiclass"
    taxonomy = load_taxonomy(repo_root / "configs" / "taxonomy" / "land_use_33.yaml")
    assert card.class_names == list(taxonomy.leaves)
    assert {p.name for p in aid_dir.iterdir() if p.is_dir()} < set(card.class_names)
    assert len({c.color.lower() for c in card.classes}) == card.num_classes
    # Every class in a family; families that a map reader names, none over 40% of the classes.
    assert len(card.parents) >= 5 and all(c.parent in card.parent_names for c in card.classes)
    sizes = Counter(c.parent for c in card.classes)
    assert max(sizes.values()) <= 0.4 * card.num_classes
    assert card.gsd == 2.0 and card.patch_size == 150 and card.bands == ["red", "green", "blue"]
    # The chain: ImageNet -> AID (the previous bundled model) -> AID + NWPU12 at 128 px ->
    # AID + NWPU12 at 144/176 px, every earlier stage recorded.
    provenance = card.provenance
    assert provenance.protocol == "finetune"
    assert provenance.init.startswith("rsscgeo:") and "nwpu12" in provenance.dataset
    first, second = provenance.stages
    assert first.init == "imagenet-offline" and "aid150" in first.dataset
    assert "aid_efficientnet_lite0" in second.init and "nwpu12" in second.dataset
    assert card.eval_resize == 176
    assert provenance.metrics["test_accuracy_aid"] >= 0.93
    assert provenance.metrics["test_accuracy_nwpu12"] >= 0.94
    # Calibrated on validation images of both sources, in neither the training nor the test rows.
    assert card.calibration is not None and 0 < card.uncertain_below < 1
    assert "aid, nwpu12" in card.calibration.fitted_on
    assert card.calibration.metrics["val_nll_after"] < card.calibration.metrics["val_nll_before"]
    rows = SPLIT.read_text().splitlines()
    assert sum(row.endswith(",val") for row in rows) == 565


@pytest.mark.slow
def test_bundled_model_is_accurate_on_held_out_images(aid_dir: Path) -> None:
    held_out = read_split(SPLIT, open_catalog(aid_dir), "test")
    assert len(held_out.items) > 1000
    sample = held_out.subset({item.path for item in held_out.items[::12]})
    metrics = evaluate_model(load_model(MODEL), sample)
    assert metrics["overall_accuracy"] > 0.85, metrics["overall_accuracy"]


@pytest.mark.slow
def test_evaluate_cli_matches_class_folders_to_the_model_by_name(
    tmp_path: Path, aid_subset, run_cli
) -> None:
    data = aid_subset(("Beach", "Forest", "Port"), 4)
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate", MODEL, data, "--json", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 12
    assert metrics["classes"] == load_model(MODEL).card.class_names
    confusion = metrics["confusion_matrix"]
    beach, forest = metrics["classes"].index("Beach"), metrics["classes"].index("Forest")
    assert sum(confusion[beach]) == 4 and sum(confusion[forest]) == 4
    assert "overall accuracy" in result.output


def test_classify_images_example(
    capsys: pytest.CaptureFixture[str], aid_dir: Path, repo_root: Path
) -> None:
    images = [sorted((aid_dir / name).glob("*.jpg"))[0] for name in ("Beach", "Forest")]
    script = runpy.run_path(str(repo_root / "examples" / "classify_images.py"))
    script["main"](images)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{p.parent.name}/{p.name}" for p in images]
    assert all(line.count(",") == 2 for line in lines)


# Names only: collection needs the list, the test resolves it with the repo_root fixture.
NOTEBOOKS = sorted(p.name for p in Path(__file__).parents[1].joinpath("notebooks").glob("*.ipynb"))

# Seconds per cell (nbclient's timeout is per cell): all of quickstart.ipynb, training and
# scene included, takes about a minute on 2 CPU cores.
CELL_TIMEOUT = 600

# What each notebook leaves in its kernel, read back by one last cell that the test appends
# to its in-memory copy: an expression over the notebook's own variables, printed as JSON.
NOTEBOOK_STATE = {
    "quickstart.ipynb": """{
        "tiles": [p.parent.name for p in paths],
        "predicted": [card.class_names[int(p.argmax())] for p in probs],
        "accuracy": result.metrics["overall_accuracy"],
        "model_path": result.model_path,
        "work": work,
        "classified": summary.classified,
        "per_class": dict(summary.per_class),
        "polygons": len(labels),
        "crs": labels.crs.to_string(),
    }""",
    "adapt.ipynb": """{
        "before": accuracy_before,
        "after": accuracy_after,
        "suggested": summary.suggested,
        "labelled": sum(result.labelled.values()),
        "adapted": str(adapted),
    }""",
    "transfer_study.ipynb": """{
        "runs": list(table.index),
        "means": [float(x) for x in table["mean"]],
        "counts": [int(x) for x in table["count"]],
    }""",
}

PROBE = """\
import json as _json, os as _os, sys as _sys
import matplotlib as _mpl
print("rsscgeo-probe", _json.dumps({{
    "executable": _sys.executable, "prefix": _sys.prefix, "cwd": _os.getcwd(),
    "backend": _mpl.get_backend(), "state": {state},
}}, default=str))
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _read_notebook(path: Path) -> nbformat.NotebookNode:
    raw = json.loads(path.read_text())
    # nbformat 4.5 wants cell ids; the committed notebooks have none (nbformat adds them with
    # a warning, and will refuse them one day): give them ids here, in memory only.
    for index, cell in enumerate(raw["cells"]):
        cell.setdefault("id", f"cell-{index}")
    return nbformat.reads(json.dumps(raw), as_version=nbformat.NO_CONVERT)  # and validates


def _venv_kernel(folder: Path) -> AsyncKernelManager:
    """A kernel on this interpreter (the venv's python under `make test`), whatever a
    ``python3`` kernelspec elsewhere points to; its connection file stays in ``folder``."""
    spec = Path(write_kernel_spec(folder / "kernels" / "rsscgeo-venv"))
    argv = json.loads((spec / "kernel.json").read_text())["argv"]
    assert argv[0] == sys.executable, argv
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    manager = AsyncKernelManager(kernel_name="rsscgeo-venv", kernel_spec_manager=specs)
    manager.connection_file = str(folder / "kernel-connection.json")
    return manager


def _cell_failure(name: str, notebook: nbformat.NotebookNode, error: CellExecutionError) -> str:
    """The failing cell's number and source and the kernel's traceback, without colours."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                traceback = _ANSI.sub("", "\n".join(output.traceback))
                probe = " (the test's probe cell)" if index == len(notebook.cells) - 1 else ""
                return (
                    f"{name}, cell {index}{probe} raised {output.ename}: {output.evalue}\n"
                    f"--- cell {index} ---\n{cell.source}\n--- kernel traceback ---\n{traceback}"
                )
    return f"{name}: {_ANSI.sub('', str(error))}"


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _check_quickstart(state: dict[str, Any], cells: list[nbformat.NotebookNode], tmp: Path) -> None:
    assert _stdout(cells[1]).startswith(
        "tf_efficientnet_lite0 multiclass 33 classes, 2.0 m/px, bands ['red', 'green', 'blue']"
    ), _stdout(cells[1])
    # The bundled model on one real tile of each of eight classes.
    right = sum(p == t for p, t in zip(state["predicted"], state["tiles"], strict=True))
    assert right >= 7, list(zip(state["predicted"], state["tiles"], strict=True))
    # The short training run wrote its model under the kernel's temporary folder (TMPDIR).
    model = Path(state["model_path"])
    assert model.is_file() and tmp in model.parents and Path(state["work"]) in model.parents
    assert 0 <= state["accuracy"] <= 1
    assert "held-out overall accuracy" in _stdout(cells[7])
    # The scene classified with it: one polygon per patch, in the scene's CRS.
    assert state["classified"] > 0 and state["polygons"] == state["classified"]
    assert sum(state["per_class"].values()) == state["classified"]
    assert set(state["per_class"]) <= {"Farmland", "Forest", "Meadow", "Pond"}
    assert state["crs"].startswith("EPSG:")
    assert f"{state['classified']} patches classified" in _stdout(cells[9])


def _check_transfer_study(
    state: dict[str, Any], cells: list[nbformat.NotebookNode], study: Path
) -> None:
    # The table the notebook shows is the committed results, three seeds per run.
    results = pd.read_csv(study / "results.csv")
    target = results[(results.dataset == "target") & (results.metric == "overall_accuracy")]
    means = (100 * target.groupby("run").value.mean()).round(2)
    assert state["runs"] and set(state["runs"]) == set(means.index)
    assert state["means"] == [means[run] for run in state["runs"]]
    assert state["counts"] == [3] * len(state["runs"])
    # results.head() and the table come back as rich outputs, as in Jupyter.
    for index in (1, 2):
        (shown,) = [o for o in cells[index].outputs if o.output_type == "execute_result"]
        assert "text/html" in shown.data, shown.data.keys()
    assert all(run in cells[2].outputs[-1].data["text/html"] for run in state["runs"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str, repo_root: Path, tmp_path: Path) -> None:
    """Each notebook, as committed (no outputs), runs under a real IPython kernel on this
    interpreter from ``notebooks/``; its figures come back as PNGs and its results hold."""
    path = repo_root / "notebooks" / name
    notebook = _read_notebook(path)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear its outputs"
    source_cells = len(notebook.cells)
    state = NOTEBOOK_STATE.get(name, "None")
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE.format(state=state)))

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    # Kernel-side temporary files and IPython's profile in tmp_path, not in /tmp or ~/.ipython.
    env.update(TMPDIR=str(tmp), IPYTHONDIR=str(tmp_path / "ipython"))
    manager = _venv_kernel(tmp_path)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(cleanup_kc=True, env=env)
    except CellExecutionError as error:
        pytest.fail(_cell_failure(name, notebook, error), pytrace=False)
    finally:
        # Shut down by nbclient already; this only catches a kernel it could not reach.
        if manager.has_kernel:
            run_sync(manager.shutdown_kernel)(now=True)
        nbformat.write(notebook, tmp_path / name)  # the executed copy, to look at on failure

    cells = notebook.cells[:source_cells]
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))

    # The probe: the kernel ran this interpreter from notebooks/, with the inline backend.
    (line,) = [x for x in _stdout(notebook.cells[-1]).splitlines() if x.startswith("rsscgeo-probe")]
    probe = json.loads(line.removeprefix("rsscgeo-probe "))
    assert probe["executable"] == sys.executable and probe["prefix"] == sys.prefix, probe
    assert Path(probe["cwd"]) == path.parent
    assert "inline" in probe["backend"], probe["backend"]

    # Every cell that draws a figure displays exactly one PNG of it; no other cell shows one.
    for cell in code:
        pngs = [
            o.data["image/png"]
            for o in cell.outputs
            if o.output_type == "display_data" and "image/png" in o.data
        ]
        assert len(pngs) == cell.source.count("plt.subplots("), f"{name}, cell {cells.index(cell)}"
        for png in pngs:
            with Image.open(io.BytesIO(base64.b64decode(png))) as image:
                assert image.width > 200 and image.height > 200
                low, high = image.convert("L").getextrema()
                assert low < high, "a blank figure"
    assert any("plt.subplots(" in cell.source for cell in code), "the notebook draws figures"

    if name == "quickstart.ipynb":
        _check_quickstart(probe["state"], cells, tmp)
    elif name == "transfer_study.ipynb":
        _check_transfer_study(probe["state"], cells, repo_root / "examples" / "transfer_study")
    elif name == "adapt.ipynb":
        state = probe["state"]
        # 30 suggestions labelled from the truth; the map of the rest got better.
        assert state["suggested"] == state["labelled"] == 30
        assert Path(state["adapted"]).is_file() and tmp in Path(state["adapted"]).parents
        assert state["after"] > state["before"] + 0.1, state
