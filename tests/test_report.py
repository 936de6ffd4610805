"""``classify --report``: one self-contained HTML file, checked as text and in Chromium.

The report of the bundled demo scene (208 patches) is made once per module through the
CLI; the browser tests open it in real headless Chromium (skipped where it is absent).
"""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner
from helpers import assert_one_line_error, write_raster
from PIL import Image

from rsscgeo.cli.main import cli
from rsscgeo.modelfile import BUNDLED_MODEL, LoadedModel, load_model

DEMO_SCENE = Path(__file__).resolve().parents[1] / "examples" / "scenes" / "naip_2020_rgbn.tif"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_SECONDS = 120
# Characters HTML must escape, in every class name of the escaping test.
ODD = " <b>&\"'</b>"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)


@dataclass(frozen=True)
class Run:
    """The files of the module's demo run."""

    report: Path
    areas: Path
    preview: Path
    output: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("report")
    run = Run(folder / "report.html", folder / "demo.areas.csv", folder / "preview.png", "")
    result = CliRunner().invoke(
        cli,
        [
            "classify",
            str(DEMO_SCENE),
            "--out",
            str(folder / "demo.gpkg"),
            "--out",
            str(folder / "demo.tif"),
            "--preview",
            str(run.preview),
            "--report",
            str(run.report),
        ],
    )
    assert result.exit_code == 0, result.output
    return replace(run, output=result.output)


class _Page(HTMLParser):
    """Every tag's attributes, and the rows of the area table."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.area_rows: list[list[str]] = []
        self._table = ""
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("class") or ""
        elif tag == "tbody" and self._table == "areas":
            self._table = "areas-body"
        elif tag == "tr" and self._table == "areas-body":
            self.area_rows.append([])
        elif tag == "td" and self._table == "areas-body":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.area_rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("tbody", "table"):
            self._table = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _legend(html: str) -> str:
    """The legend's list, with the list of each family nested in it."""
    start = html.index('<ul class="legend">')
    depth = 0
    for tag in re.finditer(r"<(/?)ul\b", html[start:]):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return html[start : start + tag.start()]
    raise AssertionError("the legend's list is not closed")


def _mapped(demo: Run) -> set[str]:
    """What the demo map says somewhere: classes, families, Uncertain."""
    return set(gpd.read_file(demo.report.with_name("demo.gpkg"))["class_name"])


def _decoded(uri: str) -> Image.Image:
    header, _, data = uri.partition(",")
    assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
    return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))


def test_report_is_one_self_contained_file(demo: Run) -> None:
    html = demo.report.read_text(encoding="utf-8")
    assert f"wrote {demo.report}" in demo.output
    assert "http" not in html  # no URL at all, not even as text
    text = re.sub(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"//|<script|<link|<iframe|<object|@import|url\(", text)
    assert not re.search(r"(src|href)=\"(?!data:image/)", html)
    assert not list(demo.report.parent.glob(".*.part"))  # written, then moved into place
    page = _parse(html)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 3  # the quicklook, the class map over it, the --preview figure
    pictures = {}
    for attrs in images:
        assert attrs["src"] and attrs["src"].startswith("data:image/"), attrs["src"][:40]
        pictures[attrs["class"]] = _decoded(attrs["src"])
    scene, classes = pictures["scene"], pictures["classes"]
    assert max(scene.size) <= 1025  # a decimated quicklook, not the 2 m reading grid
    assert classes.size == (16, 13) and classes.mode == "RGBA"  # one pixel per patch
    # The legend: everything the map says, in the model card's colours (families too).
    card = load_model(BUNDLED_MODEL).card
    swatches = re.findall(r'class="swatch" style="background:(#[0-9a-f]{6})"></span>([^<]+)', html)
    colors = {c.name: c.color for c in [*card.classes, *card.parents]}
    named = {name.strip().removesuffix(" (class doubtful)"): color for color, name in swatches}
    assert _mapped(demo) <= set(named) and "Uncertain" in named
    assert all(named[n] == colors[n] for n in named if n != "Uncertain")
    facts = (f"{card.num_classes} classes", "GSD 2 m/px", "patch size 150 px")
    for words in ("tf_efficientnet_lite0", *facts):
        assert words in html
    assert "reading upsampled to 2 m/px" in html  # the GSD decision
    assert "local Dask cluster" in html and "ONNX Runtime" in html
    assert load_model(BUNDLED_MODEL).identity[:12] in html
    assert DEMO_SCENE.name in html and "<svg" in html


