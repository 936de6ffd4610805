"""QGIS styles: class maps (one category per legend entry), change maps, labelling layers.

The legend is the card's classes and, when enabled, Uncertain (see ``legend``). A
change map's style draws changed patches in a strong colour and the others as thin
outlines only (see ``change``). The ``to_label`` layer of ``classify --suggest`` is
drawn as outlines (yellow while unlabelled, cyan once labelled) with the model's guess
or the given label written inside; its ``label`` field edits through a drop-down of the
model's classes and families, and ``new_class`` takes a name the model lacks (see
``to_label_qml``).
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from rsscgeo.scene.legend import Legend

CLASS_FIELD = "class_name"
CHANGED_FIELD = "changed"
# Patches to label: yellow until labelled, then cyan; both stand out over imagery.
TO_LABEL_RGB = (255, 221, 0)
LABELLED_RGB = (0, 229, 255)
# Changed patches: a strong red, unmistakable over imagery and over any class colour...
CHANGED_RGB = (228, 26, 28)
# ...unchanged ones: no fill, a thin dark grey outline.
UNCHANGED_OUTLINE_RGB = (90, 90, 90)
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
# The table QGIS reads default styles from (it creates the same when saving a style).
_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT CURRENT_TIMESTAMP
)"""


@dataclass(frozen=True)
class LabelFields:
    """The text fields of a layer of patches to label (``classify --suggest``).

    Attributes:
        label: The user's choice among the model's classes and families.
        new_class: A class name the model lacks; when filled, it is the patch's label.
            QGIS 3.22 has no drop-down that also takes free text, hence two fields.
        predicted: The model's most probable class, shown until the patch is labelled.
    """

    label: str = "label"
    new_class: str = "new_class"
    predicted: str = "predicted"


def categorised_qml(legend: Legend, field: str = CLASS_FIELD) -> str:
    """A QGIS 3 vector style: polygons filled with each legend entry's colour."""
    root = _style_root()
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field)
    _renderer_defaults(renderer)
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, entry in enumerate(legend.entries):
        ET.SubElement(
            categories,
            "category",
            value=entry.name,
            label=entry.name,
            symbol=str(index),
            render="true",
        )
        _fill_symbol(symbols, str(index), (*entry.rgb, 255), outline=None)
    return _DOCTYPE + ET.tostring(root, encoding="unicode")


def change_qml(field: str = CHANGED_FIELD) -> str:
    """A QGIS 3 vector style for a change layer: a rule on the boolean ``field``.

    Changed patches are filled in ``CHANGED_RGB``; unchanged ones are left unfilled
    with a thin outline, so the imagery below stays visible.
    """
    root = _style_root()
    renderer = ET.SubElement(root, "renderer-v2", type="RuleRenderer")
    _renderer_defaults(renderer)
    rules = ET.SubElement(renderer, "rules", key="root")
    ET.SubElement(rules, "rule", key="changed", filter=f'"{field}"', label="changed", symbol="0")
    ET.SubElement(rules, "rule", key="unchanged", filter="ELSE", label="unchanged", symbol="1")
    symbols = ET.SubElement(renderer, "symbols")
    _fill_symbol(symbols, "0", (*CHANGED_RGB, 255), outline=None)
    _fill_symbol(symbols, "1", None, outline=(*UNCHANGED_OUTLINE_RGB, 255))
    return _DOCTYPE + ET.tostring(root, encoding="unicode")


def to_label_qml(choices: list[str], fields: LabelFields = LabelFields()) -> str:
    """A QGIS 3 style for patches to label: outlines, a text label, a form for the label.

    Unlabelled patches (both label fields NULL or blank) are outlined in
    ``TO_LABEL_RGB`` and show the model's guess followed by "?"; labelled ones are
    outlined in ``LABELLED_RGB`` and show their label. ``fields.label`` edits through a
    value map of ``choices`` (the model's classes and families) with an empty entry to
    clear it; ``fields.new_class`` is free text for a class the model lacks and wins
    over the drop-down.
    """
    root = _style_root("Symbology|Labeling|Fields|Forms")
    root.set("labelsEnabled", "1")
    label = _blank_or(fields.new_class, f'"{fields.label}"')
    unlabelled = f"{_blank(fields.new_class)} AND {_blank(fields.label)}"
    renderer = ET.SubElement(root, "renderer-v2", type="RuleRenderer")
    _renderer_defaults(renderer)
    rules = ET.SubElement(renderer, "rules", key="root")
    ET.SubElement(rules, "rule", key="todo", filter=unlabelled, label="to label", symbol="0")
    ET.SubElement(rules, "rule", key="done", filter="ELSE", label="labelled", symbol="1")
    symbols = ET.SubElement(renderer, "symbols")
    _fill_symbol(symbols, "0", None, outline=(*TO_LABEL_RGB, 255), width="0.8")
    _fill_symbol(symbols, "1", None, outline=(*LABELLED_RGB, 255), width="0.8")
    _text_labels(root, f"if({unlabelled}, \"{fields.predicted}\" || '?', {label})")
    config = ET.SubElement(root, "fieldConfiguration")
    choice = ET.SubElement(config, "field", name=fields.label, configurationFlags="None")
    widget = ET.SubElement(choice, "editWidget", type="ValueMap")
    options = ET.SubElement(ET.SubElement(widget, "config"), "Option", type="Map")
    mapping = ET.SubElement(options, "Option", type="List", name="map")
    for name in ["", *choices]:
        item = ET.SubElement(mapping, "Option", type="Map")
        # An empty value reads NULL in QGIS's value map (its "<NULL>" entry).
        value = name or "{2839923C-8B7D-419E-B84B-CA2FE9B80EC7}"
        ET.SubElement(item, "Option", type="QString", name=name or "(none)", value=value)
    free = ET.SubElement(config, "field", name=fields.new_class, configurationFlags="None")
    ET.SubElement(ET.SubElement(free, "editWidget", type="TextEdit"), "config")
    aliases = ET.SubElement(root, "aliases")
    ET.SubElement(aliases, "alias", field=fields.label, name="label (a class or family)")
    ET.SubElement(aliases, "alias", field=fields.new_class, name="new class (if none fits)")
    return _DOCTYPE + ET.tostring(root, encoding="unicode")


