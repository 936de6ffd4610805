"""Reading a YAML settings file with one-line errors that say what the file should be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rsscgeo.errors import ConfigError


def read_yaml(path: Path, what: str, hint: str) -> Any:
    """The parsed content of the YAML file ``path``.

    Args:
        path: The file.
        what: What the file is, for messages ("experiment", "class map").
        hint: How to fix a file that is not YAML ("see configs/experiments/").

    Raises:
        ConfigError: If the file cannot be read or is not YAML.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path} ({err.strerror}); check the path.") from None
    except (UnicodeDecodeError, yaml.YAMLError):
        raise ConfigError(f"{path} is not a YAML {what} file; {hint}.") from None
