"""Run rsscgeo's Processing algorithms inside real QGIS, headless.

Run with QGIS's own Python (``/usr/bin/python3``, ``QT_QPA_PLATFORM=offscreen``)::

    python3 qgis_processing_probe.py PLUGINS_DIR REQUEST_JSON

PLUGINS_DIR holds ``rsscgeo_qgis``. REQUEST_JSON says what to do:

* ``{"run": "rsscgeo:classify", "parameters": {...}, "cancel_at": 30}``: run the
  algorithm (cancelling once its progress reaches ``cancel_at`` percent, if given);
  reports the results, or the error, the highest progress seen and the seconds from
  the cancel to the end;
* ``{"algorithms": true}``: the provider's algorithms and their parameter names;
* ``{"model": PATH}``: chain classify and change in a Graphical Modeler model, save it
  as ``.model3``, load it back and report the parameters its child algorithms keep;
* ``{"load": [URI, ...]}``: load layers as Processing would and report their
  validity and renderer (with categories);
* ``{"installed": DIR}``: load the plugin from DIR (an unpacked plugin zip) through
  QGIS's own plugin loader (``qgis.utils``) and report its metadata and algorithms.

Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsVectorLayer,
)


class CancellingFeedback(QgsProcessingFeedback):
    """Feedback that cancels once progress reaches ``at`` percent; records what it saw."""

    def __init__(self, at: float | None) -> None:
        super().__init__()
        self.at = at
        self.highest = 0.0
        self.cancelled_at: float | None = None
        self.lines: list[str] = []
        self.texts: list[str] = []
        self.progressChanged.connect(self._progress)

    def _progress(self, value: float) -> None:
        self.highest = max(self.highest, value)
        if self.at is not None and value >= self.at and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self.cancel()

    def pushInfo(self, info: str) -> None:
        self.lines.append(info)
        super().pushInfo(info)

    def setProgressText(self, text: str) -> None:  # a dialog logs each one
        self.texts.append(text)
        super().setProgressText(text)


def main() -> None:
    plugins, request = sys.argv[1], json.loads(sys.argv[2])
    sys.path[:0] = ["/usr/share/qgis/python/plugins"]
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    if "installed" in request:
        print(json.dumps(installed(request["installed"])))
        app.exitQgis()
        return
    sys.path.insert(0, plugins)
    from rsscgeo_qgis.provider import RsscgeoProvider

    provider = RsscgeoProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    report: dict[str, object] = {}
    if "run" in request:
        report = run(request)
    elif "algorithms" in request:
        report = {
            a.id(): [p.name() for p in a.parameterDefinitions()] for a in provider.algorithms()
        }
    elif "model" in request:
        report = model_round_trip(request["model"])
    elif "load" in request:
        report = {"layers": [describe(uri) for uri in request["load"]]}
    print(json.dumps(report))
    app.exitQgis()


def run(request: dict) -> dict:
    import processing

    feedback = CancellingFeedback(request.get("cancel_at"))
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    started = time.monotonic()
    report: dict[str, object] = {}
    try:
        results = processing.run(request["run"], request["parameters"], context=context,
                                 feedback=feedback)  # fmt: skip
        report["results"] = {k: str(v) for k, v in results.items()}
    except QgsProcessingException as err:
        report["error"] = str(err)
    ended = time.monotonic()
    report["seconds"] = ended - started
    report["highest_progress"] = feedback.highest
    report["progress_texts"] = feedback.texts
    if feedback.cancelled_at is not None:
        report["seconds_after_cancel"] = ended - feedback.cancelled_at
    report["log"] = feedback.lines[-20:]
    report["to_load"] = sorted(context.layersToLoadOnCompletion())
    return report


def model_round_trip(path: str) -> dict:
    model = QgsProcessingModelAlgorithm("classify then change", "rsscgeo")
    for name in ("before", "after"):
        model.addModelParameter(
            QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name)
        )
    classify = QgsProcessingModelChildAlgorithm("rsscgeo:classify")
    classify.setChildId("classify")
    classify.addParameterSources(
        "INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("before")]
    )
    model.addChildAlgorithm(classify)
    change = QgsProcessingModelChildAlgorithm("rsscgeo:change")
    change.setChildId("change")
    change.addParameterSources(
        "INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("before")]
    )
    change.addParameterSources(
        "INPUT_2", [QgsProcessingModelChildParameterSource.fromModelParameter("after")]
    )
    model.addChildAlgorithm(change)
    saved = model.toFile(path)
    loaded = QgsProcessingModelAlgorithm()
    read = loaded.fromFile(path)
    children = loaded.childAlgorithms()
    return {
        "saved": saved,
        "read": read,
        "children": {
            cid: {
                "algorithm": child.algorithmId(),
                "resolved": child.algorithm() is not None,
                "sources": sorted(child.parameterSources().keys()),
                "parameters": [p.name() for p in child.algorithm().parameterDefinitions()]
                if child.algorithm()
                else [],
            }
            for cid, child in children.items()
        },
        "model_parameters": sorted(p.name() for p in loaded.parameterDefinitions()),
    }


def installed(folder: str) -> dict:
    import qgis.utils

    qgis.utils.plugin_paths = [folder]
    sys.path.insert(0, folder)
    qgis.utils.updateAvailablePlugins()
    name = "rsscgeo_qgis"
    report: dict[str, object] = {
        "available": name in qgis.utils.available_plugins,
        "metadata": {
            key: qgis.utils.pluginMetadata(name, key)
            for key in ("name", "qgisMinimumVersion", "version", "hasProcessingProvider")
        },
    }
    report["loaded"] = bool(qgis.utils.loadPlugin(name))
    started = qgis.utils.startProcessingPlugin(name) if report["loaded"] else False
    report["started"] = bool(started)
    provider = QgsApplication.processingRegistry().providerById("rsscgeo")
    report["algorithms"] = sorted(a.id() for a in provider.algorithms()) if provider else []
    return report


def describe(uri: str) -> dict:
    from qgis.core import QgsRasterLayer

    if uri.lower().endswith((".tif", ".tiff")):
        layer = QgsRasterLayer(uri, "raster")
        renderer = layer.renderer()
        return {
            "uri": uri,
            "valid": layer.isValid(),
            "renderer": renderer.type() if renderer else None,
        }
    layer = QgsVectorLayer(uri, "vector", "ogr")
    renderer = layer.renderer()
    categories = (
        [c.value() for c in renderer.categories()] if hasattr(renderer, "categories") else []
    )
    return {
        "uri": uri,
        "valid": layer.isValid(),
        "renderer": renderer.type() if renderer else None,
        "categories": categories,
        "features": layer.featureCount(),
    }


if __name__ == "__main__":
    main()
