"""QGIS styles from a map legend: a categorised renderer, one category per class.

The legend is the card's classes and, when enabled, Uncertain (see ``legend``).
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from rsscgeo.scene.legend import Legend

CLASS_FIELD = "class_name"
# The table QGIS reads default styles from (it creates the same when saving a style).
_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT CURRENT_TIMESTAMP
)"""


def categorised_qml(legend: Legend, field: str = CLASS_FIELD) -> str:
    """A QGIS 3 vector style: polygons filled with each legend entry's colour."""
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology")
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        type="categorizedSymbol",
        attr=field,
        symbollevels="0",
        enableorderby="0",
        forceraster="0",
    )
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
        symbol = ET.SubElement(
            symbols,
            "symbol",
            name=str(index),
            type="fill",
            alpha="1",
            clip_to_extent="1",
            force_rhr="0",
        )
        layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0", "locked": "0"}
        )
        options = ET.SubElement(layer, "Option", type="Map")
        red, green, blue = entry.rgb
        for name, value in (
            ("color", f"{red},{green},{blue},255"),
            ("style", "solid"),
            ("outline_style", "no"),
        ):
            ET.SubElement(options, "Option", name=name, type="QString", value=value)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )


def embed_default_style(gpkg: Path, layer: str, geometry_column: str, qml: str) -> None:
    """Store ``qml`` in the GeoPackage's ``layer_styles`` table as the layer's default."""
    with sqlite3.connect(gpkg) as db:
        db.execute(_LAYER_STYLES_SQL)
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, 'rsscgeo classes')",
            (layer, geometry_column, layer, qml),
        )
        # Registered as an attributes table so GDAL and QGIS treat it as part of the file.
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles')"
        )
