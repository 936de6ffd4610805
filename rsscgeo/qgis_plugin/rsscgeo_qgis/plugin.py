"""The plugin object: registers the Processing provider, and removes it when unloaded."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import RsscgeoProvider


class RsscgeoPlugin:
    """Adds the ``rsscgeo`` provider to the Processing Toolbox."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: RsscgeoProvider | None = None

    def initProcessing(self) -> None:
        """Register the provider (also called by QGIS for headless Processing)."""
        self.provider = RsscgeoProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """QGIS's GUI is up: register the provider."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
