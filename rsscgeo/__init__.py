"""rsscgeo: remote sensing scene classification at scale.

Train scene classifiers following Risojević & Stojnić (2021) and use them through a
self-describing model file (:func:`load_model`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rsscgeo.adapt.labels import read_label_rows
    from rsscgeo.adapt.run import AdaptOptions, AdaptSummary, adapt_model
    from rsscgeo.errors import RsscgeoError
    from rsscgeo.modelfile import LoadedModel, ModelCard, load_model, save_model
    from rsscgeo.scene.change import ChangeSummary, classify_change, plan_change, run_change
    from rsscgeo.scene.classify import ClassifySummary, classify_scene, run_plan
    from rsscgeo.scene.engine import Engine, open_engine
    from rsscgeo.scene.options import ClassifyOptions, ClassifyOutputs
    from rsscgeo.scene.plan import ScenePlan, plan_scene
    from rsscgeo.scene.report import write_report
    from rsscgeo.scene.results import patch_dataset
    from rsscgeo.sources import SceneSource, scene_source

# Public names and their modules; imported on first use so `rsscgeo --help` stays fast.
_EXPORTS = {
    "RsscgeoError": "rsscgeo.errors",
    "LoadedModel": "rsscgeo.modelfile",
    "ModelCard": "rsscgeo.modelfile",
    "load_model": "rsscgeo.modelfile",
    "save_model": "rsscgeo.modelfile",
    "ClassifyOptions": "rsscgeo.scene.options",
    "ClassifyOutputs": "rsscgeo.scene.options",
    "plan_scene": "rsscgeo.scene.plan",
    "ScenePlan": "rsscgeo.scene.plan",
    "open_engine": "rsscgeo.scene.engine",
    "Engine": "rsscgeo.scene.engine",
    "classify_scene": "rsscgeo.scene.classify",
    "run_plan": "rsscgeo.scene.classify",
    "ClassifySummary": "rsscgeo.scene.classify",
    "patch_dataset": "rsscgeo.scene.results",
    "write_report": "rsscgeo.scene.report",
    "plan_change": "rsscgeo.scene.change",
    "run_change": "rsscgeo.scene.change",
    "classify_change": "rsscgeo.scene.change",
    "ChangeSummary": "rsscgeo.scene.change",
    "SceneSource": "rsscgeo.sources",
    "scene_source": "rsscgeo.sources",
    "AdaptOptions": "rsscgeo.adapt.run",
    "AdaptSummary": "rsscgeo.adapt.run",
    "adapt_model": "rsscgeo.adapt.run",
    "read_label_rows": "rsscgeo.adapt.labels",
}
__all__ = [
    "AdaptOptions",
    "AdaptSummary",
    "ChangeSummary",
    "ClassifyOptions",
    "ClassifyOutputs",
    "ClassifySummary",
    "Engine",
    "LoadedModel",
    "ModelCard",
    "RsscgeoError",
    "ScenePlan",
    "SceneSource",
    "__version__",
    "adapt_model",
    "classify_change",
    "classify_scene",
    "load_model",
    "open_engine",
    "patch_dataset",
    "plan_change",
    "plan_scene",
    "read_label_rows",
    "run_change",
    "run_plan",
    "save_model",
    "scene_source",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rsscgeo' has no attribute {name!r}")