def test_report_areas_equal_the_areas_csv(demo: Run) -> None:
    with demo.areas.open() as handle:
        # The report's table lists what the map says; the CSV adds each family's total.
        table = {r["class"]: r for r in csv.DictReader(handle) if r["level"] != "family"}
    present = {n for n, row in table.items() if int(row["patches"]) or n == "Uncertain"}
    rows = _parse(demo.report.read_text(encoding="utf-8")).area_rows
    assert {r[0] for r in rows} == present
    assert len(rows) == len(present)
    for name, patches, hectares, square_metres, percent, score in rows:
        expected = table[name]
        assert int(patches) == int(expected["patches"])
        # Both round: the report to fewer digits than the CSV.
        assert float(hectares) == pytest.approx(float(expected["area_ha"]), abs=0.0051)
        assert float(square_metres) == pytest.approx(float(expected["area_m2"]), abs=0.51)
        assert float(percent) == pytest.approx(float(expected["percent"]), abs=0.051)
        assert float(score) == pytest.approx(float(expected["mean_score"]), abs=0.00051)
    # The bar chart has one bar per row, in the same order.
    html = demo.report.read_text(encoding="utf-8")
    bars = re.findall(r"<title>([^<:]+): ([\d.]+) ha", html)
    assert [(n, float(h)) for n, h in bars] == [(r[0], float(r[2])) for r in rows]


def test_preview_draws_the_scene_beside_its_class_map(demo: Run) -> None:
    with Image.open(demo.preview) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (560, 1200, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000  # imagery, not a blank


def test_quicklook_stretches_16_bit_scenes_and_stays_small(tmp_path: Path) -> None:
    from rsscgeo.scene.preview import read_quicklook
    from rsscgeo.scene.reader import SceneReader

    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 3000, (3, 300, 500), dtype=np.uint16)
    pixels[:, :50, :50] = 0  # nodata: white
    scene = write_raster(
        tmp_path / "s.tif", pixels, "EPSG:32633", Affine(10, 0, 5e5, 0, -10, 5e6), nodata=0
    )
    quicklook = read_quicklook(SceneReader((str(scene),), (1, 2, 3), (10.0, 10.0)), (3, 2, 1), 100)
    image = quicklook.image
    assert image.shape == (60, 100, 3)
    assert quicklook.extent == pytest.approx((5e5, 505e3, 4997e3, 5e6))
    assert (image[:8, :8] == 1).all()
    inside = image[15:, 15:]
    assert inside.min() >= 0 and inside.max() <= 1 and inside.std() > 0.05


def test_preview_bands_show_the_demo_lakes_dark_in_false_colour() -> None:
    """Bands 4,1,2 (NIR, red, green) of the NAIP scene: its water is dark, its plants red.

    Truth independent of the picture: the scene's NDWI, (green - NIR) / (green + NIR).
    """
    import rasterio

    from rsscgeo.scene.preview import read_quicklook
    from rsscgeo.scene.reader import SceneReader, inspect_scenes

    info = inspect_scenes([DEMO_SCENE])
    bands = (4, 1, 2)
    reader = SceneReader(info.sources, bands, info.resolution)
    image = read_quicklook(reader, bands, pixels=2000).image  # full size: 934 x 723
    with rasterio.open(DEMO_SCENE) as src:
        green, nir = src.read([2, 4]).astype("float64")
    assert image.shape[:2] == green.shape
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    water, plants = ndwi > 0.2, ndwi < -0.3
    assert water.mean() > 0.1 and plants.mean() > 0.1
    shown_red = image[..., 0]  # NIR
    assert shown_red[water].mean() < 0.2 < 0.6 < shown_red[plants].mean()


@pytest.mark.parametrize(
    ("bands", "needles"),
    [("5,1,2", ["band 5 does not exist", "bands 1-4", "--preview-bands"]),
     ("4,1", ["3 bands", "--preview-bands 4,1,2"]),
     ("0,1,2", ["start at 1"])],
)  # fmt: skip
def test_bad_preview_bands_are_refused_before_the_run(
    tmp_path: Path, bands: str, needles: list[str]
) -> None:
    out = tmp_path / "labels.tif"
    preview = tmp_path / "map.png"
    args = ["classify", str(DEMO_SCENE), "--out", str(out), "--preview", str(preview)]
    result = CliRunner().invoke(cli, [*args, "--preview-bands", bands])
    assert_one_line_error(result, *needles)
    assert not out.exists() and not preview.exists() and "classifying" not in result.output


