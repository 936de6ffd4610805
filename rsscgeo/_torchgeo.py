"""The one place rsscgeo imports TorchGeo.

TorchGeo's APIs move between minor releases (0.9 reworked GeoDataset); keeping every
import here means an upgrade touches one module.
"""

from __future__ import annotations

from torchgeo.trainers import ClassificationTask

__all__ = ["ClassificationTask"]
