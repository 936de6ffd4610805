"""The Processing algorithms: classify, suggest, adapt and change, each a run of rsscgeo.

Parameter names follow QGIS's conventions, so models and scripts can call them:
``INPUT`` (the scene), ``INPUT_2`` (change's second date), ``MODEL``, ``OUTPUT`` (the
GeoPackage, or adapt's model file), ``OUTPUT_RASTER`` (the GeoTIFF), ``LABELS`` and
``FIELD`` (adapt's labels). Outputs are rsscgeo's own files (GeoPackages carry their
QGIS style), so a run here writes exactly what the same command writes in a terminal.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsVectorFileWriter,
)

from .runner import EXECUTABLE_SETTING, find_executable, run_rsscgeo

Parameters = dict[str, Any]


def _executable() -> str:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        configured = ProcessingConfig.getSetting(EXECUTABLE_SETTING)
    except ImportError:
        configured = None
    return find_executable(str(configured) if configured else None)


class _RsscgeoAlgorithm(QgsProcessingAlgorithm):
    """What every rsscgeo algorithm shares: group, help, running the executable."""

    command = ""
    title = ""
    summary = ""

    def name(self) -> str:
        """The algorithm's id within the provider (``rsscgeo:<name>``)."""
        return self.command

    def displayName(self) -> str:
        """The name shown in the toolbox."""
        return self.title

    def group(self) -> str:
        """Toolbox group."""
        return "Scene classification"

    def groupId(self) -> str:
        """Toolbox group id."""
        return "scene_classification"

    def shortHelpString(self) -> str:
        """The help beside the dialog."""
        return self.summary

    def createInstance(self) -> _RsscgeoAlgorithm:
        """A fresh copy (QGIS runs algorithms on copies)."""
        return type(self)()

    def run_command(self, arguments: list[str], feedback: QgsProcessingFeedback) -> str:
        """Run ``rsscgeo ARGUMENTS`` with progress and cancel (see ``runner``)."""
        return run_rsscgeo(_executable(), arguments, feedback)


def _scene(
    algorithm: QgsProcessingAlgorithm,
    parameters: Parameters,
    name: str,
    context: QgsProcessingContext,
) -> str:
    layer = algorithm.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer, file or URL was given.")
    return str(layer.source())


def _model_arguments(
    algorithm: QgsProcessingAlgorithm, parameters: Parameters, context: QgsProcessingContext
) -> list[str]:
    model = algorithm.parameterAsFile(parameters, "MODEL", context)
    return ["--model", model] if model else []


def _model_parameter(optional: bool = True) -> QgsProcessingParameterFile:
    return QgsProcessingParameterFile(
        "MODEL",
        "Model file (.safetensors)" + ("; empty: the bundled model" if optional else ""),
        extension="safetensors",
        optional=optional,
    )


