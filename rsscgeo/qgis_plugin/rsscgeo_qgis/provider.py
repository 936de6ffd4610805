"""The ``rsscgeo`` Processing provider and its setting (the executable's path)."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import AdaptAlgorithm, ChangeAlgorithm, ClassifyAlgorithm, SuggestAlgorithm
from .runner import EXECUTABLE_SETTING

PROVIDER_ID = "rsscgeo"


class RsscgeoProvider(QgsProcessingProvider):
    """Scene classification with rsscgeo: classify, suggest, adapt, change."""

    def id(self) -> str:
        """``rsscgeo``: algorithms are ``rsscgeo:classify`` and so on."""
        return PROVIDER_ID

    def name(self) -> str:
        """The name shown in the toolbox."""
        return "rsscgeo"

    def icon(self) -> QIcon:
        """The plugin's icon: four family colours."""
        return QIcon(os.path.join(os.path.dirname(__file__), "icon.png"))

    def longName(self) -> str:
        """The name with what it does."""
        return "rsscgeo scene classification"

    def load(self) -> bool:
        """Register the executable setting (Options > Processing > Providers > rsscgeo)."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # Processing's Python plugin is not loaded: no settings page
            return super().load()
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "rsscgeo executable (empty: $RSSCGEO_EXECUTABLE, else rsscgeo on PATH)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
        return super().load()

    def unload(self) -> None:
        """Remove the setting again."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self) -> None:
        """The four algorithms."""
        for algorithm in (ClassifyAlgorithm, SuggestAlgorithm, AdaptAlgorithm, ChangeAlgorithm):
            self.addAlgorithm(algorithm())
