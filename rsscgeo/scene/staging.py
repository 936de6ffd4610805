"""The files of one run, written under hidden temporary names and published together.

Writers write every file of a run (layers, rasters, styles, sidecars, tables) to the
temporary name :meth:`Staging.stage` gives them. Only when all are complete does the
run publish them, one rename each, so a failure or a stop before that point leaves
nothing at any output path, and the last safe point to stop lies just before
:meth:`Staging.publish`.
"""

from __future__ import annotations

import os
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` that is moved into place on success."""
    return path.with_name(f".{path.name}.part{path.suffix}")


class Staging:
    """Temporary files waiting to be moved into place, in the order they were staged."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # output path -> its temporary path

    def stage(self, path: Path) -> Path:
        """The temporary path to write ``path``'s content to (a stale one is removed)."""
        tmp = temporary_path(path)
        tmp.unlink(missing_ok=True)
        self._staged[path] = tmp
        return tmp

    def publish(self) -> list[Path]:
        """Move every staged file into place; returns the output paths."""
        for path, tmp in self._staged.items():
            os.replace(tmp, path)
        published = list(self._staged)
        self._staged.clear()
        return published

    def discard(self) -> None:
        """Remove every staged file that was not published."""
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()
