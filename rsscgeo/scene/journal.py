"""A journal of finished chunks, so an interrupted classify run can continue.

Each finished chunk's per-patch arrays are saved as one ``.npz`` file (written to a
temporary name, then renamed, so a kill -9 or power loss never leaves half a file).
A fingerprint of the inputs, the model's content identity and the options guards
against resuming a different job.
On success the journal is removed. Outputs are always rebuilt from all chunk results
in chunk order, so a resumed run writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsscgeo.errors import JournalMismatchError, SceneError
from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import ChunkResult
from rsscgeo.sources import SceneSource

FINGERPRINT = "fingerprint.json"


def journal_dir(output: Path) -> Path:
    """The hidden journal folder beside an output."""
    return output.with_name(f".{output.name}.journal")


# Characters of a model identity shown in messages.
SHORT_ID = 12


def fingerprint(
    sources: Sequence[SceneSource], model: str, options: dict[str, Any]
) -> dict[str, Any]:
    """What must match for a journal to be reused.

    Args:
        sources: The scenes (see ``SceneSource.signature``: a file's size and mtime, a
            URL's size and ETag).
        model: The model's content identity (``LoadedModel.identity``).
        options: The decisions that change the results (``ScenePlan.reading``).
    """
    return {"model": model, "files": [s.signature() for s in sources], "options": options}


class Journal:
    """Finished chunk results on disk.

    Args:
        folder: Where the journal lives (see ``journal_dir``).
        print_: The run's fingerprint.
        resume: Reuse a journal with the same fingerprint.
        restart: With ``resume``, start over instead of refusing a journal whose
            fingerprint differs.

    Raises:
        JournalMismatchError: If ``resume`` finds a journal of another model, other
            files or other options, and ``restart`` is not set.
    """

    def __init__(
        self, folder: Path, print_: dict[str, Any], *, resume: bool, restart: bool = False
    ) -> None:
        self.folder = folder
        stored = folder / FINGERPRINT
        current = json.loads(json.dumps(print_))
        if resume and stored.exists():
            previous = json.loads(stored.read_text())
            if previous == current:
                return
            if not restart:
                raise _mismatch(folder, previous, current)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _atomic_write(stored, json.dumps(current).encode())

    def load(self, chunk: Chunk) -> ChunkResult | None:
        """The stored result of ``chunk``, if it finished before."""
        path = self._path(chunk)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return ChunkResult(chunk, data["probabilities"], data["valid_fraction"])

    def save(self, result: ChunkResult) -> None:
        """Store one finished chunk."""
        path = self._path(result.chunk)
        tmp = path.with_name(f".{path.stem}.part.npz")  # hidden: never counted as a chunk
        try:
            np.savez(tmp, probabilities=result.probabilities, valid_fraction=result.valid_fraction)
            os.replace(tmp, path)
        except BaseException:  # e.g. a full disk: no half-written chunk stays behind
            tmp.unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """Delete the journal (after the outputs are in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, chunk: Chunk) -> Path:
        key = hashlib.sha1(
            f"{chunk.row},{chunk.col},{chunk.nrows},{chunk.ncols}".encode()
        ).hexdigest()[:16]
        return self.folder / f"chunk-{chunk.index:06d}-{key}.npz"


def _mismatch(folder: Path, previous: dict[str, Any], current: dict[str, Any]) -> SceneError:
    if previous.get("model") != current["model"]:
        was = str(previous.get("model") or "unknown")[:SHORT_ID]
        problem = (
            f"the journal in {folder} was written with model {was}, this run uses model "
            f"{current['model'][:SHORT_ID]}"
        )
    else:
        what = "scene files" if previous.get("files") != current["files"] else "options"
        problem = f"the journal in {folder} belongs to a run with other {what}"
    return JournalMismatchError(
        problem,
        "set overwrite=True to start over, or resume with the same model, scene and options.",
        cli_fix="pass --overwrite to start over, or resume with the same model, scene and options.",
    )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
