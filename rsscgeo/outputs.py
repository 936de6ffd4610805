"""Checks on where commands write, made before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from rsscgeo.errors import OutputError


def check_output_folder(
    folder: Path, option: str, *, create: bool = True, cli_option: str | None = None
) -> None:
    """Fail before any work starts if nothing can be written into ``folder``.

    Args:
        folder: Where the command writes.
        option: How the user named it (``--out``, ``out_dir``), for the message.
        create: Whether the command creates ``folder`` and its missing parents itself.
        cli_option: The command line's name for it, where that differs from ``option``.

    Raises:
        OutputError: If a file is in the way, the folder is missing (``create=False``)
            or the nearest existing folder is not writable.
    """
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    flag = cli_option or option
    where = f"folder {folder}" + ("" if existing == folder else f": {existing}")
    if not existing.is_dir():
        raise OutputError(
            f"{where} is a file, not a folder",
            f"choose another {option}.",
            cli_fix=f"choose another {flag}.",
        )
    if existing != folder and not create:
        raise OutputError(f"folder {folder} does not exist", "create it first.")
    # Asked for the effective user, who does the writing; root passes, as its writes do.
    effective = os.access in os.supports_effective_ids
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        raise OutputError(
            f"{where} is not writable",
            f"choose another {option} or make it writable (chmod u+w).",
            cli_fix=f"choose another {flag} or make it writable (chmod u+w).",
        )
