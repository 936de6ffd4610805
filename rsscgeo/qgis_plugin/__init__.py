"""The QGIS plugin (``rsscgeo_qgis``): rsscgeo's commands in QGIS's Processing Toolbox.

The plugin runs inside QGIS's own Python, which is not rsscgeo's environment, so it
imports nothing from rsscgeo: it runs the installed ``rsscgeo`` executable (see
``rsscgeo_qgis/runner.py``). ``rsscgeo qgis install`` and ``rsscgeo qgis package``
(``rsscgeo.cli.qgis``) copy or zip the folder ``PLUGIN_DIR``.
"""

from pathlib import Path

PLUGIN_NAME = "rsscgeo_qgis"
PLUGIN_DIR = Path(__file__).resolve().parent / PLUGIN_NAME
