"""Exceptions raised by rsscgeo.

Every exception inherits :class:`RsscgeoError` and, where one fits, the matching
builtin, so callers can catch either. Library code raises these; only the CLI turns
them into one-line messages. Messages say what is wrong, where, and how to fix it.

A fix that names an option is worded twice (rasterio's ``FileOverwriteError``
pattern): ``str(err)`` gives it in Python's terms (``overwrite=True``), and
:meth:`RsscgeoError.cli_message` in the command line's (``--overwrite``).
"""

from __future__ import annotations


class RsscgeoError(Exception):
    """Root of all rsscgeo errors.

    Args:
        problem: What is wrong and where (or the whole message).
        fix: How to fix it, for Python callers.
        cli_fix: How to fix it on the command line, where that differs.
    """

    def __init__(self, problem: str, fix: str = "", *, cli_fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        self.cli_fix = fix if cli_fix is None else cli_fix
        super().__init__(_sentence(problem, fix))

    def cli_message(self) -> str:
        """The message with the fix in the command line's terms."""
        return _sentence(self.problem, self.cli_fix)


def _sentence(problem: str, fix: str) -> str:
    return f"{problem.rstrip('.')}; {fix}" if fix else problem


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


class LabelsError(RsscgeoError, ValueError):
    """A file of labels for ``adapt`` cannot be used (not vector data, no labelled rows, ...)."""


class OptionError(RsscgeoError, ValueError):
    """An option has a value no run can use."""


class OutputExistsError(RsscgeoError, FileExistsError):
    """An output already exists and overwriting was not requested."""


class JournalMismatchError(SceneError):
    """A run asked to resume found the journal of another model, scene or options."""


class OutputError(RsscgeoError, OSError):
    """An output cannot be written where it was asked for (a file in the way, no permission)."""


class DependencyMissingError(RsscgeoError, ImportError):
    """An optional dependency needed for this operation is not installed."""


class OutputBusyError(RsscgeoError, BlockingIOError):
    """Another run is writing the same output right now."""


class ClusterError(RsscgeoError, ConnectionError):
    """The Dask cluster cannot be reached or its workers cannot run rsscgeo's tasks."""


class RunInterrupted(RsscgeoError):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) after keeping what it finished.

    Attributes:
        signum: The signal that stopped it; a command exits with ``128 + signum``.
    """

    def __init__(self, problem: str, fix: str, *, cli_fix: str, signum: int) -> None:
        super().__init__(problem, fix, cli_fix=cli_fix)
        self.signum = signum
