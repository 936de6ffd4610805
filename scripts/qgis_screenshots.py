r"""Draw the README's pictures of rsscgeo in QGIS: the toolbox, and a run's dialog.

Run with QGIS's own Python on a virtual X display (Debian package ``xvfb``)::

    RSSCGEO_EXECUTABLE=.venv/bin/rsscgeo xvfb-run -a -s "-screen 0 1280x1024x24" \\
        /usr/bin/python3 scripts/qgis_screenshots.py examples/scenes/naip_2020_rgbn.tif \\
        examples/qgis/

(``QT_QPA_PLATFORM=offscreen`` instead of ``xvfb-run`` works too, with plainer fonts.)
The Processing toolbox and dialog are QGIS's own widgets, drawn as QGIS draws them.

Writes ``qgis_toolbox.png`` (the Processing Toolbox with the rsscgeo provider open) and
``qgis_classify.png`` (the classify algorithm's dialog after a run on SCENE: its
parameters and log) into OUT.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingContext, QgsProject

REPO = Path(__file__).resolve().parents[1]
# The longest the classify run may take (the bundled scene takes well under a minute).
RUN_SECONDS = 600


def _open_only(tree: object, provider: str) -> None:
    """Collapse every top-level node but ``provider``'s, which is opened and scrolled to.

    The collapsed groups above it stay in view, as in a user's toolbox.
    """
    model = tree.model()  # type: ignore[attr-defined]
    for row in range(model.rowCount()):
        index = model.index(row, 0)
        if model.data(index) == provider:
            tree.expandRecursively(index)  # type: ignore[attr-defined]
            tree.scrollToBottom()  # type: ignore[attr-defined]
        else:
            tree.collapse(index)  # type: ignore[attr-defined]


def main() -> None:
    """Draw both pictures of SCENE (argv 1) into OUT (argv 2)."""
    scene, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(REPO / "rsscgeo" / "qgis_plugin"), "/usr/share/qgis/python/plugins"]
    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    from qgis.gui import QgsProcessingToolboxProxyModel, QgsProcessingToolboxTreeView
    from rsscgeo_qgis.provider import RsscgeoProvider

    # Held in a name: a provider whose Python object is collected loses its name and
    # algorithms (the toolbox shows an empty node).
    provider = RsscgeoProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    tree = QgsProcessingToolboxTreeView(None, QgsApplication.processingRegistry())
    tree.setFilters(QgsProcessingToolboxProxyModel.FilterToolbox)
    tree.setHeaderHidden(True)
    tree.resize(420, 360)
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
    # The map itself is not kept: only the pictures go to OUT.
    maps = Path(tempfile.mkdtemp(prefix="rsscgeo_qgis_"))
    parameters = {"INPUT": str(scene), "OUTPUT": str(maps / f"{scene.stem}_map.gpkg")}
    panel.setParameters(parameters)
    dialog.resize(900, 640)
    dialog.show()
    dialog.runAlgorithm()
    # The dialog runs the algorithm as a background task and drops its feedback when
    # the task completes; until then, let Qt deliver the task's signals.
    deadline = time.monotonic() + RUN_SECONDS
    while dialog.feedback is not None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.05)
    app.processEvents()
    dialog.grab().save(str(out / "qgis_classify.png"))
    print("wrote", out / "qgis_classify.png", flush=True)
    # Widgets outliving exitQgis crash the interpreter's exit: delete them first.
    for widget in (dialog, tree):
        widget.close()
        widget.deleteLater()
    app.processEvents()
    shutil.rmtree(maps)
    app.exitQgis()


if __name__ == "__main__":
    main()
