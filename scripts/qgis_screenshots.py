"""Draw the README's pictures of rsscgeo in QGIS: the toolbox, and a run's dialog.

Run with QGIS's own Python, headless (Qt's offscreen platform renders the widgets
exactly as on a screen)::

    QT_QPA_PLATFORM=offscreen RSSCGEO_EXECUTABLE=.venv/bin/rsscgeo \\
        /usr/bin/python3 scripts/qgis_screenshots.py examples/scenes/naip_2020_rgbn.tif out/

Writes ``qgis_toolbox.png`` (the Processing Toolbox with the rsscgeo provider open) and
``qgis_classify.png`` (the classify algorithm's dialog after a run on SCENE: its
parameters and log) into OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingContext, QgsProject

REPO = Path(__file__).resolve().parents[1]


def _open_only(tree: object, provider: str) -> None:
    """Collapse every provider's node but ``provider``'s, which is opened and scrolled to."""
    model = tree.model()  # type: ignore[attr-defined]
    for row in range(model.rowCount()):
        index = model.index(row, 0)
        if model.data(index) == provider:
            tree.expand(index)  # type: ignore[attr-defined]
            tree.scrollTo(index, tree.PositionAtTop)  # type: ignore[attr-defined]
        else:
            tree.collapse(index)  # type: ignore[attr-defined]


def main() -> None:
    scene, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(REPO / "rsscgeo" / "qgis_plugin"), "/usr/share/qgis/python/plugins"]
    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    from qgis.gui import QgsProcessingToolboxProxyModel, QgsProcessingToolboxTreeView
    from rsscgeo_qgis.provider import RsscgeoProvider

    QgsApplication.processingRegistry().addProvider(RsscgeoProvider())
    tree = QgsProcessingToolboxTreeView(None, QgsApplication.processingRegistry())
    tree.setFilters(QgsProcessingToolboxProxyModel.FilterToolbox)
    tree.setHeaderHidden(True)
    tree.resize(420, 300)
    tree.show()  # an item view lays out its rows only once shown
    app.processEvents()
    _open_only(tree, "rsscgeo")
    app.processEvents()
    tree.grab().save(str(out / "qgis_toolbox.png"))
    print("wrote", out / "qgis_toolbox.png", flush=True)

    from processing.gui.AlgorithmDialog import AlgorithmDialog

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("rsscgeo:classify")
    dialog = AlgorithmDialog(algorithm, False, None)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    panel = dialog.mainWidget()
    parameters = {"INPUT": str(scene), "OUTPUT": str(out / "qgis_classify.gpkg")}
    panel.setParameters(parameters)
    dialog.resize(900, 640)
    dialog.show()
    dialog.runAlgorithm()
    # Run synchronously: wait for the task to finish, letting Qt process its signals.
    while dialog.algorithmTask is not None and dialog.algorithmTask.status() < 3:
        app.processEvents()
    app.processEvents()
    dialog.grab().save(str(out / "qgis_classify.png"))
    app.exitQgis()


if __name__ == "__main__":
    main()
