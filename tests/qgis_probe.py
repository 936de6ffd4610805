"""Open rsscgeo outputs in real QGIS (PyQGIS, headless) and report what it sees as JSON.

Run by the system Python that has Debian's python3-qgis:
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_probe.py OUT.gpkg OUT.tif OUT.png
"""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # after choosing the headless platform
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize

gpkg, tif, png = sys.argv[1:4]
app = QgsApplication([], False)
app.initQgis()
vector = QgsVectorLayer(gpkg, "labels", "ogr")
raster = QgsRasterLayer(tif, "labels_raster")
renderer = vector.renderer()
categories = renderer.categories() if renderer and renderer.type() == "categorizedSymbol" else []
report = {
    "qgis": app.applicationVersion() if hasattr(app, "applicationVersion") else "",
    "vector_valid": vector.isValid(),
    "vector_crs": vector.crs().authid(),
    "vector_wkt": vector.crs().toWkt(),
    "features": vector.featureCount(),
    "renderer": renderer.type() if renderer else None,
    "categories": [c.value() for c in categories],
    "category_labels": [c.label() for c in categories],
    "category_colors": [c.symbol().color().name() for c in categories],
    "raster_valid": raster.isValid(),
    "raster_crs": raster.crs().authid(),
    "raster_wkt": raster.crs().toWkt(),
    "raster_renderer": raster.renderer().type() if raster.renderer() else None,
}
# The paletted renderer's class labels are what the QGIS legend shows.
report["raster_labels"] = [c.label for c in raster.renderer().classes()]
report["raster_values"] = [int(c.value) for c in raster.renderer().classes()]
report["raster_colors"] = [c.color.name() for c in raster.renderer().classes()]
report["raster_legend"] = [label for label, _ in raster.renderer().legendSymbologyItems()]
settings = QgsMapSettings()
settings.setLayers([vector, raster])
settings.setDestinationCrs(vector.crs())
settings.setExtent(vector.extent())
settings.setOutputSize(QSize(400, 400))
job = QgsMapRendererParallelJob(settings)
job.start()
job.waitForFinished()
report["png_saved"] = job.renderedImage().save(png)
print(json.dumps(report), flush=True)
# QgsApplication.exitQgis() can segfault in headless PyQGIS 3.22; the report is out.
os._exit(0)
