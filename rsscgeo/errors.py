"""Exceptions raised by rsscgeo.

Every exception inherits :class:`RsscgeoError` and, where one fits, the matching
builtin, so callers can catch either. Library code raises these; only the CLI turns
them into one-line messages. Messages say what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class RsscgeoError(Exception):
    """Root of all rsscgeo errors."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type when empty), to quote as a cause."""
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


class ConfigError(RsscgeoError, ValueError):
    """A training or experiment configuration is invalid."""


class DatasetError(RsscgeoError, ValueError):
    """A labelled dataset is missing, empty, corrupt or inconsistent."""


class ModelFileError(RsscgeoError, ValueError):
    """A model file cannot be read, is not a safetensors file, or has a bad card."""


class WeightsError(RsscgeoError, ValueError):
    """Initial weights cannot be loaded into the requested architecture."""


class SceneError(RsscgeoError, ValueError):
    """A raster scene cannot be used (not a raster, no CRS, bad bands, ...)."""


class OutputExistsError(RsscgeoError, FileExistsError):
    """An output already exists and overwriting was not requested."""


class OutputError(RsscgeoError, OSError):
    """An output cannot be written where it was asked for (a file in the way, no permission)."""


class DependencyMissingError(RsscgeoError, ImportError):
    """An optional dependency needed for this operation is not installed."""


class OutputBusyError(RsscgeoError, BlockingIOError):
    """Another run is writing the same output right now."""


class ClusterError(RsscgeoError, ConnectionError):
    """The Dask cluster cannot be reached or its workers cannot run rsscgeo's tasks."""
