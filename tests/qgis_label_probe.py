"""Label ``classify --suggest``'s patches through real QGIS, as a user would.

Run with QGIS's own Python (``/usr/bin/python3``, ``QT_QPA_PLATFORM=offscreen``)::

    python3 qgis_label_probe.py MAP.gpkg LABELS_JSON

Opens the layer ``to_label`` of MAP.gpkg (its default style from the GeoPackage
applies), reports its renderer, labelling and the edit widget of ``label``, then
writes the labels of LABELS_JSON (``{"<fid>": "<name>", ...}``) through the edit
buffer and commits them. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys

from qgis.core import QgsApplication, QgsVectorLayer


def main() -> None:
    gpkg, labels_json = sys.argv[1], sys.argv[2]
    app = QgsApplication([], False)
    app.initQgis()
    layer = QgsVectorLayer(f"{gpkg}|layername=to_label", "to_label", "ogr")
    report: dict[str, object] = {"valid": layer.isValid()}
    if layer.isValid():
        field = layer.fields().indexOf("label")
        setup = layer.editorWidgetSetup(field)
        choices = []
        for entry in setup.config().get("map", []):
            choices += [str(value) for value in entry.values()]
        renderer = layer.renderer()
        report |= {
            "features": layer.featureCount(),
            "renderer": renderer.type() if renderer else None,
            "labels_enabled": layer.labelsEnabled(),
            "widget": setup.type(),
            "choices": choices,
        }
        wanted = {int(fid): name for fid, name in json.loads(labels_json).items()}
        layer.startEditing()
        for fid, name in wanted.items():
            layer.changeAttributeValue(fid, field, name)
        report["committed"] = layer.commitChanges()
        report["errors"] = layer.commitErrors()
    print(json.dumps(report))
    app.exitQgis()


if __name__ == "__main__":
    main()
