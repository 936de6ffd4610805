"""rsscgeo in QGIS: a Processing provider whose algorithms run the rsscgeo executable."""


def classFactory(iface):  # noqa: ANN001, ANN201 (QGIS's plugin entry point)
    """The plugin object QGIS asks for when it loads the plugin."""
    from .plugin import RsscgeoPlugin

    return RsscgeoPlugin(iface)
