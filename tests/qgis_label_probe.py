"""Label ``classify --suggest``'s patches through real QGIS, as a user would.

Run with QGIS's own Python (``/usr/bin/python3``, ``QT_QPA_PLATFORM=offscreen``)::

    python3 qgis_label_probe.py MAP.gpkg LABELS_JSON

Opens the layer ``to_label`` of MAP.gpkg (its default style from the GeoPackage
applies), reports its renderer, labelling and the edit widgets of ``label`` and
``new_class``, then writes the labels of LABELS_JSON (``{"<fid>": "<name>", ...}``)
through the edit buffer as a user of the form would (a name of the drop-down into
``label``, any other into ``new_class``) and commits them. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
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
        free = layer.fields().indexOf("new_class")
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
            "new_class_widget": layer.editorWidgetSetup(free).type() if free >= 0 else None,
            "aliases": [layer.attributeAlias(i) for i in (field, free)],
        }
        wanted = {int(fid): name for fid, name in json.loads(labels_json).items()}
        layer.startEditing()
        for fid, name in wanted.items():
            layer.changeAttributeValue(fid, field if name in choices else free, name)
        report["committed"] = layer.commitChanges()
        report["errors"] = layer.commitErrors()
    print(json.dumps(report), flush=True)
    # QgsApplication.exitQgis() can segfault in headless PyQGIS 3.22; the report is out.
    os._exit(0)


if __name__ == "__main__":
    main()