def test_classify_preview_bands_reach_the_picture(demo: Run, tmp_path: Path) -> None:
    """With --preview-bands 4,1,2 the scene's panel turns from green to red (plants' NIR)."""
    preview = tmp_path / "map.png"
    result = CliRunner().invoke(
        cli, ["classify", str(DEMO_SCENE), "--gsd", "20", "--out", str(tmp_path / "l.tif"),
              "--preview", str(preview), "--preview-bands", "4,1,2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    def scene_panel(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[150:400, 100:400].astype(float)

    natural, false_colour = scene_panel(demo.preview), scene_panel(preview)
    assert natural[..., 1].mean() > natural[..., 0].mean()  # green fields
    assert false_colour[..., 0].mean() > false_colour[..., 1].mean() + 30  # red plants


def test_report_escapes_class_names_and_metadata(tmp_path: Path) -> None:
    """Class names with < & " ' > reach the page as text, never as markup."""
    from rsscgeo import ClassifyOptions, ClassifyOutputs, open_engine, plan_scene, run_plan
    from rsscgeo.scene.report import render_report

    bundled = load_model(BUNDLED_MODEL)
    card = bundled.card
    classes = [
        c.model_copy(update={"name": c.name + ODD, "parent": c.parent and c.parent + ODD})
        for c in card.classes
    ]
    parents = [p.model_copy(update={"name": p.name + ODD}) for p in card.parents]
    card = card.model_copy(update={"classes": classes, "parents": parents})
    loaded = LoadedModel(bundled.model, card)
    # At 10 m the demo scene is 4 x 3 patches; Uncertain off, so classes are mapped.
    options = ClassifyOptions(gsd=10.0, uncertain_below=0.0, backend="torch")
    plan = plan_scene([DEMO_SCENE], loaded, options, ClassifyOutputs(gpkg=tmp_path / "o.gpkg"))
    with open_engine(workers=1, device="cpu") as engine:
        summary = run_plan(plan, engine, progress=False)
    plan = replace(plan, metadata={"stac_item_ids": "item<1>&'2'"})
    html = render_report(plan, summary)
    assert ODD.strip() not in html and "item<1>" not in html
    assert all(a.name.endswith(ODD) for a in summary.areas if a.patches)
    mapped = [a.name for a in summary.areas if a.patches and a.level != "family"]
    assert mapped
    escaped = " &lt;b&gt;&amp;&quot;&#x27;&lt;/b&gt;"
    assert html.count(escaped) >= 3 * len(mapped)  # legend, table, chart (bar and title)
    assert "item&lt;1&gt;&amp;&#x27;2&#x27;" in html
    assert "Uncertain off" in html
    rows = _parse(html).area_rows
    assert {r[0] for r in rows} == set(mapped)  # the parser unescapes: the names as given


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("report.txt", ["*.html", "report.txt"]),
        ("missing/report.html", ["does not exist"]),
        ("folder.html", ["folder.html"]),
        ("a-file/report.html", ["is a file"]),
        ("existing.html", ["exists", "--overwrite"]),
    ],
)
def test_bad_report_paths_are_refused_before_the_run(
    tmp_path: Path, name: str, needles: list[str]
) -> None:
    (tmp_path / "folder.html").mkdir()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "existing.html").write_text("")
    out = tmp_path / "labels.gpkg"
    result = CliRunner().invoke(
        cli, ["classify", str(DEMO_SCENE), "--out", str(out), "--report", str(tmp_path / name)]
    )
    assert_one_line_error(result, *needles)
    assert not out.exists() and "classifying" not in result.output


def test_report_needs_one_job(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for stem in ("a", "b"):
        (scenes / f"{stem}.tif").symlink_to(DEMO_SCENE)
    result = CliRunner().invoke(
        cli,
        [
            "classify",
            str(scenes / "a.tif"),
            str(scenes / "b.tif"),
            "--out-dir",
            str(tmp_path),
            "--report",
            str(tmp_path / "r.html"),
        ],
    )
    assert_one_line_error(result, "--report", "one run")
    assert not list(tmp_path.glob("*.gpkg"))


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless Chromium with its console logged to stderr."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_SECONDS,
        check=True,
    )


def _console(stderr: str) -> list[str]:
    """What the page wrote to the console: errors (uncaught ones too), logs, warnings."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_chromium(demo: Run, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    run = _chromium(
        demo.report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000"
    )
    assert not _console(run.stderr), _console(run.stderr)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000  # imagery, not a blank
    assert (pixels < 250).any(axis=2).mean() > 0.2  # not all white
    dom = _chromium(demo.report, tmp_path / "profile", "--dump-dom")
    assert not _console(dom.stderr), _console(dom.stderr)
    legend = _legend(dom.stdout)
    for name in _mapped(demo):
        shown = (f"</span>{name} <small>", f"</span>{name} (class doubtful) <small>")
        assert any(text in legend for text in shown), name


@pytest.mark.slow
@needs_chromium
def test_the_console_check_sees_script_errors(demo: Run, tmp_path: Path) -> None:
    """The check above would catch a page that fails: inject a script error."""
    broken = tmp_path / "broken.html"
    html = demo.report.read_text(encoding="utf-8")
    broken.write_text(html.replace("</body>", '<script>throw new Error("boom")</script></body>'))
    lines = _console(_chromium(broken, tmp_path / "profile", "--dump-dom").stderr)
    assert any("Uncaught Error: boom" in line for line in lines), lines
