"""The bundled model, the example script and the notebooks work on real data."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest

from rsscgeo import load_model
from rsscgeo.data.layouts import open_catalog
from rsscgeo.data.splits import read_split
from rsscgeo.modelfile import BUNDLED_MODEL
from rsscgeo.training.evaluate import evaluate_model

pytestmark = pytest.mark.real_data

MODEL = BUNDLED_MODEL
SPLIT = BUNDLED_MODEL.with_name("split.csv")


def test_bundled_model_card(aid_dir: Path) -> None:
    assert MODEL.stat().st_size <= 25 * 2**20
    card = load_model(MODEL).card
    assert card.architecture == "tf_efficientnet_lite0" and card.task == "multiclass"
    assert card.class_names == sorted(p.name for p in aid_dir.iterdir() if p.is_dir())
    assert len({c.color.lower() for c in card.classes}) == 30
    assert card.gsd == 2.0 and card.patch_size == 150 and card.bands == ["red", "green", "blue"]
    assert card.provenance.protocol == "finetune"
    assert card.provenance.init == "imagenet-offline"
    assert card.provenance.metrics["overall_accuracy"] >= 0.89
    # Calibrated on validation images that are in neither the training nor the test rows.
    assert card.calibration is not None and 0 < card.uncertain_below < 1
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
    assert metrics["num_images"] == 12 and len(metrics["classes"]) == 30
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(
    name: str, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = repo_root / "notebooks" / name
    matplotlib.use("Agg")
    plt.close("all")
    monkeypatch.chdir(notebook.parent)
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)
    figures = plt.get_fignums()
    plt.close("all")
    assert figures, "the notebook should draw its figures"
