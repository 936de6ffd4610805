"""A journal of finished chunks, so an interrupted classify run can continue.

Each finished chunk's per-patch arrays are saved as one ``.npz`` file (written to a
temporary name, then renamed, so a kill -9 or power loss never leaves half a file).
A fingerprint of the inputs and options guards against resuming a different job.
On success the journal is removed. Outputs are always rebuilt from all chunk results
in chunk order, so a resumed run writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rsscgeo.errors import SceneError
from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import ChunkResult

FINGERPRINT = "fingerprint.json"


def journal_dir(output: Path) -> Path:
    """The hidden journal folder beside an output."""
    return output.with_name(f".{output.name}.journal")


def fingerprint(paths: list[Path], model: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """What must match for a journal to be reused: files (size, mtime), model, options."""
    files = [
        {"path": str(p.resolve()), "size": p.stat().st_size, "mtime": p.stat().st_mtime_ns}
        for p in [*paths, *([model] if model else [])]
    ]
    return {"files": files, "options": options}


class Journal:
    """Finished chunk results on disk."""

    def __init__(self, folder: Path, print_: dict[str, Any], *, resume: bool) -> None:
        self.folder = folder
        stored = folder / FINGERPRINT
        if resume and stored.exists():
            if json.loads(stored.read_text()) != json.loads(json.dumps(print_)):
                raise SceneError(
                    f"the journal in {folder} belongs to a run with other inputs or options; "
                    "rerun without --resume to start over."
                )
        else:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            _atomic_write(stored, json.dumps(print_).encode())

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
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, probabilities=result.probabilities, valid_fraction=result.valid_fraction)
        os.replace(tmp, path)

    def remove(self) -> None:
        """Delete the journal (after the outputs are in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, chunk: Chunk) -> Path:
        key = hashlib.sha1(
            f"{chunk.row},{chunk.col},{chunk.nrows},{chunk.ncols}".encode()
        ).hexdigest()[:16]
        return self.folder / f"chunk-{chunk.index:06d}-{key}.npz"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