class ClassifyAlgorithm(_RsscgeoAlgorithm):
    """``rsscgeo classify``: a scene into styled patches and/or a class raster."""

    command = "classify"
    title = "Classify scene"
    summary = (
        "Classifies a raster scene patch by patch with an rsscgeo model (default: the bundled "
        "one) into a styled GeoPackage of patch polygons and/or a one-pixel-per-patch "
        "GeoTIFF. Runs the rsscgeo executable; a cancelled run resumes when run again with "
        "the same outputs."
    )

    def initAlgorithm(self, config: Any = None) -> None:
        """The parameters."""
        self.addParameter(
            QgsProcessingParameterRasterLayer("INPUT", "Scene (raster layer, file or URL)")
        )
        self.addParameter(_model_parameter())
        self.addParameter(
            QgsProcessingParameterString(
                "BANDS", "Scene bands in the model's order, e.g. 1,2,3", optional=True
            )
        )
        gsd = QgsProcessingParameterNumber(
            "GSD",
            "Reading resolution, CRS units/px (empty: the model's GSD rule)",
            QgsProcessingParameterNumber.Double,
            optional=True,
            minValue=0.0,
        )
        self.addParameter(gsd)
        self.addParameter(
            QgsProcessingParameterNumber(
                "UNCERTAIN_BELOW",
                "Uncertain below this calibrated probability (empty: the model's)",
                QgsProcessingParameterNumber.Double,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "TTA", "Test-time augmentation (8 rotations/flips, 8x slower)", False
            )
        )
        self.add_extra_parameters()
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Patches (GeoPackage)", QgsProcessing.TypeVectorPolygon, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                "OUTPUT_RASTER", "Class raster (GeoTIFF)", optional=True, createByDefault=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "REPORT",
                "Report (HTML)",
                "HTML files (*.html)",
                optional=True,
                createByDefault=False,
            )
        )

    def add_extra_parameters(self) -> None:
        """Parameters a subclass adds before the outputs."""

    def extra_arguments(
        self, parameters: Parameters, context: QgsProcessingContext, gpkg: str
    ) -> list[str]:
        """Arguments a subclass adds."""
        return []

    def processAlgorithm(
        self, parameters: Parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``rsscgeo classify``."""
        scene = _scene(self, parameters, "INPUT", context)
        gpkg = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        tif = self.parameterAsOutputLayer(parameters, "OUTPUT_RASTER", context)
        report = self.parameterAsFileOutput(parameters, "REPORT", context)
        if not gpkg and not tif:
            raise QgsProcessingException("choose an output: OUTPUT (.gpkg) and/or OUTPUT_RASTER")
        if gpkg and not gpkg.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"OUTPUT {gpkg} must be a GeoPackage (.gpkg).")
        arguments = ["classify", scene, *_model_arguments(self, parameters, context)]
        for path in (gpkg, tif):
            if path:
                arguments += ["--out", path]
        bands = self.parameterAsString(parameters, "BANDS", context).strip()
        if bands:
            arguments += ["--bands", bands]
        for name, flag in (("GSD", "--gsd"), ("UNCERTAIN_BELOW", "--uncertain-below")):
            if parameters.get(name) not in (None, ""):
                arguments += [flag, repr(self.parameterAsDouble(parameters, name, context))]
        if self.parameterAsBoolean(parameters, "TTA", context):
            arguments.append("--tta")
        if report:
            arguments += ["--report", report]
        arguments += self.extra_arguments(parameters, context, gpkg)
        # Processing replaces its outputs; an interrupted run's journal is picked up.
        arguments += ["--resume", "--overwrite"]
        self.run_command(arguments, feedback)
        results: dict[str, Any] = {}
        if gpkg:
            results["OUTPUT"] = gpkg
        if tif:
            results["OUTPUT_RASTER"] = tif
        if report:
            results["REPORT"] = report
        return results


class SuggestAlgorithm(ClassifyAlgorithm):
    """``rsscgeo classify --suggest``: the map plus the patches worth labelling."""

    command = "suggest"
    title = "Suggest patches to label"
    summary = (
        "Classifies the scene as 'Classify scene' does and adds the layer to_label to the "
        "GeoPackage: N patches worth a label (uncertain and unlike each other). Fill their "
        "label field (a drop-down of the model's classes and families; new_class for one "
        "it lacks), then run 'Adapt model'."
    )

    def add_extra_parameters(self) -> None:
        """N, the number of patches."""
        self.addParameter(
            QgsProcessingParameterNumber(
                "N", "Patches to suggest", QgsProcessingParameterNumber.Integer, 40, minValue=1
            )
        )
        self.addOutput(QgsProcessingOutputVectorLayer("TO_LABEL", "Patches to label"))

    def extra_arguments(
        self, parameters: Parameters, context: QgsProcessingContext, gpkg: str
    ) -> list[str]:
        """``--suggest N`` (it needs the GeoPackage)."""
        if not gpkg:
            raise QgsProcessingException("suggest writes into the GeoPackage: set OUTPUT (.gpkg).")
        return ["--suggest", str(self.parameterAsInt(parameters, "N", context))]

    def processAlgorithm(
        self, parameters: Parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``rsscgeo classify --suggest N`` and load the layer to label."""
        results = super().processAlgorithm(parameters, context, feedback)
        uri = f"{results['OUTPUT']}|layername=to_label"
        details = QgsProcessingContext.LayerDetails("to_label", context.project(), "TO_LABEL")
        context.addLayerToLoadOnCompletion(uri, details)
        return results | {"TO_LABEL": uri}


class AdaptAlgorithm(_RsscgeoAlgorithm):
    """``rsscgeo adapt``: fine-tune a model on labelled patches of the scenes."""

    command = "adapt"
    title = "Adapt model to labels"
    summary = (
        "Fine-tunes a model on patches labelled on the scenes (the to_label layer of "
        "'Suggest patches to label', or any points or polygons with a label field) and "
        "writes the adapted model file; classify with it afterwards. Unsaved edits of the "
        "labels layer are included."
    )

    def initAlgorithm(self, config: Any = None) -> None:
        """The parameters."""
        self.addParameter(_model_parameter(optional=False))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                "INPUT", "Scenes the labels lie on", QgsProcessing.TypeRaster
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorLayer(
                "LABELS",
                "Labels (points or polygons)",
                [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon],
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "FIELD", "Label field", "label", "LABELS", QgsProcessingParameterField.String
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "ONLY_LABELLED", "Predict only the labelled classes", False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Adapted model", "rsscgeo models (*.safetensors)"
            )
        )

    def processAlgorithm(
        self, parameters: Parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Export the labels (with unsaved edits) and run ``rsscgeo adapt``."""
        model = self.parameterAsFile(parameters, "MODEL", context)
        scenes = [
            layer.source() for layer in self.parameterAsLayerList(parameters, "INPUT", context)
        ]
        if not scenes:
            raise QgsProcessingException("INPUT: choose the scenes the labels lie on.")
        labels = self.parameterAsVectorLayer(parameters, "LABELS", context)
        field = self.parameterAsString(parameters, "FIELD", context) or "label"
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        with tempfile.TemporaryDirectory(prefix="rsscgeo-labels-") as folder:
            path = os.path.join(folder, "labels.gpkg")
            options = QgsVectorFileWriter.SaveVectorOptions()
            options.driverName = "GPKG"
            options.layerName = "labels"
            error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
                labels, path, context.transformContext(), options
            )
            if error != QgsVectorFileWriter.NoError:
                raise QgsProcessingException(f"the labels could not be exported: {message}")
            arguments = [
                "adapt",
                model,
                *scenes,
                "--labels",
                path,
                "--layer",
                "labels",
                "--field",
                field,
                "--out",
                out,
                "--overwrite",
            ]
            if self.parameterAsBoolean(parameters, "ONLY_LABELLED", context):
                arguments.append("--only-labelled-classes")
            self.run_command(arguments, feedback)
        return {"OUTPUT": out}


class ChangeAlgorithm(_RsscgeoAlgorithm):
    """``rsscgeo change``: where the class changed between two dates of one place."""

    command = "change"
    title = "Change between two dates"
    summary = (
        "Classifies two scenes of the same place on the first one's patch grid and maps "
        "the patches whose class changed (styled: changed patches filled)."
    )

    def initAlgorithm(self, config: Any = None) -> None:
        """The parameters."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Before (first date)"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_2", "After (second date)"))
        self.addParameter(_model_parameter())
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT",
                "Change patches (GeoPackage)",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                "OUTPUT_RASTER", "Change raster (GeoTIFF)", optional=True, createByDefault=False
            )
        )

    def processAlgorithm(
        self, parameters: Parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Run ``rsscgeo change``."""
        before = _scene(self, parameters, "INPUT", context)
        after = _scene(self, parameters, "INPUT_2", context)
        gpkg = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        tif = self.parameterAsOutputLayer(parameters, "OUTPUT_RASTER", context)
        if not gpkg and not tif:
            raise QgsProcessingException("choose an output: OUTPUT (.gpkg) and/or OUTPUT_RASTER")
        arguments = ["change", before, after, *_model_arguments(self, parameters, context)]
        for path in (gpkg, tif):
            if path:
                arguments += ["--out", path]
        self.run_command([*arguments, "--overwrite"], feedback)
        results: dict[str, Any] = {}
        if gpkg:
            results["OUTPUT"] = gpkg
        if tif:
            results["OUTPUT_RASTER"] = tif
        return results
