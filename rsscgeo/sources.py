"""Where a scene's pixels are: a local file, a URL or any GDAL virtual path.

Users name scenes as they find them: ``scene.tif``, ``https://host/scene.tif``,
``s3://bucket/scene.tif`` or ``/vsizip/archive.zip/scene.tif``. A :class:`SceneSource`
keeps the name as given (for messages and output names) beside the path GDAL opens, and
knows how to fingerprint the source for resuming. ``pathlib.Path`` cannot hold a URL:
it collapses ``//``.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rsscgeo.errors import SceneError

# URL schemes and the GDAL virtual file system that reads each.
VSI_PREFIXES = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "ftp": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# GDAL settings for reading Cloud-Optimised GeoTIFFs over HTTP, applied unless the user
# set them: no directory listing on open (one request instead of dozens), several byte
# ranges per request, neighbouring ranges merged, and retries of transient failures.
COG_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "VSI_CACHE": "TRUE",
}


@dataclass(frozen=True)
class SceneSource:
    """A scene as the user named it and as GDAL opens it.

    Attributes:
        name: The scene as given (a path or a URL), for messages.
        gdal_path: What ``rasterio.open`` receives (``/vsicurl/...`` for HTTP URLs).
    """

    name: str
    gdal_path: str

    def __str__(self) -> str:
        return self.name

    @property
    def is_remote(self) -> bool:
        """True for URLs and GDAL virtual paths, False for files on a local disk."""
        return self.gdal_path.startswith("/vsi")

    @property
    def path(self) -> Path:
        """The local file (only for sources that are not remote)."""
        if self.is_remote:
            raise ValueError(f"{self.name} is not a local file")
        return Path(self.gdal_path)

    @property
    def stem(self) -> str:
        """The file name without its suffix, e.g. for naming outputs after the scene."""
        return posixpath.splitext(self.filename)[0]

    @property
    def filename(self) -> str:
        """The last part of the path or URL (query strings left out)."""
        if self.is_remote:
            return posixpath.basename(unquote(urlsplit(self.name).path.rstrip("/"))) or self.name
        return Path(self.gdal_path).name

    def signature(self) -> dict[str, Any]:
        """What identifies this version of the scene, for the resume check.

        A local file: its absolute path, size and modification time. An HTTP URL: the
        URL with the size and ``ETag`` (else ``Last-Modified``) its server reports. Other
        remote paths: the path alone.
        """
        if not self.is_remote:
            stat = self.path.stat()
            return {
                "path": str(self.path.resolve()),
                "size": stat.st_size,
                "mtime": stat.st_mtime_ns,
            }
        return {"url": self.name, **remote_version(self)}


def scene_source(scene: SceneLike) -> SceneSource:
    """Interpret a scene argument: a local path, a URL or a GDAL virtual path.

    ``http(s)://`` URLs are read through ``/vsicurl/``; ``s3://``, ``gs://`` and
    ``az://`` through GDAL's ``/vsis3/``, ``/vsigs/`` and ``/vsiaz/``; ``/vsi...`` paths
    are passed to GDAL as they are. Anything else is a local file, made absolute (Dask
    workers may run in another working directory).

    Raises:
        SceneError: For a URL scheme GDAL cannot read.
    """
    if isinstance(scene, SceneSource):
        return scene
    text = os.fspath(scene)
    if URL.match(text):
        scheme, _, rest = text.partition("://")
        prefix = VSI_PREFIXES.get(scheme.lower())
        if prefix is None:
            known = ", ".join(f"{s}://" for s in VSI_PREFIXES)
            raise SceneError(
                f"scene {text} uses the {scheme}:// scheme, which GDAL cannot read",
                f"pass a local file, a GDAL /vsi... path or a {known} URL.",
            )
        return SceneSource(text, prefix + (text if prefix == VSI_PREFIXES["http"] else rest))
    if text.startswith("/vsi"):
        return SceneSource(text, text)
    return SceneSource(text, str(Path(text).absolute()))


# What functions that take scenes accept: a path, a URL or GDAL path as text, or a source.
SceneLike = str | os.PathLike[str] | SceneSource


def remote_version(source: SceneSource) -> dict[str, Any]:
    """Size and version tag of a remote source (what changes when the file does)."""
    if source.gdal_path.startswith("/vsicurl/"):
        import requests

        try:
            url = source.gdal_path.removeprefix("/vsicurl/")
            reply = requests.head(url, allow_redirects=True, timeout=30)
        except requests.RequestException:
            return {}  # opening it already worked; the journal then trusts the URL alone
        headers = reply.headers
        return {
            "size": headers.get("Content-Length"),
            "version": headers.get("ETag") or headers.get("Last-Modified"),
        }
    return {}  # s3://, gs://, az://, /vsi...: the path alone (GDAL has no cheap version tag)


def use_cog_defaults() -> None:
    """Apply :data:`COG_DEFAULTS` for the rest of the process (unset keys only)."""
    for key, value in COG_DEFAULTS.items():
        os.environ.setdefault(key, value)
