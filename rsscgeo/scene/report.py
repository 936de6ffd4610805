"""A classify run's report: one self-contained HTML file.

Everything is inline (pictures as base64 data URIs, the bar chart as SVG, CSS in a
``<style>`` element, no script), so the file opens anywhere, offline, and can be
mailed or archived on its own. It shows the scene with its class map over it (a
CSS-only switch between scene, overlay and class map), the area per class as a table
and a bar chart, the run's settings (the model, the decisions of the plan, where it ran,
the inputs), and the figure ``--preview`` draws (scene beside class map). Every text is escaped:
class names and scene names may hold ``<``, ``&`` or quotes.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rsscgeo import __version__
from rsscgeo.errors import OptionError, OutputError, OutputExistsError, first_line
from rsscgeo.hierarchy import Level
from rsscgeo.outputs import check_output_folder
from rsscgeo.scene.areas import FAMILY, ClassArea
from rsscgeo.scene.classify import ClassifySummary
from rsscgeo.scene.legend import UNCERTAIN, Legend, LegendEntry
from rsscgeo.scene.plan import ScenePlan
from rsscgeo.scene.preview import (
    Extent,
    class_colors,
    display_bands,
    legend_counts,
    map_extent,
    read_quicklook,
    render_map,
)

SUFFIX = ".html"
IDENTITY_CHARS = 12  # of the model's SHA-256 identity, as git shortens commits


def check_report_path(path: Path, *, overwrite: bool = False) -> None:
    """Refuse a report path that cannot be written, before any work starts.

    Raises:
        OptionError: If the name does not end in ``.html``.
        OutputError: If the path is a folder, or its folder is missing or not writable.
        OutputExistsError: If the file exists and ``overwrite`` is not set.
    """
    if path.suffix.lower() != SUFFIX:
        raise OptionError(f"the report is one HTML file; name it *.html, not {path.name}.")
    if path.is_dir():
        raise OutputError(
            f"report {path} is a folder",
            f"name a file, e.g. {path / 'report.html'}.",
        )
    check_output_folder(path.parent, "report", create=False, cli_option="--report")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} exists",
            "set overwrite=True to replace it.",
            cli_fix="pass --overwrite to replace it.",
        )


def write_report(
    path: Path, plan: ScenePlan, summary: ClassifySummary, *, overwrite: bool = False
) -> Path:
    """Write the report of a finished run (temporary name, then moved into place).

    Args:
        path: The ``.html`` file to write.
        plan: The plan that ran.
        summary: What ``run_plan`` returned for it.
        overwrite: Replace an existing file.

    Returns:
        The path written.

    Raises:
        OptionError: If the name does not end in ``.html``.
        OutputError: If the file cannot be written there.
        OutputExistsError: If the file exists and ``overwrite`` is not set.
        SceneError: If the scene cannot be read for the quicklook.
    """
    check_report_path(path, overwrite=overwrite)
    page = render_report(plan, summary)
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_text(page, encoding="utf-8")
        os.replace(part, path)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write the report {path} ({first_line(err)})",
            "check the disk and the folder's permissions.",
        ) from None
    return path


def render_report(
    plan: ScenePlan, summary: ClassifySummary, *, created: datetime | None = None
) -> str:
    """The report's HTML (see the module's docstring).

    Reads a decimated quicklook of the scene through the plan's reader (at most
    ``preview.QUICKLOOK_PIXELS`` on the long side).
    """
    card = plan.model.card
    entries = plan.legend.entries
    quicklook = read_quicklook(plan.reader, display_bands(card, plan.reader.band_indexes))
    extent = map_extent(plan.grid)
    names = ", ".join(s.filename for s in plan.reader.sources)
    figure = render_map(quicklook, summary.class_map, extent, entries, title=names)
    legend = _legend_tree(plan.legend, legend_counts(summary.class_map, entries))
    colors = {e.name: e.color for e in entries}
    rows = _area_rows(summary.areas, uncertain=plan.legend.enabled)
    overlay = _png(class_colors(summary.class_map, entries))
    when = (created or datetime.now().astimezone()).isoformat(timespec="seconds")
    return PAGE.format(
        title=escape(f"rsscgeo classify: {names}"),
        heading=escape(names),
        subtitle=escape(
            f"{summary.classified} patches classified, {summary.skipped} skipped, "
            f"{_uncertain_share(summary)}; report written {when}"
        ),
        scene=_data_uri("image/jpeg", _jpeg(quicklook.rgb8())),
        overlay=_data_uri("image/png", overlay),
        placement=_placement(quicklook.extent, extent),
        legend=legend,
        figure=_data_uri("image/png", figure),
        table=_area_table(rows, colors),
        chart=_bar_chart(rows, colors),
        settings=_settings(plan, summary, when),
        version=escape(__version__),
    )


def _legend_tree(legend: Legend, present: Sequence[tuple[LegendEntry, int]]) -> str:
    """The legend's items present on the map, as a tree on a card with families.

    Each family shows its patch total, then its classes and the patches named by the
    family itself.
    """

    def item(entry: LegendEntry, count: int, inner: str = "") -> str:
        return (
            f'<li><span class="swatch" style="background:{entry.color}"></span>'
            f"{escape(entry.name)} <small>({count} {'patch' if count == 1 else 'patches'})"
            f"</small>{inner}</li>"
        )

    def doubtful(entry: LegendEntry) -> LegendEntry:
        return LegendEntry(entry.value, f"{entry.name} (class doubtful)", entry.color)

    if not legend.card.parents:
        return "".join(item(e, n) for e, n in present)
    family = {p.name: LegendEntry(-1, p.name, p.color) for p in legend.card.parents}
    members: dict[str, list[tuple[LegendEntry, int]]] = {name: [] for name in family}
    rest: list[tuple[LegendEntry, int]] = []
    for entry, count in present:
        name = legend.family(entry)
        (members[name] if name else rest).append((entry, count))
    tree = []
    for name, inside in members.items():
        if inside:
            leaves = "".join(
                item(e if legend.level_of(e) == Level.LEAF else doubtful(e), n) for e, n in inside
            )
            total = sum(n for _, n in inside)
            tree.append(item(family[name], total, f'<ul class="family">{leaves}</ul>'))
    return "".join(tree) + "".join(item(e, n) for e, n in rest)


def _area_rows(areas: Sequence[ClassArea], *, uncertain: bool) -> list[ClassArea]:
    """Map categories present, largest first, then Uncertain (when the run had it)."""
    present = [a for a in areas if a.patches and a.name != UNCERTAIN and a.level != FAMILY]
    rows = sorted(present, key=lambda a: -a.area_m2)
    rows += [a for a in areas if a.name == UNCERTAIN and uncertain]
    return rows


def _area_table(rows: Sequence[ClassArea], colors: dict[str, str]) -> str:
    body = "".join(
        f'<tr><td><span class="swatch" style="background:{colors.get(a.name, "#ffffff")}">'
        f"</span>{escape(a.name)}</td><td>{a.patches}</td><td>{a.area_ha:.2f}</td>"
        f"<td>{a.area_m2:.0f}</td><td>{a.percent:.1f}</td><td>{_score(a.mean_score)}</td></tr>"
        for a in rows
    )
    total_ha = sum(a.area_ha for a in rows)
    total_patches = sum(a.patches for a in rows)
    return (
        '<table class="areas"><thead><tr><th>class</th><th>patches</th><th>area (ha)</th>'
        "<th>area (m²)</th><th>% of classified area</th><th>mean probability of the name</th>"
        f"</tr></thead><tbody>{body}</tbody><tfoot><tr><th>total</th><th>{total_patches}"
        f"</th><th>{total_ha:.2f}</th><th>{total_ha * 1e4:.0f}</th><th></th><th></th></tr>"
        "</tfoot></table>"
    )


def _score(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _bar_chart(rows: Sequence[ClassArea], colors: dict[str, str]) -> str:
    """Area per class as horizontal bars (inline SVG)."""
    label, bars, line = 190, 420, 24
    width, height = label + bars + 170, line * len(rows) + 8
    largest = max((a.area_ha for a in rows), default=0.0) or 1.0
    items = []
    for i, area in enumerate(rows):
        y = 4 + i * line
        size = max(bars * area.area_ha / largest, 1.0 if area.area_ha else 0.0)
        name = escape(area.name)
        value = f"{area.area_ha:.2f} ha ({area.percent:.1f}%)"
        items.append(
            f'<text x="{label - 8}" y="{y + 15}" text-anchor="end">{name}</text>'
            f'<rect x="{label}" y="{y + 2}" width="{size:.1f}" height="{line - 6}" '
            f'fill="{colors.get(area.name, "#ffffff")}" stroke="#555555">'
            f"<title>{name}: {value}</title></rect>"
            f'<text x="{label + size + 6:.1f}" y="{y + 15}">{value}</text>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="area per class">{"".join(items)}</svg>'
    )


def _settings(plan: ScenePlan, summary: ClassifySummary, when: str) -> str:
    card = plan.model.card
    grid = plan.grid
    xres, yres = plan.reader.resolution
    ran = summary.notes[len(plan.notes) :]
    gsd = f"{card.gsd:g} m/px" if card.gsd else "not recorded"
    rows: list[tuple[str, str | list[str]]] = [
        ("scenes", [s.name for s in plan.reader.sources]),
        ("outputs", [str(p) for p in summary.outputs]),
        (
            "model",
            f"{card.architecture} ({card.task}), {card.num_classes} classes, bands "
            f"{', '.join(card.bands)}, GSD {gsd}, patch size {card.patch_size} px",
        ),
        ("model identity", plan.model.identity[:IDENTITY_CHARS]),
        ("GSD decision", plan.resolution_note or f"{xres:g} per pixel"),
        (
            "patch grid",
            f"{grid.rows} x {grid.cols} patches of {grid.patch} px every {grid.stride} px, "
            f"read at {xres:g} x {yres:g} per pixel, {grid.crs.to_string()}",
        ),
        ("backend", (plan.backend_note or plan.backend).removeprefix("backend: ")),
        ("ran on", ran or ["not recorded"]),
        ("time", f"{summary.seconds:.1f} s classifying; report written {when}"),
        (
            "Uncertain",
            f"{_uncertain_share(summary)}; top-1 probability below "
            f"{summary.uncertain_below:g} ({summary.uncertain_source})"
            if summary.uncertain_below
            else f"off ({summary.uncertain_source})",
        ),
        ("decisions", list(plan.notes)),
    ]
    rows += [(key.replace("_", " "), value) for key, value in sorted(plan.metadata.items())]
    return "".join(f"<tr><th>{escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)


def _cell(value: str | list[str]) -> str:
    if isinstance(value, str):
        return escape(value)
    return "<ul>" + "".join(f"<li>{escape(v)}</li>" for v in value) + "</ul>"


def _uncertain_share(summary: ClassifySummary) -> str:
    if not summary.uncertain_below:
        return "Uncertain off"
    share = 100 * summary.uncertain / summary.classified if summary.classified else 0.0
    area = next((a for a in summary.areas if a.name == UNCERTAIN), None)
    by_area = f", {area.percent:.1f}% of the classified area" if area else ""
    return f"Uncertain {summary.uncertain} patches ({share:.1f}% of classified{by_area})"


def _placement(scene: Extent, classes: Extent) -> str:
    """CSS placing the class map over the scene picture, in percent of the picture."""
    left, right, bottom, top = scene
    width, height = right - left, top - bottom
    return (
        f"left:{100 * (classes[0] - left) / width:.4f}%;"
        f"top:{100 * (top - classes[3]) / height:.4f}%;"
        f"width:{100 * (classes[1] - classes[0]) / width:.4f}%;"
        f"height:{100 * (classes[3] - classes[2]) / height:.4f}%"
    )


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px;
  padding: 0 1em; color: #222222; background: #ffffff; }}
h1 {{ font-size: 1.5em; margin-bottom: 0.1em; }}
h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #dddddd; }}
.subtitle {{ color: #555555; margin-top: 0; }}
.viewer {{ display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }}
.layers {{ flex: 1 1 560px; max-width: 760px; }}
.layers input {{ position: absolute; opacity: 0; }}
.layers label {{ display: inline-block; padding: 0.2em 0.8em; margin: 0 0.3em 0.5em 0;
  border: 1px solid #999999; border-radius: 1em; cursor: pointer; user-select: none; }}
#layer-overlay:checked ~ label[for=layer-overlay],
#layer-scene:checked ~ label[for=layer-scene],
#layer-classes:checked ~ label[for=layer-classes] {{ background: #333333; color: #ffffff; }}
.stage {{ position: relative; overflow: hidden; border: 1px solid #cccccc;
  background: #ffffff; }}
.stage .scene {{ display: block; width: 100%; height: auto; }}
.stage .classes {{ position: absolute; opacity: 0.6; image-rendering: pixelated; }}
#layer-scene:checked ~ .stage .classes {{ visibility: hidden; }}
#layer-classes:checked ~ .stage .classes {{ opacity: 1; }}
#layer-classes:checked ~ .stage .scene {{ visibility: hidden; }}
.legend {{ list-style: none; padding: 0; margin: 2.3em 0 0; columns: 1; }}
.legend li {{ margin: 0.15em 0; }}
.legend .family {{ list-style: none; padding-left: 1.4em; margin: 0.1em 0 0.3em; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; margin-right: 0.45em;
  vertical-align: -0.15em; border: 1px solid #555555; }}
.figure {{ width: 100%; height: auto; border: 1px solid #eeeeee; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 0.25em 0.7em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }}
.areas td:not(:first-child), .areas tfoot th:not(:first-child) {{ text-align: right;
  font-variant-numeric: tabular-nums; }}
.areas th {{ text-align: right; }} .areas th:first-child {{ text-align: left; }}
.settings th {{ text-align: left; white-space: nowrap; color: #444444; }}
.settings ul {{ margin: 0; padding-left: 1.1em; }}
.chart {{ max-width: 100%; height: auto; font-size: 13px; }}
footer {{ margin-top: 2em; color: #777777; font-size: 0.85em; }}
</style>
</head>
<body>
<h1>{heading}</h1>
<p class="subtitle">{subtitle}</p>

<h2>Map</h2>
<div class="viewer">
<div class="layers">
<input type="radio" name="layer" id="layer-overlay" checked>
<input type="radio" name="layer" id="layer-scene">
<input type="radio" name="layer" id="layer-classes">
<label for="layer-overlay">class map over the scene</label>
<label for="layer-scene">scene</label>
<label for="layer-classes">class map</label>
<div class="stage">
<img class="scene" alt="the scene (quicklook)" src="{scene}">
<img class="classes" alt="the class map, one cell per patch" style="{placement}"
 src="{overlay}">
</div>
</div>
<ul class="legend">{legend}</ul>
</div>

<h2>Area per class</h2>
{table}
{chart}

<h2>Run</h2>
<table class="settings">{settings}</table>

<h2>Figure</h2>
<p>As <code>rsscgeo classify --preview</code> draws it (save it for slides):</p>
<img class="figure" alt="the scene beside the scene under its class map" src="{figure}">
<footer>written by rsscgeo {version}; every picture is inline, nothing is fetched.</footer>
</body>
</html>
"""
