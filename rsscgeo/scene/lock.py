"""One run per output at a time: an advisory lock file beside each output.

``flock`` locks die with their process, so a run killed with kill -9 never leaves a
stale lock behind. The lock file is removed while still locked; a run that opened it
just before that notices the file is gone and refuses rather than run alongside.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rsscgeo.errors import OutputBusyError, SceneError


def lock_path(output: Path) -> Path:
    """The hidden lock file beside ``output``."""
    return output.with_name(f".{output.name}.lock")


@contextmanager
def lock_outputs(outputs: list[Path]) -> Iterator[None]:
    """Hold the locks of all ``outputs`` (in a fixed order, so runs cannot deadlock).

    Raises:
        OutputBusyError: If another run holds one of them.
        SceneError: If a lock file cannot be created (e.g. an unwritable folder).
    """
    with ExitStack() as stack:
        for output in sorted({p.absolute() for p in outputs}):
            stack.enter_context(_lock(output))
        yield


@contextmanager
def _lock(output: Path) -> Iterator[None]:
    path = lock_path(output)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SceneError(
            f"cannot write in {output.parent} ({err.strerror}); choose a writable output folder."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except (BlockingIOError, FileNotFoundError):
            same = False
        if not same:
            raise OutputBusyError(
                f"another rsscgeo run is writing {output}; wait for it to finish or choose "
                "another output."
            )
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