def _blank(field: str) -> str:
    return f'("{field}" IS NULL OR trim("{field}") = \'\')'


def _blank_or(field: str, otherwise: str) -> str:
    """``field``'s value, or ``otherwise`` where it is blank (a QGIS expression)."""
    return f'if({_blank(field)}, {otherwise}, "{field}")'


def _text_labels(root: ET.Element, expression: str) -> None:
    """Simple labelling of each polygon by ``expression``, white text with a dark halo."""
    labeling = ET.SubElement(root, "labeling", type="simple")
    settings = ET.SubElement(labeling, "settings", calloutType="simple")
    style = ET.SubElement(
        settings,
        "text-style",
        fieldName=expression,
        isExpression="1",
        fontSize="9",
        fontSizeUnit="Point",
        fontWeight="75",
        textColor="255,255,255,255",
        textOpacity="1",
        namedStyle="Bold",
    )
    ET.SubElement(
        style,
        "text-buffer",
        bufferDraw="1",
        bufferSize="1",
        bufferSizeUnits="MM",
        bufferColor="0,0,0,255",
        bufferOpacity="1",
    )
    ET.SubElement(settings, "placement", placement="1", offsetType="0")  # over the centroid
    ET.SubElement(settings, "rendering", obstacle="0", displayAll="1")


def _style_root(categories: str = "Symbology") -> ET.Element:
    return ET.Element("qgis", version="3.22.0", styleCategories=categories)


def _renderer_defaults(renderer: ET.Element) -> None:
    renderer.attrib.update(symbollevels="0", enableorderby="0", forceraster="0")


def _fill_symbol(
    symbols: ET.Element,
    name: str,
    fill: tuple[int, int, int, int] | None,
    outline: tuple[int, int, int, int] | None,
    width: str = "0.26",
) -> None:
    """A simple fill symbol: a ``fill`` colour and an ``outline`` (``width`` mm), each optional."""
    symbol = ET.SubElement(
        symbols, "symbol", name=name, type="fill", alpha="1", clip_to_extent="1", force_rhr="0"
    )
    layer = ET.SubElement(
        symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0", "locked": "0"}
    )
    options = ET.SubElement(layer, "Option", type="Map")
    values = [("color", _rgba(fill or (0, 0, 0, 0))), ("style", "no" if fill is None else "solid")]
    if outline is None:
        values.append(("outline_style", "no"))
    else:
        values += [
            ("outline_style", "solid"),
            ("outline_color", _rgba(outline)),
            ("outline_width", width),
            ("outline_width_unit", "MM"),
        ]
    for key, value in values:
        ET.SubElement(options, "Option", name=key, type="QString", value=value)


def _rgba(color: tuple[int, int, int, int]) -> str:
    return ",".join(map(str, color))


def embed_default_style(
    gpkg: Path, layer: str, qml: str, description: str = "rsscgeo classes"
) -> None:
    """Store ``qml`` in the GeoPackage's ``layer_styles`` table as ``layer``'s default.

    QGIS picks a layer's default style by table and geometry column name, so the
    row names the column GDAL actually wrote (``geom``), read from the file.
    """
    with sqlite3.connect(gpkg) as db:
        column = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        db.execute(_LAYER_STYLES_SQL)
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, ?)",
            (layer, column[0] if column else "", layer, qml, description),
        )
        # Registered as an attributes table so GDAL and QGIS treat it as part of the file.
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles')"
        )
